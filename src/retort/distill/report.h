// retort/distill/report.h — self-contained HTML reports: line charts as inline SVG, a summary
// table, extra sections. No external CSS/JS/fonts, so a report can be mailed or archived as one file.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace retort {

// One polyline: (x, y) points in data units. Non-finite points are dropped (never printed).
struct ChartSeries {
  std::string name;
  std::vector<std::pair<double, double>> points;
};

struct Chart {
  std::string title, x_label, y_label;
  std::vector<ChartSeries> series;
  bool log_y = false;  // log10 y axis; points with y <= 0 are dropped
};

// An inline <svg> element (width × height px) with axes, "nice" ticks, grid, and a legend.
// An empty chart (no finite points) renders a frame with "no data".
std::string svg_line_chart(const Chart&, int width = 720, int height = 320);

// & < > " ' → entities; safe for text content and attribute values.
std::string html_escape(std::string_view);

// A self-contained page: the title, a summary table from a flat JSON object (key | value rows)
// or an array of row objects (one column per key, in first-seen order), the charts, then the
// extra sections as (heading, HTML body already escaped). Written atomically.
void write_html_report(const std::string& path, const std::string& title, const nlohmann::json& summary,
                       const std::vector<Chart>& charts,
                       const std::vector<std::pair<std::string, std::string>>& sections);

}  // namespace retort
