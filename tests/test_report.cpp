// Tests for retort/distill/report: SVG charts and HTML reports are well-formed (balanced tags,
// quoted attributes), escape every user string, never print NaN/inf, place points where the
// axes say, handle empty/degenerate data, and are written atomically.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include "retort/distill/report.h"
#include "retort/util/error.h"
#include "retort/util/file.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace retort;
using namespace retort_test;

namespace {

// Checks that every element is closed in order, that no raw '<' or '>' sits in text, and that
// attribute quotes pair up. Returns "" when well-formed, else what is wrong.
std::string well_formed(const std::string& doc) {
  static const std::vector<std::string> kVoid = {"meta", "br", "hr", "img", "input", "link"};
  std::vector<std::string> stack;
  size_t i = 0;
  while (i < doc.size()) {
    char c = doc[i];
    if (c == '>') return cat("stray '>' at ", i);
    if (c != '<') {
      ++i;
      continue;
    }
    if (doc.compare(i, 4, "<!--") == 0) {
      size_t e = doc.find("-->", i);
      if (e == std::string::npos) return "unclosed comment";
      i = e + 3;
      continue;
    }
    size_t e = doc.find('>', i);
    if (e == std::string::npos) return cat("unclosed tag at ", i);
    std::string tag = doc.substr(i + 1, e - i - 1);
    if (tag.find('<') != std::string::npos) return cat("'<' inside tag at ", i);
    if (std::count(tag.begin(), tag.end(), '"') % 2 != 0) return cat("unbalanced quotes in <", tag, ">");
    i = e + 1;
    if (tag.rfind("!", 0) == 0) continue;  // <!DOCTYPE html>
    bool closing = tag[0] == '/';
    bool self_closing = tag.back() == '/';
    size_t n0 = closing ? 1 : 0, n1 = n0;
    while (n1 < tag.size() && (std::isalnum(static_cast<unsigned char>(tag[n1])) || tag[n1] == '-')) ++n1;
    std::string name = tag.substr(n0, n1 - n0);
    if (name.empty()) return cat("tag without a name: <", tag, ">");
    if (closing) {
      if (stack.empty() || stack.back() != name)
        return cat("</", name, "> closes <", stack.empty() ? "(nothing)" : stack.back(), ">");
      stack.pop_back();
    } else if (!self_closing && std::find(kVoid.begin(), kVoid.end(), name) == kVoid.end()) {
      stack.push_back(name);
    }
  }
  if (!stack.empty()) return cat("<", stack.back(), "> never closed");
  return "";
}

// True when s contains "nan" or "inf" in any case (our fixed markup contains neither).
bool prints_non_finite(const std::string& s) {
  std::string l = s;
  for (auto& ch : l) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return l.find("nan") != std::string::npos || l.find("inf") != std::string::npos;
}

// The (x, y) pairs of every <polyline points="..."> in order.
std::vector<std::vector<std::pair<double, double>>> polylines(const std::string& svg) {
  std::vector<std::vector<std::pair<double, double>>> out;
  size_t pos = 0;
  while ((pos = svg.find("<polyline", pos)) != std::string::npos) {
    size_t a = svg.find("points=\"", pos) + 8, b = svg.find('"', a);
    std::istringstream is(svg.substr(a, b - a));
    std::vector<std::pair<double, double>> pts;
    std::string xy;
    while (is >> xy) {
      size_t comma = xy.find(',');
      pts.push_back({std::stod(xy.substr(0, comma)), std::stod(xy.substr(comma + 1))});
    }
    out.push_back(pts);
    pos = b;
  }
  return out;
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

}  // namespace

TEST(Report, CheckerCatchesBrokenMarkup) {  // the checker the other tests rely on
  EXPECT_EQ(well_formed("<!DOCTYPE html><p a=\"1\">x<br><g/></p>"), "");
  EXPECT_NE(well_formed("<svg><g></svg>"), "");
  EXPECT_NE(well_formed("<p>a < b</p>"), "");
  EXPECT_NE(well_formed("<p>a > b</p>"), "");
  EXPECT_NE(well_formed("<p x=\"1>y</p>"), "");
  EXPECT_NE(well_formed("<p>"), "");
  EXPECT_TRUE(prints_non_finite("<text>NaN</text>"));
}

TEST(Report, HtmlEscapeCoversMarkupAndQuotes) {
  EXPECT_EQ(html_escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;");
  EXPECT_EQ(html_escape(""), "");
  EXPECT_EQ(html_escape("plain ütf-8 ✓"), "plain ütf-8 ✓");
  EXPECT_EQ(html_escape("&amp;"), "&amp;amp;");  // escaping is not idempotent: escape once
}

TEST(Report, ChartPlacesPointsOnTheAxes) {
  Chart c{"loss <train>", "step", "loss", {}, false};
  ChartSeries s{"fkl & \"ce\"", {}};
  for (int i = 0; i <= 10; ++i) s.points.push_back({double(i), 10.0 * i});
  c.series.push_back(s);
  const int w = 720, h = 320;
  std::string svg = svg_line_chart(c, w, h);
  EXPECT_EQ(well_formed(svg), "") << svg;
  EXPECT_FALSE(prints_non_finite(svg));
  EXPECT_NE(svg.find("loss &lt;train&gt;"), std::string::npos);
  EXPECT_NE(svg.find("fkl &amp; &quot;ce&quot;"), std::string::npos);
  EXPECT_EQ(svg.find("<train>"), std::string::npos);

  auto lines = polylines(svg);
  ASSERT_EQ(lines.size(), 1u);
  ASSERT_EQ(lines[0].size(), 11u);
  // x spans the plot area's width exactly (data range = axis range); y grows upwards.
  double left = lines[0].front().first, right = lines[0].back().first;
  EXPECT_GT(left, 0);
  EXPECT_LT(right, w);
  for (size_t i = 1; i < lines[0].size(); ++i) {
    EXPECT_NEAR(lines[0][i].first - lines[0][i - 1].first, (right - left) / 10, 0.02);
    EXPECT_NEAR(lines[0][i - 1].second - lines[0][i].second,
                (lines[0].front().second - lines[0].back().second) / 10, 0.02);
  }
  EXPECT_GT(lines[0].front().second, lines[0].back().second);
  EXPECT_GT(lines[0].back().second, 0);
  EXPECT_LT(lines[0].front().second, h);
  // Nice ticks: y 0..100 in steps of 20, x 0..10 in steps of 2.
  for (const char* t : {">0</text>", ">20</text>", ">100</text>", ">10</text>", ">4</text>"})
    EXPECT_NE(svg.find(t), std::string::npos) << t;
  EXPECT_EQ(svg.find(">30</text>"), std::string::npos);
  EXPECT_EQ(count(svg, "<circle"), 11u);  // sparse series get dots
}

TEST(Report, NonFinitePointsAreDroppedNeverPrinted) {
  Chart c{"t", "x", "y", {}, false};
  c.series.push_back({"a", {{0, 1}, {1, kNaN}, {kInf, 2}, {2, -kInf}, {3, 4}}});
  c.series.push_back({"b", {{kNaN, kNaN}}});
  std::string svg = svg_line_chart(c);
  EXPECT_EQ(well_formed(svg), "");
  EXPECT_FALSE(prints_non_finite(svg)) << svg;
  auto lines = polylines(svg);
  ASSERT_EQ(lines.size(), 1u);  // b has no finite point: no line
  EXPECT_EQ(lines[0].size(), 2u);
}

TEST(Report, LogAxisDropsNonPositiveAndLabelsDecades) {
  Chart c{"ppl", "step", "ppl", {}, true};
  c.series.push_back({"s", {{0, 10}, {1, 1}, {2, 0.1}, {3, 0.01}, {4, 0.001}, {5, 0}, {6, -3}}});
  std::string svg = svg_line_chart(c);
  EXPECT_EQ(well_formed(svg), "");
  EXPECT_FALSE(prints_non_finite(svg));
  auto lines = polylines(svg);
  ASSERT_EQ(lines.size(), 1u);
  ASSERT_EQ(lines[0].size(), 5u);
  // Equal ratios are equal pixel steps on a log axis.
  for (size_t i = 2; i < 5; ++i)
    EXPECT_NEAR(lines[0][i].second - lines[0][i - 1].second, lines[0][1].second - lines[0][0].second, 0.02);
  for (const char* t : {">0.001</text>", ">0.01</text>", ">0.1</text>", ">1</text>", ">10</text>"})
    EXPECT_NE(svg.find(t), std::string::npos) << t;
}

TEST(Report, EmptyAndDegenerateChartsRender) {
  for (const Chart& c : {Chart{"none", "x", "y", {}, false}, Chart{"empty", "x", "y", {{"a", {}}}, false},
                         Chart{"log neg", "x", "y", {{"a", {{1, -1}}}}, true}}) {
    std::string svg = svg_line_chart(c);
    EXPECT_EQ(well_formed(svg), "") << c.title;
    EXPECT_FALSE(prints_non_finite(svg)) << c.title;
    EXPECT_NE(svg.find("no data"), std::string::npos) << c.title;
  }
  // One point, and a constant series: ranges are widened, not divided by zero.
  for (const Chart& c : {Chart{"one", "x", "y", {{"a", {{5, 5}}}}, false},
                         Chart{"flat", "x", "y", {{"a", {{0, 2}, {1, 2}, {2, 2}}}}, false},
                         Chart{"zero", "x", "y", {{"a", {{0, 0}, {0, 0}}}}, false}}) {
    std::string svg = svg_line_chart(c);
    EXPECT_EQ(well_formed(svg), "") << c.title;
    EXPECT_FALSE(prints_non_finite(svg)) << c.title << svg;
    EXPECT_EQ(svg.find("no data"), std::string::npos) << c.title;
    EXPECT_GE(count(svg, "<circle"), 1u) << c.title;
  }
}

TEST(Report, HtmlPageIsSelfContainedAndEscaped) {
  TempDir dir;
  std::string path = dir / "report.html";
  nlohmann::json summary = {{"loss", "fkl"}, {"steps", 200}, {"nll", 2.718281828}, {"bad", kNaN},
                            {"<key>", "a&b"}, {"nested", {{"k", 1}}}};
  std::vector<Chart> charts = {Chart{"loss", "step", "loss", {{"train", {{0, 3}, {1, 2}}}}, false},
                               Chart{"empty", "", "", {}, false}};
  write_html_report(path, "distill <run> \"1\"", summary, charts,
                    {{"Samples & more", "<pre>" + html_escape("<b>x</b>") + "</pre>"}});
  std::string html = read_file(path);
  EXPECT_EQ(well_formed(html), "") << html;
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_NE(html.find("<title>distill &lt;run&gt; &quot;1&quot;</title>"), std::string::npos);
  EXPECT_NE(html.find("<th>&lt;key&gt;</th><td>a&amp;b</td>"), std::string::npos);
  EXPECT_NE(html.find("<th>steps</th><td>200</td>"), std::string::npos);
  EXPECT_NE(html.find("<th>nll</th><td>2.71828</td>"), std::string::npos);
  EXPECT_NE(html.find("<th>bad</th><td>-</td>"), std::string::npos);
  EXPECT_NE(html.find("{&quot;k&quot;:1}"), std::string::npos);
  EXPECT_NE(html.find("<summary>Samples &amp; more</summary>"), std::string::npos);  // folded
  EXPECT_NE(html.find("<pre>&lt;b&gt;x&lt;/b&gt;</pre>"), std::string::npos);  // sections go in as given
  EXPECT_EQ(count(html, "<svg"), 2u);
  EXPECT_FALSE(prints_non_finite(html));
  // Self-contained: nothing fetched (the only URL is the SVG namespace, which is not fetched).
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("<link"), std::string::npos);
  EXPECT_EQ(html.find("src="), std::string::npos);
  EXPECT_EQ(html.find("url("), std::string::npos);
  EXPECT_EQ(count(html, "http"), count(html, "xmlns=\"http://www.w3.org/2000/svg\""));
}

TEST(Report, RowArraySummaryBecomesATableWithEveryColumn) {
  TempDir dir;
  std::string path = dir / "rows.html";
  nlohmann::json rows = nlohmann::json::array({{{"model", "student"}, {"nll", 2.5}},
                                               {{"model", "teacher"}, {"nll", 1.25}, {"agree", 1.0}}});
  write_html_report(path, "t", rows, {}, {});
  std::string html = read_file(path);
  EXPECT_EQ(well_formed(html), "");
  EXPECT_NE(html.find("<tr><th>model</th><th>nll</th><th>agree</th></tr>"), std::string::npos) << html;
  EXPECT_NE(html.find("<tr><td>student</td><td>2.5</td><td></td></tr>"), std::string::npos);
  EXPECT_NE(html.find("<tr><td>teacher</td><td>1.25</td><td>1</td></tr>"), std::string::npos);
}

TEST(Report, WriteIsAtomic) {
  TempDir dir;
  std::string path = dir / "r.html";
  write_file_atomic(path, "old");
  write_html_report(path, "new", nlohmann::json::object(), {}, {});
  EXPECT_NE(read_file(path).find("<h1>new</h1>"), std::string::npos);
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir.path)) ++files, (void)e;
  EXPECT_EQ(files, 1u);  // no temp file left beside it
  // A directory that does not exist: retort::Error naming the path, nothing created.
  std::string bad = dir / "missing/r.html";
  EXPECT_THROW(write_html_report(bad, "x", nlohmann::json::object(), {}, {}), Error);
  EXPECT_FALSE(fs::exists(dir.path / "missing"));
}

