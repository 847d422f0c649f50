// retort/audit/case_file.cpp — the case file (see case_file.h): verdict rules, JSON, and the HTML page.
#include "retort/audit/case_file.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "retort/util/error.h"
#include "retort/util/html_report.h"
#include "retort/util/stats.h"

namespace retort {

namespace {

using OJson = nlohmann::ordered_json;

// A control below this p-value means the test is not calibrated on this data (issue 14's bar).
constexpr double kControlFloor = 1e-3;

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}


std::string with_commas(int64_t n) {
  std::string s = std::to_string(n), o;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0 && s[i - 1] != '-') o += ',';
    o += s[i];
  }
  return o;
}

std::string str(const OJson& j, const char* k) { return j.contains(k) && j[k].is_string() ? j[k].get<std::string>() : ""; }

// A model as `audit provenance --out` describes it ({"spec", "path"|"url", "model", ...}): its name.
std::string provenance_model_name(const OJson& m) {
  if (!m.is_object()) return "?";
  if (m.contains("url")) return str(m, "model") + " at " + str(m, "url");
  const std::string s = str(m, "spec");
  return s.empty() ? str(m, "path") : s;
}

// The name a result gives its suspect: the model path / URL + model.
std::string model_name(const OJson& r) {
  if (!r.contains("suspect") || !r["suspect"].is_object()) return "?";
  const OJson& s = r["suspect"];
  if (s.contains("url")) return str(s, "model") + " at " + str(s, "url");
  const std::string m = str(s, "model");
  return m.empty() ? str(s, "path") : m;
}

// A candidate of a provenance result: the name the user gave it, else its model's.
std::string candidate_name(const OJson& cand) {
  const std::string n = str(cand, "name");
  return n.empty() ? provenance_model_name(cand.value("candidate", OJson::object())) : n;
}

void check_radioactivity(const OJson& r, const std::string& what) {
  check(r.is_object() && str(r, "audit") == "radioactivity", what,
        ": not a result of `retort audit radioactivity --out` (no \"audit\": \"radioactivity\")");
  for (const char* k : {"mode", "counts", "test", "enough_evidence", "key_commitment", "params", "suspect"})
    check(r.contains(k), what, ": a radioactivity result without \"", k, "\" (was it written by this version?)");
}

bool has_p(const OJson& r) { return r.value("enough_evidence", false) && r["test"]["log10_p"].is_number(); }
double log10_p(const OJson& r) { return has_p(r) ? r["test"]["log10_p"].get<double>() : 0.0; }

// One line of the radioactivity table, as JSON.
OJson test_row(const OJson& r, const std::string& role) {
  OJson row;
  row["role"] = role;
  row["model"] = model_name(r);
  row["mode"] = r["mode"];
  row["key"] = "master key";
  row["scheme"] = r["params"].value("scheme", "");
  row["scored"] = r["counts"].value("scored", 0);
  row["rate"] = r.value("score_rate", 0.0);
  row["null_rate"] = r.value("null_rate", 0.0);
  row["enough_evidence"] = r["enough_evidence"];
  row["log10_p"] = has_p(r) ? OJson(log10_p(r)) : OJson(nullptr);
  row["p"] = has_p(r) ? OJson(format_p(log10_p(r))) : OJson("no p-value (not enough evidence)");
  row["verdict"] = r.value("verdict", "");
  return row;
}

// The per-account lines of a result (`--accounts`): each account's key tested, p Holm-corrected.
std::vector<OJson> account_rows(const OJson& r, const std::string& role) {
  std::vector<OJson> rows;
  if (!r.contains("accounts") || !r["accounts"].is_array()) return rows;
  for (const auto& a : r["accounts"]) {
    OJson row = test_row(r, role);
    row["key"] = "account " + str(a, "account");
    row["account"] = str(a, "account");
    const int64_t t = a.value("tokens_scored", int64_t(0));
    row["scored"] = t;
    row["rate"] = t > 0 && a["score"].is_number() ? a["score"].get<double>() / double(t) : 0.0;
    const bool p = a.contains("log10_p_holm") && a["log10_p_holm"].is_number();
    row["enough_evidence"] = p;
    row["log10_p"] = p ? a["log10_p_holm"] : OJson(nullptr);
    row["p"] = p ? OJson(format_p(a["log10_p_holm"].get<double>()) + " (Holm)") : OJson("no p-value (not enough evidence)");
    row.erase("verdict");
    rows.push_back(std::move(row));
  }
  return rows;
}

