// retort/util/html_report.cpp — inline-SVG line charts and one-file HTML reports.
#include "retort/util/html_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>

#include "retort/util/file.h"

namespace retort {

namespace {

using nlohmann::json;

// Series colours (Okabe–Ito, distinguishable with the common colour-vision deficiencies).
constexpr const char* kPalette[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7",
                                    "#E69F00", "#56B4E9", "#000000", "#F0E442"};
constexpr int kPaletteSize = sizeof(kPalette) / sizeof(kPalette[0]);

// A pixel coordinate: always finite, two decimals.
std::string px(double v) {
  if (!std::isfinite(v)) v = 0;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}

// A data value for a label: up to 4 significant digits, never "nan"/"inf", no "-0".
std::string label_num(double v) {
  if (!std::isfinite(v)) return "-";
  if (v == 0) return "0";
  char buf[32];
  double a = std::fabs(v);
  if (a >= 1e-3 && a < 1e6)
    std::snprintf(buf, sizeof buf, "%.4g", v);
  else
    std::snprintf(buf, sizeof buf, "%.2e", v);
  return buf;
}

// ~n "nice" tick values (1, 2, 5 × 10^e steps) covering [lo, hi]; lo < hi.
std::vector<double> nice_ticks(double lo, double hi, int n) {
  double span = hi - lo;
  double raw = span / std::max(1, n);
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double norm = raw / mag;
  double step = (norm < 1.5 ? 1 : norm < 3.5 ? 2 : norm < 7.5 ? 5 : 10) * mag;
  std::vector<double> out;
  double first = std::ceil(lo / step - 1e-9) * step;
  for (double t = first; t <= hi + step * 1e-9 && out.size() < 50; t += step)
    out.push_back(std::fabs(t) < step * 1e-9 ? 0.0 : t);
  return out;
}

// A degenerate or empty range becomes a small one around its value.
void widen(double& lo, double& hi) {
  if (hi > lo) return;
  double pad = lo == 0 ? 1.0 : std::fabs(lo) * 0.1;
  lo -= pad;
  hi += pad;
}

// A number for the summary table: integers as they are, reals to 6 significant digits.
template <class J>
std::string cell_text(const J& v) {
  if (v.is_string()) return v.template get<std::string>();
  if (v.is_number_float()) {
    double d = v.template get<double>();
    if (!std::isfinite(d)) return "-";
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.6g", d);
    return buf;
  }
  if (v.is_null()) return "-";
  return v.dump();  // integers, booleans, nested objects/arrays (compact JSON)
}

template <class J>
std::string summary_table(const J& summary) {
  std::string o;
  if (summary.is_object()) {
    if (summary.empty()) return o;
    o += "<table class=\"kv\">\n";
    for (auto it = summary.begin(); it != summary.end(); ++it)
      o += "<tr><th>" + html_escape(it.key()) + "</th><td>" + html_escape(cell_text(it.value())) + "</td></tr>\n";
    o += "</table>\n";
  } else if (summary.is_array()) {
    if (summary.empty()) return o;
    std::vector<std::string> cols;  // first-seen order across all rows
    for (const auto& row : summary)
      if (row.is_object())
        for (auto it = row.begin(); it != row.end(); ++it)
          if (std::find(cols.begin(), cols.end(), it.key()) == cols.end()) cols.push_back(it.key());
    o += "<table class=\"rows\">\n<tr>";
    if (cols.empty()) cols.push_back("value");
    for (const auto& c : cols) o += "<th>" + html_escape(c) + "</th>";
    o += "</tr>\n";
    for (const auto& row : summary) {
      o += "<tr>";
      for (const auto& c : cols) {
        std::string t = row.is_object() ? (row.contains(c) ? cell_text(row[c]) : "") : cell_text(row);
        o += "<td>" + html_escape(t) + "</td>";
      }
      o += "</tr>\n";
    }
    o += "</table>\n";
  } else if (!summary.is_null()) {
    o += "<p>" + html_escape(cell_text(summary)) + "</p>\n";
  }
  return o;
}

}  // namespace

std::string html_escape(std::string_view s) {
  std::string o;
  o.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string svg_line_chart(const Chart& chart, int width, int height) {
  width = std::max(width, 200);
  height = std::max(height, 120);
  // Plot area inside margins: room for the title (top), tick labels + axis labels (left, bottom).
  const double ml = 70, mr = 16, mt = 30, mb = 46;
  const double pw = width - ml - mr, ph = height - mt - mb;

  // Finite points in plot space (y as log10 y on a log axis).
  std::vector<std::vector<std::pair<double, double>>> pts(chart.series.size());
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (size_t s = 0; s < chart.series.size(); ++s) {
    for (auto [x, y] : chart.series[s].points) {
      if (chart.log_y) {
        if (!(y > 0)) continue;
        y = std::log10(y);
      }
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      pts[s].push_back({x, y});
      x0 = std::min(x0, x), x1 = std::max(x1, x);
      y0 = std::min(y0, y), y1 = std::max(y1, y);
    }
  }
  const bool empty = !(x0 <= x1);

  std::string o;
  o += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + std::to_string(width) + "\" height=\"" +
       std::to_string(height) + "\" viewBox=\"0 0 " + std::to_string(width) + " " + std::to_string(height) +
       "\" font-family=\"sans-serif\" font-size=\"11\" role=\"img\">\n";
  o += "<title>" + html_escape(chart.title) + "</title>\n";
  o += "<rect x=\"0\" y=\"0\" width=\"" + std::to_string(width) + "\" height=\"" + std::to_string(height) +
       "\" fill=\"#ffffff\"/>\n";
  o += "<text x=\"" + px(width / 2.0) + "\" y=\"18\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">" +
       html_escape(chart.title) + "</text>\n";
  o += "<rect x=\"" + px(ml) + "\" y=\"" + px(mt) + "\" width=\"" + px(pw) + "\" height=\"" + px(ph) +
       "\" fill=\"none\" stroke=\"#888888\"/>\n";
  // Axis labels.
  o += "<text x=\"" + px(ml + pw / 2) + "\" y=\"" + px(height - 8.0) + "\" text-anchor=\"middle\">" +
       html_escape(chart.x_label) + "</text>\n";
  o += "<text x=\"14\" y=\"" + px(mt + ph / 2) + "\" text-anchor=\"middle\" transform=\"rotate(-90 14 " +
       px(mt + ph / 2) + ")\">" + html_escape(chart.y_label + (chart.log_y ? " (log)" : "")) + "</text>\n";

  if (empty) {
    o += "<text x=\"" + px(ml + pw / 2) + "\" y=\"" + px(mt + ph / 2) +
         "\" text-anchor=\"middle\" fill=\"#888888\">no data</text>\n</svg>\n";
    return o;
  }

  widen(x0, x1);
  widen(y0, y1);
  // Small headroom above and below the data so lines do not sit on the frame.
  const double ypad = (y1 - y0) * 0.05;
  y0 -= ypad, y1 += ypad;
  auto sx = [&](double x) { return ml + (x - x0) / (x1 - x0) * pw; };
  auto sy = [&](double y) { return mt + ph - (y - y0) / (y1 - y0) * ph; };

  // Ticks and grid. Log axis: whole decades when the range spans ≥ 2, else nice values of log10 y.
  std::vector<double> xt = nice_ticks(x0, x1, 6), yt;
  if (chart.log_y && std::floor(y1) - std::ceil(y0) >= 1) {
    int d0 = static_cast<int>(std::ceil(y0)), d1 = static_cast<int>(std::floor(y1));
    int stride = std::max(1, (d1 - d0 + 1) / 6);
    for (int d = d0; d <= d1; d += stride) yt.push_back(d);
  } else {
    yt = nice_ticks(y0, y1, 5);
  }
  for (double t : xt) {
    double x = sx(t);
    o += "<line x1=\"" + px(x) + "\" y1=\"" + px(mt) + "\" x2=\"" + px(x) + "\" y2=\"" + px(mt + ph) +
         "\" stroke=\"#eeeeee\"/>\n";
    o += "<text x=\"" + px(x) + "\" y=\"" + px(mt + ph + 14) + "\" text-anchor=\"middle\">" + label_num(t) +
         "</text>\n";
  }
  for (double t : yt) {
    double y = sy(t);
    o += "<line x1=\"" + px(ml) + "\" y1=\"" + px(y) + "\" x2=\"" + px(ml + pw) + "\" y2=\"" + px(y) +
         "\" stroke=\"#eeeeee\"/>\n";
    o += "<text x=\"" + px(ml - 5) + "\" y=\"" + px(y + 4) + "\" text-anchor=\"end\">" +
         label_num(chart.log_y ? std::pow(10.0, t) : t) + "</text>\n";
  }

  // Lines (points in the order given), with dots where a series is sparse.
  for (size_t s = 0; s < pts.size(); ++s) {
    const char* colour = kPalette[s % kPaletteSize];
    if (pts[s].size() >= 2) {
      o += "<polyline fill=\"none\" stroke=\"" + std::string(colour) + "\" stroke-width=\"1.6\" points=\"";
      for (size_t i = 0; i < pts[s].size(); ++i) {
        if (i) o += ' ';
        o += px(sx(pts[s][i].first)) + "," + px(sy(pts[s][i].second));
      }
      o += "\"/>\n";
    }
    if (pts[s].size() <= 40)
      for (auto [x, y] : pts[s])
        o += "<circle cx=\"" + px(sx(x)) + "\" cy=\"" + px(sy(y)) + "\" r=\"2.5\" fill=\"" + colour + "\"/>\n";
  }

  // Legend: top-right inside the plot, one row per named series.
  std::vector<size_t> named;
  for (size_t s = 0; s < chart.series.size(); ++s)
    if (!chart.series[s].name.empty()) named.push_back(s);
  if (!named.empty()) {
    size_t longest = 0;
    for (size_t s : named) longest = std::max(longest, chart.series[s].name.size());
    double lw = 30 + 6.5 * std::min<size_t>(longest, 40), lh = 16.0 * named.size() + 6;
    double lx = ml + pw - lw - 6, ly = mt + 6;
    o += "<g class=\"legend\">\n<rect x=\"" + px(lx) + "\" y=\"" + px(ly) + "\" width=\"" + px(lw) + "\" height=\"" +
         px(lh) + "\" fill=\"#ffffff\" fill-opacity=\"0.85\" stroke=\"#cccccc\"/>\n";
    for (size_t i = 0; i < named.size(); ++i) {
      double y = ly + 14 + 16.0 * i;
      o += "<line x1=\"" + px(lx + 6) + "\" y1=\"" + px(y - 4) + "\" x2=\"" + px(lx + 22) + "\" y2=\"" + px(y - 4) +
           "\" stroke=\"" + kPalette[named[i] % kPaletteSize] + "\" stroke-width=\"2\"/>\n";
      o += "<text x=\"" + px(lx + 26) + "\" y=\"" + px(y) + "\">" + html_escape(chart.series[named[i]].name) +
           "</text>\n";
    }
    o += "</g>\n";
  }
  o += "</svg>\n";
  return o;
}

namespace {

template <class J>
void write_report_page(const std::string& path, const std::string& title, const J& summary,
                       const std::vector<Chart>& charts,
                       const std::vector<std::pair<std::string, std::string>>& sections) {
  std::vector<ReportSection> page;
  std::string table = summary_table(summary);
  if (!table.empty()) page.push_back({"Summary", table, false});
  if (!charts.empty()) {
    std::string body;
    for (const auto& c : charts) body += "<div class=\"chart\">\n" + svg_line_chart(c) + "</div>\n";
    page.push_back({"Charts", body, false});
  }
  for (const auto& [heading, body] : sections) page.push_back({heading, body, true});
  write_html_page(path, title, page);
}

}  // namespace

void write_html_report(const std::string& path, const std::string& title, const nlohmann::json& summary,
                       const std::vector<Chart>& charts,
                       const std::vector<std::pair<std::string, std::string>>& sections) {
  write_report_page(path, title, summary, charts, sections);
}

void write_html_report(const std::string& path, const std::string& title, const nlohmann::ordered_json& summary,
                       const std::vector<Chart>& charts,
                       const std::vector<std::pair<std::string, std::string>>& sections) {
  write_report_page(path, title, summary, charts, sections);
}

std::string html_table(const Table& t) {
  // Per column, the best value among the competing rows (NaN: no direction or no finite value).
  std::vector<double> best(t.columns.size(), NAN);
  for (size_t c = 0; c < t.columns.size(); ++c) {
    if (t.columns[c].better == Better::none) continue;
    for (size_t r = 0; r < t.rows.size(); ++r) {
      if (!t.competes.empty() && !t.competes[r]) continue;
      if (c >= t.rows[r].size() || !std::isfinite(t.rows[r][c].value)) continue;
      const double v = t.rows[r][c].value;
      if (std::isnan(best[c]) || (t.columns[c].better == Better::lower ? v < best[c] : v > best[c])) best[c] = v;
    }
  }
  std::string o = "<table";
  if (!t.id.empty()) o += " id=\"" + html_escape(t.id) + "\"";
  o += ">\n<thead><tr>";
  for (const auto& c : t.columns) o += "<th>" + html_escape(c.name) + "</th>";
  o += "</tr></thead>\n<tbody>\n";
  for (size_t r = 0; r < t.rows.size(); ++r) {
    const bool competes = t.competes.empty() || t.competes[r];
    o += competes ? "<tr>" : "<tr class=\"reference\">";
    for (size_t c = 0; c < t.columns.size(); ++c) {
      const TableCell cell = c < t.rows[r].size() ? t.rows[r][c] : TableCell{};
      const bool numeric = std::isfinite(cell.value);
      const bool is_best = competes && numeric && !std::isnan(best[c]) && cell.value == best[c];
      std::string cls = numeric ? "num" : "";
      if (is_best) cls += " best";
      o += cls.empty() ? "<td>" : "<td class=\"" + (cls[0] == ' ' ? cls.substr(1) : cls) + "\">";
      o += is_best ? "<strong>" + html_escape(cell.text) + "</strong>" : html_escape(cell.text);
      o += "</td>";
    }
    o += "</tr>\n";
  }
  o += "</tbody>\n</table>\n";
  return o;
}

std::string html_side_by_side(const SideBySide& s) {
  std::string o = "<table class=\"side-by-side\"";
  if (!s.id.empty()) o += " id=\"" + html_escape(s.id) + "\"";
  o += ">\n<thead><tr><th>prompt</th>";
  if (s.with_expected) o += "<th>expected</th>";
  for (const auto& c : s.columns) o += "<th>" + html_escape(c) + "</th>";
  o += "</tr></thead>\n<tbody>\n";
  for (const auto& r : s.rows) {
    o += "<tr><td class=\"prompt\">" + html_escape(r.prompt) + "</td>";
    if (s.with_expected) o += "<td class=\"expected\">" + html_escape(r.expected) + "</td>";
    for (size_t c = 0; c < s.columns.size(); ++c) {
      const int mark = c < r.marks.size() ? r.marks[c] : -1;
      const std::string text = c < r.answers.size() ? r.answers[c] : "";
      o += mark == 1 ? "<td class=\"answer right\">✓ " : mark == 0 ? "<td class=\"answer wrong\">✗ " : "<td class=\"answer\">";
      const bool blank = text.find_first_not_of(" \t\r\n") == std::string::npos;
      o += blank ? "<em>(empty)</em>" : html_escape(text);
      o += "</td>";
    }
    o += "</tr>\n";
  }
  o += "</tbody>\n</table>\n";
  return o;
}

std::string html_page(const std::string& title, const std::vector<ReportSection>& sections) {
  std::string o;
  o += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  o += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
  o += "<title>" + html_escape(title) + "</title>\n";
  o += "<style>\n"
       "body{font-family:sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222;line-height:1.4}\n"
       "h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}\n"
       "table{border-collapse:collapse;margin:0.8em 0;font-size:0.92em}\n"
       "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}\n"
       "th{background:#f4f4f4}td{font-variant-numeric:tabular-nums}td.num{text-align:right}\n"
       "td.best{background:#e6f4ea}tr.reference td{color:#555;background:#fafafa}\n"
       "table.side-by-side{table-layout:fixed;width:100%}\n"
       "table.side-by-side td{white-space:pre-wrap;overflow-wrap:anywhere;font-size:0.9em}\n"
       "table.side-by-side td.prompt{font-weight:bold}\n"
       "td.right{background:#eef8ee}td.wrong{background:#fbefef}\n"
       "details{margin:0.8em 0;border:1px solid #e4e4e4;padding:0.3em 0.6em}\n"
       "summary{cursor:pointer;font-weight:bold}\n"
       "p.note{color:#555;font-size:0.88em}p.headline{font-size:1.1em}\n"
       "pre{white-space:pre-wrap;background:#f8f8f8;padding:0.6em;border:1px solid #eee}\n"
       ".chart{margin:1em 0}\n"
       // Token-level highlighting (audit case file samples): scored-green, scored-red, not scored.
       "div.tokens{white-space:pre-wrap;font-family:monospace;font-size:0.88em;border:1px solid #eee;padding:0.6em}\n"
       "span.tg{background:#cdeccd}span.tr{background:#f6d3d3}span.tn{color:#777}\n"
       "div.verdict{border-left:5px solid #0072B2;background:#f2f7fb;padding:0.6em 1em;font-size:1.05em}\n"
       "</style>\n</head>\n<body>\n";
  o += "<h1>" + html_escape(title) + "</h1>\n";
  for (const auto& s : sections) {
    if (s.folded)
      o += "<details>\n<summary>" + html_escape(s.heading) + "</summary>\n" + s.html + "\n</details>\n";
    else if (s.heading.empty())
      o += s.html + "\n";
    else
      o += "<section>\n<h2>" + html_escape(s.heading) + "</h2>\n" + s.html + "\n</section>\n";
  }
  o += "<p style=\"color:#888;font-size:0.8em\">written by retort 0.1.0</p>\n</body>\n</html>\n";
  return o;
}

void write_html_page(const std::string& path, const std::string& title, const std::vector<ReportSection>& sections) {
  write_file_atomic(path, html_page(title, sections));
}

}  // namespace retort