// ---- Tables, answers side by side, the main job's page ------------------------------------------

namespace {

// The text of every <th> of the first <table ... id="ID"> (markup inside a cell removed), in order.
std::vector<std::string> header_cells(const std::string& doc, const std::string& id) {
  std::vector<std::string> out;
  size_t t = doc.find("id=\"" + id + "\"");
  if (t == std::string::npos) return out;
  size_t end = doc.find("</thead>", t);
  for (size_t p = doc.find("<th", t); p != std::string::npos && p < end; p = doc.find("<th", p + 1)) {
    if (doc.compare(p, 4, "<th>") != 0 && doc.compare(p, 4, "<th ") != 0) continue;  // <thead>
    size_t a = doc.find('>', p) + 1, b = doc.find("</th>", a);
    out.push_back(doc.substr(a, b - a));
  }
  return out;
}

// A main-job summary as pipeline.cpp writes it, with two runs' metrics.jsonl under `dir`.
nlohmann::json fixture_summary(const std::string& dir) {
  using nlohmann::json;
  for (const char* loss : {"ce", "fkl"}) {
    fs::create_directories(dir + "/train-" + loss);
    std::string m;
    for (int step = 1; step <= 12; ++step) {
      const double base = loss == std::string("ce") ? 9.0 : 7.0;
      m += json{{"step", step}, {"loss", base - 0.3 * step}, {"agree", 0.01 * step}, {"lr", 1e-3}}.dump() + "\n";
      if (step % 6 == 0)
        m += json{{"step", step}, {"eval", {{"nll", base - 0.2 * step}, {"top1_agree", 0.012 * step}}}}.dump() + "\n";
    }
    write_file_atomic(dir + "/train-" + loss + "/metrics.jsonl", m);
  }
  json table = json::array(
      {{{"model", "teacher"}, {"params", 134515008}, {"nll", 2.469}, {"ppl", 11.81}, {"top1_agree", 1.0}, {"kl", 0.0},
        {"task_accuracy", 0.52}},
       {{"model", "student before"}, {"params", 18900000}, {"nll", 14.121}, {"ppl", 1357139.0}, {"top1_agree", 0.001},
        {"kl", 10.258}},
       {{"model", "SFT-only (ce)"}, {"params", 18900000}, {"nll", 7.830}, {"ppl", 2516.0}, {"top1_agree", 0.180},
        {"kl", 4.607}},
       {{"model", "KD (fkl)"}, {"params", 18900000}, {"nll", 6.713}, {"ppl", 823.0}, {"top1_agree", 0.170},
        {"kl", 3.668}, {"task_accuracy", 0.12}}});
  json items = json::array(
      {{{"id", "arithmetic-001"}, {"category", "arithmetic"}, {"prompt", "What is 2 + 3?"}, {"expected", "5"},
        {"teacher", {{"reply", "2 + 3 = 5"}, {"correct", true}}},
        {"student", {{"reply", "<script>alert(1)</script>"}, {"correct", false}}}}});
  json tasks = {{"file", "data/tasks/tasks.jsonl"},
                {"student_name", "KD (fkl)"},
                {"categories", json::array({{{"category", "arithmetic"}, {"n", 30}, {"teacher", 0.6}, {"student", 0.1},
                                             {"kept", 0.1 / 0.6}},
                                            {{"category", "format"}, {"n", 30}, {"teacher", 0.0}, {"student", 0.1},
                                             {"kept", nullptr}}})},
                {"overall", {{"category", "overall"}, {"n", 60}, {"teacher", 0.52}, {"student", 0.12}, {"kept", 0.12 / 0.52}}},
                {"items", items}};
  json samples = {{"max_tokens", 64},
                  {"columns", {"teacher", "SFT-only (ce)", "KD (fkl)"}},
                  {"rows", json::array({{{"prompt", "Explain the seasons <briefly> & clearly."},
                                         {"answers", {"Earth's tilt.", "The sun is hot.", "Tilt & orbit."}}},
                                        {{"prompt", "Name a colour."}, {"answers", {"Blue.", "", "Red."}}}})}};
  return {{"out", dir},
          {"teacher", {{"spec", "smollm2-135m-instruct"}, {"params", 134515008}}},
          {"student", {{"params", 18900000}, {"ratio", 7.1}}},
          {"data", {{"heldout", {{"dir", dir + "/data/heldout"}, {"samples", 60}}}}},
          {"table", table},
          {"runs", {{"ce", {{"dir", dir + "/train-ce"}, {"title", "SFT-only (ce)"}}},
                    {"fkl", {{"dir", dir + "/train-fkl"}, {"title", "KD (fkl)"}}}}},
          {"options", {{"losses", {"ce", "fkl"}}, {"teacher", "smollm2-135m-instruct"}}},
          {"timings", {{"total_s", 370.0}}},
          {"tasks", tasks},
          {"samples", samples}};
}

const std::vector<std::string> kComparisonColumns = {"model", "params", "held-out NLL", "ppl", "top-1 agreement",
                                                     "KL(teacher‖student)", "task accuracy"};

}  // namespace