bool row_has_p(const OJson& row) { return row["log10_p"].is_number(); }
double row_log10_p(const OJson& row) { return row_has_p(row) ? row["log10_p"].get<double>() : 0.0; }

}  // namespace

OJson build_case(const CaseInputs& in) {
  check(!in.suspect.empty() || !in.provenance.empty(),
        "audit report: nothing to report; give --suspect-result FILE (radioactivity on the suspect) and/or "
        "--provenance FILE");
  size_t src = 0;
  auto source = [&](size_t i) { return i < in.sources.size() ? in.sources[i] : cat("input ", i + 1); };
  for (const auto& r : in.suspect) check_radioactivity(r, source(src++));
  for (const auto& r : in.controls) check_radioactivity(r, source(src++));
  for (const auto& p : in.provenance)
    check(p.is_object() && str(p, "audit") == "provenance", source(src++),
          ": not a result of `retort audit provenance --out` (no \"audit\": \"provenance\")");

  OJson c;
  std::string suspect = in.suspect_name;
  if (suspect.empty() && !in.suspect.empty()) suspect = model_name(in.suspect[0]);
  if (suspect.empty() && !in.provenance.empty() && in.provenance[0].contains("suspect"))
    suspect = provenance_model_name(in.provenance[0]["suspect"]);
  c["title"] = in.title.empty() ? "Case file: " + suspect : in.title;
  c["created"] = in.created;
  c["suspect"] = suspect;

  // ---- radioactivity: the suspect's tests and the controls' ----
  OJson suspect_rows = OJson::array(), control_rows = OJson::array();
  for (const auto& r : in.suspect) {
    suspect_rows.push_back(test_row(r, "suspect"));
    for (auto& a : account_rows(r, "suspect")) suspect_rows.push_back(std::move(a));
  }
  for (const auto& r : in.controls) {
    control_rows.push_back(test_row(r, "control"));
    for (auto& a : account_rows(r, "control")) control_rows.push_back(std::move(a));
  }
  // Null calibration: every control with a p-value should stay above the floor.
  int64_t controls_tested = 0, controls_below = 0;
  double min_control = 0;
  for (const auto& r : control_rows) {
    if (!row_has_p(r)) continue;
    ++controls_tested;
    controls_below += row_log10_p(r) < std::log10(kControlFloor);
    min_control = controls_tested == 1 ? row_log10_p(r) : std::min(min_control, row_log10_p(r));
  }
  std::set<std::string> commitments;
  for (const auto* v : {&in.suspect, &in.controls})
    for (const auto& r : *v) {
      commitments.insert(str(r, "key_commitment"));
      for (const auto& a : r.value("accounts", OJson::array())) commitments.insert(str(a, "key_commitment"));
    }
  c["key_commitments"] = OJson(std::vector<std::string>(commitments.begin(), commitments.end()));

  // ---- the finding ----
  const OJson* best = nullptr;  // the suspect's strongest test (a row of the table) with a p-value
  for (const auto& r : suspect_rows)
    if (row_has_p(r) && (!best || row_log10_p(r) < row_log10_p(*best))) best = &r;
  double target = 1e-5;
  for (const auto& r : in.suspect) target = std::min(target, r.value("target_p", 1e-5));
  // The verdict picks the strongest of the suspect's test families (each result's master-key test, and its
  // Holm-corrected account tests as one more): Bonferroni over the families covers that choice.
  int families = 0;
  for (const auto& r : in.suspect) families += 1 + (r.contains("accounts") && !r["accounts"].empty());
  const double log10_families = std::log10(std::max(1, families));
  const double best_log10_p = best ? std::min(0.0, row_log10_p(*best) + log10_families) : 0.0;
  const bool radioactive = best && best_log10_p <= std::log10(target);
  const bool calibrated = controls_below == 0;
  std::vector<std::string> derived_from;
  OJson prov = OJson::array();
  for (const auto& p : in.provenance) {
    prov.push_back(p);
    if (p.contains("candidates") && p["candidates"].is_array())
      for (const auto& cand : p["candidates"])
        if (cand.is_object() && cand.value("derived", false)) derived_from.push_back(candidate_name(cand));
  }

  std::string finding, paragraph;
  std::vector<std::string> caveats;
  if (radioactive && calibrated) {
    finding = "evidence";
    const OJson& b = *best;
    const bool kgw = str(b, "scheme") == "kgw";
    const std::string account = str(b, "account");
    paragraph = cat(suspect, " shows the statistical trace of our watermark key",
                    account.empty() ? std::string() : cat(" given to account \"", account, "\""), ". In the ",
                    str(b, "mode"),
                    "-model test ",
                    str(b, "mode") == "open" ? "(the suspect read our watermarked texts and its own predictions were scored)"
                                             : "(the suspect answered our prompts and its own text was scored)",
                    ", ", kgw ? cat(fmt("%.2f", 100 * b.value("rate", 0.0)), "% of ") : "",
                    with_commas(b.value("scored", int64_t(0))), " distinct scored units ",
                    kgw ? cat("were green, against ", fmt("%.0f", 100 * b.value("null_rate", 0.0)), "% expected by chance")
                        : cat("scored a mean of ", fmt("%.4f", b.value("rate", 0.0)), " against 1 by chance"),
                    "; a model that never learned from our watermarked text would do this with probability p = ",
                    format_p(best_log10_p),
                    account.empty() ? "" : " (Holm-corrected over the accounts tested)",
                    families > 1 ? cat(", the strongest of ", families, " tests, Bonferroni-corrected for that choice") : "",
                    ".");
    if (!account.empty())
      paragraph += cat(" The text it learned from was served to account \"", account, "\".");
    if (controls_tested > 0) {
      // Control results may come from one model tested twice (open, closed), and each scores every key.
      std::set<std::string> control_models;
      for (const auto& r : in.controls) control_models.insert(r.contains("suspect") ? r["suspect"].dump() : "");
      const size_t m = control_models.size();
      paragraph += cat(" The same tests on ", m, " control model", m > 1 ? "s" : "", " that never saw our watermark (",
                       controls_tested, " p-values: each test, each key) found nothing (smallest p = ",
                       format_p(min_control), ").");
    }
    if (!derived_from.empty())
      paragraph += cat(" The provenance test also finds the suspect derived from ", derived_from[0], ".");
    paragraph += " Together this is evidence that the suspect was trained on text generated by our model under this key.";
  } else if (radioactive && !calibrated) {
    finding = "inconclusive";
    paragraph = cat("The suspect's test gives p = ", format_p(best_log10_p), ", but ", controls_below, " of ",
                    controls_tested, " control models also fall below p = 1e-3 (smallest p = ", format_p(min_control),
                    "). The test is not calibrated on this data, so neither result can be relied on; look for what the "
                    "controls share with our texts (copied prompts, repeated boilerplate) before drawing conclusions.");
  } else if (!best && !in.suspect.empty()) {
    finding = "not_enough_evidence";
    paragraph = cat("None of the tests on ", suspect, " had enough scored text to compute a p-value.");
    for (const auto& r : in.suspect)
      if (r.contains("pairs_needed_for_target") && r["pairs_needed_for_target"].is_number())
        paragraph += cat(" At the rate seen in the ", str(r, "mode"), "-model test, about ",
                         with_commas(r["pairs_needed_for_target"].get<int64_t>()), " scored units would be needed.");
  } else if (!derived_from.empty()) {
    finding = "provenance_only";
    paragraph = cat("The provenance test finds ", suspect, " derived from ", derived_from[0],
                    (best ? cat("; our watermark key shows no trace at p < ", format_p(std::log10(target)), " (p = ",
                                format_p(best_log10_p), ")")
                          : std::string()),
                    ". Provenance shows similarity of outputs, not that our outputs were used for training.");
  } else {
    finding = "no_evidence";
    paragraph = cat("No test found evidence that ", suspect, " learned from our outputs",
                    best ? cat(" (strongest test p = ", format_p(best_log10_p), ")") : std::string(), ".");
    caveats.push_back("No evidence is not evidence of absence: the effect can be small (in Sander et al. 2024, 25.88% "
                      "green vs 25% at 5% watermarked training data), so about 1e5 scored units may be needed.");
  }
  caveats.push_back("The p-values assume that the watermark key was secret: only its SHA-256 commitment appears here, "
                    "and the key holder can show that the key matches it.");
  caveats.push_back("Paraphrasing our outputs before training, or watermark-removal at inference, weakens the "
                    "watermark's trace (Pan et al., ACL 2025); a weak result does not rule out distillation.");
  if (controls_tested == 0 && !in.suspect.empty())
    caveats.push_back("No control models were tested: the null calibration rests on the exactness of the test alone.");
  c["verdict"] = {{"finding", finding},
                  {"paragraph", paragraph},
                  {"caveats", caveats},
                  {"strongest_log10_p", best ? OJson(best_log10_p) : OJson(nullptr)},
                  {"test_families", families},
                  {"target_p", target}};
  c["radioactivity"] = {{"suspect", suspect_rows},
                        {"controls", control_rows},
                        {"calibration", {{"controls_with_p", controls_tested},
                                         {"controls_below_1e-3", controls_below},
                                         {"smallest_control_log10_p", controls_tested ? OJson(min_control) : OJson(nullptr)}}},
                        {"results", OJson::array()}};
  for (const auto* v : {&in.suspect, &in.controls})
    for (const auto& r : *v) c["radioactivity"]["results"].push_back(r);
  c["provenance"] = prov;
  c["sources"] = in.sources;
  return c;
}

