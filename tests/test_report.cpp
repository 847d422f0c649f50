// Tests for retort/distill/report: SVG charts and HTML reports are well-formed (balanced tags,
// quoted attributes), escape every user string, never print NaN/inf, place points where the
// axes say, handle empty/degenerate data, and are written atomically.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
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
  EXPECT_NE(html.find("<h2>Samples &amp; more</h2>"), std::string::npos);
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