TEST(Report, TableKeepsColumnOrderAndMarksTheBestCompetingRow) {
  Table t;
  t.id = "cmp";
  t.columns = {{"zeta", Better::none}, {"nll", Better::lower}, {"agree", Better::higher}};
  t.rows = {{{"teacher", kNaN}, {"1.0", 1.0}, {"1.000", 1.0}},
            {{"a <b>", kNaN}, {"3.0", 3.0}, {"0.2", 0.2}},
            {{"c", kNaN}, {"2.0", 2.0}, {"0.2", 0.2}},
            {{"d", kNaN}, {"-", kNaN}, {"0.1", 0.1}}};
  t.competes = {false, true, true, true};
  std::string h = html_table(t);
  EXPECT_EQ(well_formed(h), "") << h;
  EXPECT_EQ(header_cells(h, "cmp"), (std::vector<std::string>{"zeta", "nll", "agree"}));  // as given, not sorted
  EXPECT_NE(h.find("<td>a &lt;b&gt;</td>"), std::string::npos) << h;
  // nll: c (2.0) wins, not the reference teacher (1.0); agree: a tie between a and c, both marked.
  EXPECT_NE(h.find("<td>c</td><td class=\"num best\"><strong>2.0</strong></td>"), std::string::npos) << h;
  EXPECT_EQ(count(h, "<strong>"), 3u) << h;
  EXPECT_EQ(count(h, "<strong>1.0"), 0u);
  EXPECT_NE(h.find("<tr class=\"reference\">"), std::string::npos);
}