namespace {

// −log10 p per test as horizontal bars, with the verdict's threshold and the control floor as lines.
std::string svg_p_bars(const OJson& rows, double target_p) {
  const int n = int(rows.size());
  const int bar = 22, gap = 8, ml = 300, mr = 70, mt = 34, mb = 34, width = 900;
  const int height = mt + mb + std::max(1, n) * (bar + gap);
  double xmax = -std::log10(target_p) + 1;
  for (const auto& r : rows)
    if (r["log10_p"].is_number()) xmax = std::max(xmax, -r["log10_p"].get<double>());
  xmax = std::min(std::ceil(xmax * 1.1), 400.0);
  const double pw = width - ml - mr;
  auto X = [&](double v) { return ml + pw * std::clamp(v, 0.0, xmax) / xmax; };
  std::string o = cat("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"", width, "\" height=\"", height,
                      "\" viewBox=\"0 0 ", width, " ", height, "\" font-family=\"sans-serif\" font-size=\"12\" role=\"img\">\n");
  o += "<title>strength of evidence per test: -log10 p</title>\n";
  o += cat("<text x=\"", ml, "\" y=\"18\" font-weight=\"bold\">−log10 p (longer = stronger evidence)</text>\n");
  for (int i = 0; i < n; ++i) {
    const OJson& r = rows[size_t(i)];
    const int y = mt + i * (bar + gap);
    const bool control = str(r, "role") == "control";
    const std::string account = str(r, "account");
    const std::string label = cat(control ? "control: " : "suspect: ", str(r, "model"), " (", str(r, "mode"),
                                  account.empty() ? std::string() : ", account " + account, ")");
    o += cat("<text x=\"", ml - 8, "\" y=\"", y + bar / 2 + 4, "\" text-anchor=\"end\">",
             html_escape(label.size() > 46 ? label.substr(0, 45) + "…" : label), "</text>\n");
    if (r["log10_p"].is_number()) {
      const double v = -r["log10_p"].get<double>();
      o += cat("<rect class=\"bar\" x=\"", ml, "\" y=\"", y, "\" width=\"", fmt("%.1f", X(v) - ml), "\" height=\"", bar,
               "\" fill=\"", control ? "#999999" : "#0072B2", "\"/>\n");
      o += cat("<text x=\"", fmt("%.1f", X(v) + 4), "\" y=\"", y + bar / 2 + 4, "\">p = ", html_escape(str(r, "p")),
               "</text>\n");
    } else {
      o += cat("<text x=\"", ml + 4, "\" y=\"", y + bar / 2 + 4, "\" fill=\"#777\">not enough evidence</text>\n");
    }
  }
  auto vline = [&](double v, const char* colour, const std::string& label) {
    const std::string x = fmt("%.1f", X(v));
    o += cat("<line x1=\"", x, "\" x2=\"", x, "\" y1=\"", mt - 6, "\" y2=\"", height - mb + 4, "\" stroke=\"", colour,
             "\" stroke-dasharray=\"4 3\"/>\n");
    o += cat("<text x=\"", x, "\" y=\"", height - 10, "\" text-anchor=\"middle\" fill=\"", colour, "\">",
             html_escape(label), "</text>\n");
  };
  vline(-std::log10(kControlFloor), "#D55E00", "p = 1e-3");
  vline(-std::log10(target_p), "#009E73", "p = " + format_p(std::log10(target_p)));
  o += "</svg>\n";
  return o;
}

// Control p-values against the uniform distribution they should follow (a QQ plot on −log10 scales).
std::string svg_calibration(const OJson& controls) {
  std::vector<double> lp;
  for (const auto& r : controls)
    if (r["log10_p"].is_number()) lp.push_back(-r["log10_p"].get<double>());
  std::sort(lp.begin(), lp.end(), std::greater<>());
  Chart ch;
  ch.title = "Null calibration: control p-values vs uniform";
  ch.x_label = "expected −log10 p (uniform)";
  ch.y_label = "observed −log10 p";
  ChartSeries obs{"controls", {}}, diag{"uniform (y = x)", {}};
  const size_t n = lp.size();
  for (size_t i = 0; i < n; ++i) obs.points.push_back({-std::log10((double(i) + 0.5) / double(n)), lp[i]});
  const double top = n ? std::max(-std::log10(0.5 / double(n)), lp[0]) : 1;
  diag.points = {{0, 0}, {top, top}};
  ch.series = {obs, diag};
  return svg_line_chart(ch, 520, 300);
}

std::string samples_html(const OJson& result) {
  if (!result.contains("samples") || !result["samples"].is_array() || result["samples"].empty()) return "";
  const bool open = str(result, "mode") == "open";
  std::string o = cat("<p class=\"note\">", html_escape(model_name(result)), ", ", str(result, "mode"),
                      "-model test. <span class=\"tg\">green</span>: scored, in our key's green list; "
                      "<span class=\"tr\">red</span>: scored, not green; <span class=\"tn\">grey</span>: not scored "
                      "(no window, in a prompt, earlier in the text, or already scored).",
                      open ? " Each scored token is the text's; hover to see the suspect's prediction, which is what "
                             "was scored."
                           : " The text is the suspect's own answer.",
                      "</p>\n");
  int shown = 0;
  for (const auto& s : result["samples"]) {
    if (++shown > 3) break;
    o += "<div class=\"tokens\">";
    for (const auto& t : s.value("tokens", OJson::array())) {
      const std::string mark = str(t, "mark");
      const char* cls = mark == "green" ? "tg" : mark == "red" ? "tr" : "tn";
      o += cat("<span class=\"", cls, "\"");
      if (t.contains("predicted")) o += cat(" title=\"predicted: ", html_escape(str(t, "predicted")), "\"");
      o += ">" + html_escape(str(t, "text")) + "</span>";
    }
    o += "</div>\n";
  }
  return o;
}

Table radioactivity_table(const OJson& rows) {
  Table t;
  t.id = "radioactivity";
  t.columns = {{"role"}, {"model"}, {"test"}, {"key"}, {"scheme"}, {"scored units"}, {"green share / mean score"}, {"by chance"}, {"p"}};
  for (const auto& r : rows) {
    t.rows.push_back({{str(r, "role")},
                      {str(r, "model")},
                      {str(r, "mode") + " model"},
                      {str(r, "key")},
                      {str(r, "scheme")},
                      {with_commas(r.value("scored", int64_t(0)))},
                      {fmt("%.4f", r.value("rate", 0.0))},
                      {fmt("%.4f", r.value("null_rate", 0.0))},
                      {str(r, "p")}});
  }
  return t;
}

std::string provenance_html(const OJson& p) {
  const OJson cands = p.value("candidates", OJson::array());
  if (cands.empty()) return "<p>(no candidates in this result)</p>";
  auto num = [](const OJson& j, const char* k) { return j.contains(k) && j[k].is_number() ? j[k].get<double>() : NAN; };
  auto p_cell = [&](const OJson& j, const char* k) {
    const double v = num(j, k);
    return std::isfinite(v) ? fmt("%.3g", v) : std::string("-");
  };
  std::string o;
  if (p.contains("suspect")) o += "<p>Suspect: <strong>" + html_escape(provenance_model_name(p["suspect"])) + "</strong>";
  if (p.contains("queries") && p["queries"].is_object())
    o += cat(", asked ", p["queries"].value("suspect", int64_t(0)), " prompts (budget ",
             p["queries"].value("budget", int64_t(0)), ")");
  o += ". For each prompt, the suspect's greedy answer is compared with each model's (word-prefix similarity); a "
       "candidate parent must be closer to the suspect than every unrelated control, prompt by prompt.</p>\n";
  Table t;
  t.id = "provenance";
  t.columns = {{"candidate parent / vs control"}, {"similarity to suspect"}, {"candidate closer"},
               {"control closer"}, {"p"}, {"p (Holm)"}, {"decision"}};
  for (const auto& c : cands) {
    t.rows.push_back({{candidate_name(c)},
                      {std::isfinite(num(c, "mean_similarity")) ? fmt("%.3f", num(c, "mean_similarity")) : "-"},
                      {""},
                      {""},
                      {p_cell(c, "p_value")},
                      {p_cell(c, "p_holm")},
                      {str(c, "decision").empty() ? (c.value("derived", false) ? "derived" : "not shown")
                                                  : str(c, "decision")}});
    for (const auto& k : c.value("controls", OJson::array()))
      t.rows.push_back({{"  vs " + str(k, "spec")},
                        {std::isfinite(num(k, "mean_similarity")) ? fmt("%.3f", num(k, "mean_similarity")) : "-"},
                        {with_commas(k.value("candidate_closer", int64_t(0)))},
                        {with_commas(k.value("control_closer", int64_t(0)))},
                        {p_cell(k, "p_value")},
                        {""},
                        {""}});
  }
  o += html_table(t);
  if (p.contains("verdict") && p["verdict"].is_string()) o += "<p>" + html_escape(p["verdict"].get<std::string>()) + "</p>\n";
  return o;
}

}  // namespace

