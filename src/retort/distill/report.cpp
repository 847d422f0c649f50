// retort/distill/report.cpp — the distill main job's HTML page.
#include "retort/distill/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>

#include "retort/util/file.h"

namespace retort {

// ---- The main job's page ----------------------------------------------------------------------

namespace {

using nlohmann::json;

std::string fmt(const char* f, double v) {
  if (!std::isfinite(v)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string pct(double v) { return fmt("%.1f%%", 100 * v); }

double num(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_number() ? j[key].get<double>() : NAN;
}

std::string str(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : "";
}

// (step, value) of one field of a run's metrics.jsonl: a training line's field, or (eval) the
// field of an evaluation line's "eval" object. A missing or damaged file gives no points.
std::vector<std::pair<double, double>> run_points(const std::string& path, const char* key, bool eval) {
  std::vector<std::pair<double, double>> pts;
  std::string text;
  try {
    text = read_file(path);
  } catch (const std::exception&) {
    return pts;
  }
  size_t p = 0;
  while (p < text.size()) {
    size_t e = text.find('\n', p);
    if (e == std::string::npos) e = text.size();
    json j = json::parse(text.substr(p, e - p), nullptr, false);
    p = e + 1;
    if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number()) continue;
    if (eval != j.contains("eval")) continue;
    const json& src = eval ? j["eval"] : j;
    const double v = num(src, key);
    if (std::isfinite(v)) pts.emplace_back(j["step"].get<double>(), v);
  }
  return pts;
}

}  // namespace

std::string distill_report_html(const json& s) {
  std::vector<ReportSection> page;
  const json table = s.value("table", json::array());
  const json tasks = s.value("tasks", json());
  const json heldout = s.contains("data") && s["data"].is_object() ? s["data"].value("heldout", json()) : json();

  // Intro: who taught whom, on what.
  {
    const json& t = s.value("teacher", json::object());
    const json& st = s.value("student", json::object());
    std::string p = "<p>Teacher <strong>" + html_escape(str(t, "spec")) + "</strong> (" +
                    fmt("%.1fM", num(t, "params") / 1e6) + " parameters) → student of " +
                    fmt("%.1fM", num(st, "params") / 1e6) + " parameters (" + fmt("%.1f", num(st, "ratio")) +
                    "× fewer), trained once per loss at equal steps and tokens.</p>\n";
    page.push_back({"", p, false});
  }

  // The comparison table.
  const bool with_tasks = tasks.is_object() && tasks.contains("overall");
  Table cmp;
  cmp.id = "comparison";
  cmp.columns = {{"model", Better::none},          {"params", Better::none},
                 {"held-out NLL", Better::lower},   {"ppl", Better::lower},
                 {"top-1 agreement", Better::higher}, {"KL(teacher‖student)", Better::lower}};
  if (with_tasks) cmp.columns.push_back({"task accuracy", Better::higher});
  // Own greedy answers to the held-out prompts (answer_quality.h): absent for the student before training.
  bool with_answers = false;
  for (const auto& r : table) with_answers = with_answers || r.contains("answers");
  if (with_answers) {
    cmp.columns.push_back({"repeated 4-grams", Better::lower});
    cmp.columns.push_back({"teacher NLL of answers", Better::lower});
  }
  for (const auto& r : table) {
    const double ppl = num(r, "ppl");
    std::vector<TableCell> row = {{str(r, "model"), NAN},
                                  {fmt("%.1fM", num(r, "params") / 1e6), NAN},
                                  {fmt("%.3f", num(r, "nll")), num(r, "nll")},
                                  {fmt(ppl < 1000 ? "%.2f" : "%.0f", ppl), ppl},
                                  {fmt("%.3f", num(r, "top1_agree")), num(r, "top1_agree")},
                                  {fmt("%.3f", num(r, "kl")), num(r, "kl")}};
    if (with_tasks) {
      const double acc = num(r, "task_accuracy");
      row.push_back({std::isfinite(acc) ? pct(acc) : "", acc});
    }
    if (with_answers) {
      const json a = r.value("answers", json::object());
      const double rep = num(a, "repeated_4gram"), nll = num(a, "teacher_nll");
      row.push_back({std::isfinite(rep) ? fmt("%.3f", rep) : "", rep});
      row.push_back({std::isfinite(nll) ? fmt("%.3f", nll) : "", nll});
    }
    cmp.rows.push_back(row);
    cmp.competes.push_back(str(r, "model") != "teacher");
  }
  {
    std::string note = "<p class=\"note\">Held-out: the teacher's answers to " +
                       fmt("%.0f", num(heldout, "samples")) +
                       " prompts no student trained on. NLL, perplexity and KL: lower is better; agreement" +
                       std::string(with_tasks ? " and task accuracy" : "") +
                       ": higher. <strong>Bold</strong>: the best student in each column (the teacher is the "
                       "reference: agreement 1 and KL 0 by definition)." +
                       std::string(with_answers
                                       ? " Repeated 4-grams: the share of each model's own greedy answers (to "
                                         "every held-out prompt) that repeats a 4-gram said earlier in the same "
                                         "answer; teacher NLL of answers: how plausible the teacher finds them "
                                         "(its own answers set the scale)."
                                       : "") +
                       "</p>\n";
    page.push_back({"Comparison", html_table(cmp) + note, false});
  }

  // Task accuracy, teacher against the KD student.
  if (with_tasks) {
    const json& o = tasks["overall"];
    std::string body;
    const std::string who = tasks.value("student_name", std::string("the student"));
    if (o["kept"].is_number())
      body += "<p class=\"headline\">" + html_escape(who) + " keeps <strong>" + pct(o["kept"].get<double>()) +
              "</strong> of the teacher's task accuracy: " + pct(num(o, "student")) + " against " +
              pct(num(o, "teacher")) + " on " + fmt("%.0f", num(o, "n")) + " tasks.</p>\n";
    else
      body += "<p class=\"headline\">The teacher answered none of the " + fmt("%.0f", num(o, "n")) +
              " tasks right, so there is no share to keep.</p>\n";
    Table tt;
    tt.id = "tasks";
    tt.columns = {{"category", Better::none}, {"n", Better::none}, {"teacher", Better::none},
                  {who, Better::none},        {"kept", Better::none}};
    auto add = [&](const json& r) {
      tt.rows.push_back({{str(r, "category"), NAN},
                         {fmt("%.0f", num(r, "n")), num(r, "n")},
                         {pct(num(r, "teacher")), num(r, "teacher")},
                         {pct(num(r, "student")), num(r, "student")},
                         {r["kept"].is_number() ? pct(r["kept"].get<double>()) : "-", num(r, "kept")}});
    };
    for (const auto& r : tasks.value("categories", json::array())) add(r);
    add(o);
    body += html_table(tt);
    body += "<p class=\"note\">" + html_escape(str(tasks, "file")) +
            ": greedy replies to each prompt as a chat turn, scored by exact rules (README, Distill: tasks). "
            "Kept = student accuracy / teacher accuracy.</p>\n";
    page.push_back({"Task accuracy", body, false});
  }

  // Curves over steps, one line per run.
  {
    std::vector<std::string> losses;
    if (s.contains("options") && s["options"].contains("losses") && s["options"]["losses"].is_array())
      for (const auto& l : s["options"]["losses"])
        if (l.is_string()) losses.push_back(l.get<std::string>());
    const json runs = s.value("runs", json::object());
    if (losses.empty())
      for (auto it = runs.begin(); it != runs.end(); ++it) losses.push_back(it.key());
    json before;
    double teacher_nll = NAN;
    for (const auto& r : table) {
      if (str(r, "model") == "student before") before = r;
      if (str(r, "model") == "teacher") teacher_nll = num(r, "nll");
    }
    Chart loss{"training loss (each run's own: cross-entropy for SFT-only, KL for KD)", "step", "loss", {}, false};
    Chart tagree{"top-1 agreement with the teacher on the training batches", "step", "fraction", {}, false};
    Chart hnll{"held-out NLL of the student (step 0: the untrained student)", "step", "nats/token", {}, false};
    Chart hagree{"held-out top-1 agreement with the teacher", "step", "fraction", {}, false};
    double last_step = 0;
    for (const auto& l : losses) {
      if (!runs.contains(l)) continue;
      const json& run = runs[l];
      const std::string name = str(run, "title").empty() ? l : str(run, "title");
      const std::string m = str(run, "dir") + "/metrics.jsonl";
      loss.series.push_back({name, run_points(m, "loss", false)});
      tagree.series.push_back({name, run_points(m, "agree", false)});
      for (auto [key, chart] : {std::pair<const char*, Chart*>{"nll", &hnll}, {"top1_agree", &hagree}}) {
        auto pts = run_points(m, key, true);
        if (std::isfinite(num(before, key)) && (pts.empty() || pts.front().first > 0))
          pts.insert(pts.begin(), {0.0, num(before, key)});
        for (const auto& pt : pts) last_step = std::max(last_step, pt.first);
        chart->series.push_back({name, pts});
      }
    }
    if (std::isfinite(teacher_nll) && last_step > 0)
      hnll.series.push_back({"teacher (reference)", {{0.0, teacher_nll}, {last_step, teacher_nll}}});
    std::string body;
    for (const Chart* c : {&loss, &hnll, &hagree, &tagree})
      body += "<div class=\"chart\">\n" + svg_line_chart(*c) + "</div>\n";
    body += "<p class=\"note\">From each run's metrics.jsonl. Held-out points come from the evaluations during "
            "training (train.eval_every; 0 = only at the end) and the untrained student at step 0.</p>\n";
    page.push_back({"Curves", body, false});
  }

  // Held-out prompts, answered side by side.
  if (s.contains("samples") && s["samples"].is_object()) {
    const json& smp = s["samples"];
    SideBySide sbs;
    sbs.id = "answers";
    for (const auto& c : smp.value("columns", json::array())) sbs.columns.push_back(c.get<std::string>());
    for (const auto& r : smp.value("rows", json::array())) {
      SideBySide::Row row;
      row.prompt = str(r, "prompt");
      for (const auto& a : r.value("answers", json::array())) row.answers.push_back(a.is_string() ? a.get<std::string>() : "");
      sbs.rows.push_back(row);
    }
    if (!sbs.rows.empty())
      page.push_back({"Answers side by side",
                      "<p class=\"note\">Greedy replies (at most " + fmt("%.0f", num(smp, "max_tokens")) +
                          " tokens) to the first held-out prompts.</p>\n" + html_side_by_side(sbs),
                      false});
  }

  // Folded: the tasks item by item, the settings, the rest.
  if (with_tasks && tasks.contains("items")) {
    SideBySide sbs;
    sbs.id = "task-items";
    sbs.with_expected = true;
    sbs.columns = {"teacher", tasks.value("student_name", std::string("student"))};
    for (const auto& it : tasks["items"]) {
      SideBySide::Row row;
      row.prompt = str(it, "id") + ": " + str(it, "prompt");
      row.expected = str(it, "expected");
      for (const char* who : {"teacher", "student"}) {
        const json side = it.value(who, json::object());
        row.answers.push_back(str(side, "reply"));
        row.marks.push_back(side.value("correct", false) ? 1 : 0);
      }
      sbs.rows.push_back(row);
    }
    page.push_back({"Tasks, item by item", html_side_by_side(sbs), true});
  }
  if (s.contains("options"))
    page.push_back({"Settings (the config as run)", "<pre>" + html_escape(s["options"].dump(2)) + "</pre>", true});
  json rest = json::object();
  for (const char* k : {"out", "teacher", "student", "data", "runs", "exports", "timings", "threads"})
    if (s.contains(k)) rest[k] = s[k];
  page.push_back({"Runs, data, exports and timings", "<pre>" + html_escape(rest.dump(2)) + "</pre>", true});

  std::string name = str(s, "out");
  while (name.size() > 1 && name.back() == '/') name.pop_back();
  name = name.empty() ? "main job" : std::filesystem::path(name).filename().string();
  return html_page("retort distill — " + name, page);
}

}  // namespace retort