TEST(Report, SideBySideEscapesAndMarksAnswers) {
  SideBySide s;
  s.id = "x";
  s.columns = {"teacher", "student <kd>"};
  s.with_expected = true;
  s.rows = {{"What is 2 + 3?", "5", {"2 + 3 = 5", "</td><script>"}, {1, 0}}, {"Say hi", "", {"hi", ""}, {}}};
  std::string h = html_side_by_side(s);
  EXPECT_EQ(well_formed(h), "") << h;
  EXPECT_EQ(header_cells(h, "x"), (std::vector<std::string>{"prompt", "expected", "teacher", "student &lt;kd&gt;"}));
  EXPECT_NE(h.find("<td class=\"answer right\">✓ 2 + 3 = 5</td>"), std::string::npos) << h;
  EXPECT_NE(h.find("<td class=\"answer wrong\">✗ &lt;/td&gt;&lt;script&gt;</td>"), std::string::npos) << h;
  EXPECT_NE(h.find("<em>(empty)</em>"), std::string::npos);
  EXPECT_EQ(h.find("<script"), std::string::npos);
}

TEST(Report, MainJobPageReadsWell) {
  TempDir dir;
  const nlohmann::json summary = fixture_summary(dir.path.string());
  const std::string html = distill_report_html(summary);
  EXPECT_EQ(well_formed(html), "") << html;
  EXPECT_FALSE(prints_non_finite(html));
  // The comparison table: columns in reading order, the best student per column in bold.
  EXPECT_EQ(header_cells(html, "comparison"), kComparisonColumns);
  EXPECT_NE(html.find("<td>KD (fkl)</td><td>18.9M</td><td class=\"num best\"><strong>6.713</strong></td>"),
            std::string::npos)
      << html;
  EXPECT_NE(html.find("<td class=\"num best\"><strong>0.180</strong></td>"), std::string::npos);  // SFT's agreement
  EXPECT_NE(html.find("<td class=\"num best\"><strong>12.0%</strong></td>"), std::string::npos);
  EXPECT_NE(html.find("<td class=\"num\">1357139</td>"), std::string::npos);  // a large ppl without decimals
  // Task accuracy: the headline share, per category with "-" where the teacher has none right.
  EXPECT_NE(html.find("KD (fkl) keeps <strong>23.1%</strong> of the teacher's task accuracy"), std::string::npos);
  EXPECT_EQ(header_cells(html, "tasks"), (std::vector<std::string>{"category", "n", "teacher", "KD (fkl)", "kept"}));
  // Curves: four charts, one line per run (held-out from step 0), the teacher as a reference line.
  EXPECT_EQ(count(html, "<svg"), 4u);
  EXPECT_EQ(count(html, "<polyline"), 2u + 3u + 2u + 2u);
  EXPECT_GE(count(html, ">KD (fkl)</text>"), 4u);
  EXPECT_GE(count(html, ">SFT-only (ce)</text>"), 4u);
  EXPECT_NE(html.find(">teacher (reference)</text>"), std::string::npos);
  // Answers side by side, escaped; the tasks item by item and the settings folded.
  EXPECT_EQ(header_cells(html, "answers"), (std::vector<std::string>{"prompt", "teacher", "SFT-only (ce)", "KD (fkl)"}));
  EXPECT_NE(html.find("Explain the seasons &lt;briefly&gt; &amp; clearly."), std::string::npos);
  EXPECT_NE(html.find("&lt;script&gt;alert(1)&lt;/script&gt;"), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(count(html, "<details>"), 3u);
  EXPECT_NE(html.find("<summary>Settings (the config as run)</summary>"), std::string::npos);
  EXPECT_LT(html.find("id=\"comparison\""), html.find("<details>"));  // the settings come last
  EXPECT_EQ(html.find("url("), std::string::npos);
  EXPECT_EQ(html.find("<link"), std::string::npos);

  // Without tasks and without the runs' metrics: no task column, charts that say "no data" or show
  // only the step-0 point, still well-formed.
  nlohmann::json bare = summary;
  bare.erase("tasks");
  bare.erase("samples");
  fs::remove_all(dir.path / "train-ce");
  const std::string h2 = distill_report_html(bare);
  EXPECT_EQ(well_formed(h2), "") << h2;
  auto cols = kComparisonColumns;
  cols.pop_back();
  EXPECT_EQ(header_cells(h2, "comparison"), cols);
  EXPECT_EQ(h2.find("id=\"answers\""), std::string::npos);
  EXPECT_EQ(count(h2, "<details>"), 2u);
}

// The page in a real browser: headless Chromium parses it without moving anything (a misnested tag
// would be moved or dropped), and the DOM it builds holds the table in reading order, the SVG curves
// and the answers side by side. Skips when Chromium is absent (scripts/setup.sh installs it).
TEST(ReportBrowser, MainJobPageRendersInChromium) {
  std::string chromium;
  for (const char* name : {"chromium", "chromium-browser", "google-chrome"}) {
    FILE* p = popen(cat("command -v ", name, " 2>/dev/null").c_str(), "r");
    char buf[512] = {0};
    if (p && fgets(buf, sizeof buf, p)) chromium = buf;
    if (p) pclose(p);
    while (!chromium.empty() && (chromium.back() == '\n' || chromium.back() == ' ')) chromium.pop_back();
    if (!chromium.empty()) break;
  }
  if (const char* env = std::getenv("RETORT_CHROMIUM")) chromium = env;
  if (chromium.empty())
    GTEST_SKIP() << "chromium not found: apt-get install chromium (scripts/setup.sh installs it), or set RETORT_CHROMIUM";

  TempDir dir;
  const std::string html = distill_report_html(fixture_summary(dir.path.string()));
  write_file_atomic(dir / "report.html", html);
  // A profile of its own in the temp dir, so no state is shared with another Chromium.
  const std::string flags = cat("--headless --no-sandbox --disable-gpu --no-first-run --user-data-dir=", dir / "profile");
  const std::string dump = cat("timeout 120 ", chromium, " ", flags, " --dump-dom file://", dir / "report.html", " >",
                               dir / "dom.html", " 2>", dir / "stderr.txt");
  ASSERT_EQ(std::system(dump.c_str()), 0) << dump << "\n" << read_file(dir / "stderr.txt");
  const std::string dom = read_file(dir / "dom.html");
  ASSERT_NE(dom.find("</html>"), std::string::npos) << dom;
  // Nothing moved or dropped by the parser: every element kind appears as often as in our markup.
  for (const char* tag : {"<table", "<tr", "<td", "<th>", "<svg", "<polyline", "<details", "<summary", "<section"})
    EXPECT_EQ(count(dom, tag), count(html, tag)) << tag;
  EXPECT_EQ(header_cells(dom, "comparison"), kComparisonColumns);
  EXPECT_EQ(count(dom, "<svg"), 4u);
  EXPECT_NE(dom.find(">KD (fkl)</text>"), std::string::npos);  // a legend entry
  EXPECT_EQ(header_cells(dom, "answers"), (std::vector<std::string>{"prompt", "teacher", "SFT-only (ce)", "KD (fkl)"}));
  EXPECT_NE(dom.find("Tilt &amp; orbit."), std::string::npos);
  EXPECT_EQ(dom.find("<script"), std::string::npos);  // the escaped reply stayed text
  // It also paints: a screenshot of the page is written and is not tiny (a blank page is ~1-5 KB).
  const std::string shot = cat("timeout 120 ", chromium, " ", flags, " --hide-scrollbars --window-size=1200,2400",
                               " --screenshot=", dir / "page.png", " file://", dir / "report.html", " >/dev/null 2>&1");
  ASSERT_EQ(std::system(shot.c_str()), 0) << shot;
  ASSERT_TRUE(fs::exists(dir / "page.png"));
  EXPECT_GT(fs::file_size(dir / "page.png"), 40000u);
}

TEST(Report, OrderedSummaryKeepsItsKeyOrderAndSettingsFold) {
  TempDir dir;
  nlohmann::ordered_json summary;
  summary["status"] = "finished";
  summary["loss"] = "fkl";
  summary["held-out NLL"] = 6.5;
  summary["KL(teacher||student)"] = 3.25;
  write_html_report(dir / "r.html", "run", summary, {}, {{"Configuration", "<pre>{}</pre>"}});
  const std::string html = read_file(dir / "r.html");
  EXPECT_EQ(well_formed(html), "");
  const size_t a = html.find("<th>status</th>"), b = html.find("<th>loss</th>"), c = html.find("<th>held-out NLL</th>"),
               d = html.find("<th>KL(teacher||student)</th>");
  ASSERT_NE(d, std::string::npos) << html;
  EXPECT_TRUE(a < b && b < c && c < d) << html;  // as inserted, not alphabetical
  EXPECT_NE(html.find("<details>\n<summary>Configuration</summary>\n<pre>{}</pre>"), std::string::npos) << html;
}