std::string case_html(const OJson& c) {
  std::vector<ReportSection> page;
  const OJson& v = c["verdict"];
  {
    std::string h = cat("<p class=\"note\">Suspect: <strong>", html_escape(str(c, "suspect")), "</strong>. Written ",
                        html_escape(str(c, "created")), ".</p>\n");
    h += "<div class=\"verdict\" id=\"verdict\"><strong>Verdict (" + html_escape(str(v, "finding")) + ").</strong> " +
         html_escape(str(v, "paragraph")) + "</div>\n<ul>\n";
    for (const auto& cv : v["caveats"]) h += "<li>" + html_escape(cv.get<std::string>()) + "</li>\n";
    h += "</ul>\n";
    page.push_back({"", h, false});
  }
  const OJson& ra = c["radioactivity"];
  OJson rows = OJson::array();
  for (const auto& r : ra["suspect"]) rows.push_back(r);
  for (const auto& r : ra["controls"]) rows.push_back(r);
  if (!rows.empty()) {
    double target = 1e-5;
    for (const auto& r : ra["results"]) target = r.value("target_p", target);
    std::string h = "<p>Our watermark key scores each distinct (context window, token) unit once; the p-value is the "
                    "exact chance that a model which never learned from our watermarked text scores at least this "
                    "high.</p>\n";
    h += "<div class=\"chart\">" + svg_p_bars(rows, target) + "</div>\n";
    h += html_table(radioactivity_table(rows));
    page.push_back({"Radioactivity: our watermark in the suspect", h, false});
  }
  if (!ra["controls"].empty()) {
    const OJson& cal = ra["calibration"];
    std::string h = cat("<p>", cal.value("controls_with_p", 0), " control test(s) with a p-value; ",
                        cal.value("controls_below_1e-3", 0),
                        " below p = 1e-3. Under the null their p-values are uniform: the points should lie near the line.</p>\n");
    h += "<div class=\"chart\">" + svg_calibration(ra["controls"]) + "</div>\n";
    page.push_back({"Null calibration on control models", h, false});
  }
  for (const auto& p : c["provenance"]) page.push_back({"Provenance: whose outputs does the suspect resemble?", provenance_html(p), false});
  {
    // The suspect's tests come first in "results" (then the controls').
    std::string h;
    for (size_t i = 0; i < ra["suspect"].size() && i < ra["results"].size(); ++i) h += samples_html(ra["results"][i]);
    if (!h.empty()) page.push_back({"Samples: which tokens were scored", h, false});
  }
  {
    std::string h = "<p>Watermark key commitments (SHA-256 of the key; the keys themselves are not in this file):</p><ul>";
    for (const auto& k : c["key_commitments"]) h += "<li><code>" + html_escape(k.get<std::string>()) + "</code></li>";
    h += "</ul>\n";
    for (const auto& r : ra["results"]) {
      OJson settings;
      for (const char* k : {"suspect", "params", "inputs", "counts", "key_holder_model", "key_holder_tokenizer_hash"})
        if (r.contains(k)) settings[k] = r[k];
      h += "<pre>" + html_escape(settings.dump(2, ' ', false, OJson::error_handler_t::replace)) + "</pre>\n";
    }
    h += "<p>Inputs read:</p><ul>";
    for (const auto& s : c["sources"]) h += "<li><code>" + html_escape(s.get<std::string>()) + "</code></li>";
    h += "</ul>\n";
    page.push_back({"What was tested, and how", h, true});
  }
  return html_page(str(c, "title"), page);
}

}  // namespace retort
