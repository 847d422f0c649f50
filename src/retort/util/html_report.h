// retort/util/html_report.h — self-contained HTML reports: line charts as inline SVG, tables, pages.
// No external CSS/JS/fonts, so a report can be mailed or archived as one file. Used by the distill main
// job's report (distill/report.h) and the audit case file (audit/case_file.h); no libtorch.
#pragma once

#include <cmath>
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
// extra sections as (heading, HTML body already escaped), folded in <details> (settings, provenance:
// there when wanted, out of the way). Written atomically.
void write_html_report(const std::string& path, const std::string& title, const nlohmann::json& summary,
                       const std::vector<Chart>& charts,
                       const std::vector<std::pair<std::string, std::string>>& sections);
// The same with the key | value rows in insertion order (nlohmann::json sorts keys alphabetically).
void write_html_report(const std::string& path, const std::string& title, const nlohmann::ordered_json& summary,
                       const std::vector<Chart>& charts,
                       const std::vector<std::pair<std::string, std::string>>& sections);

// ---- Building blocks of a page ---------------------------------------------------------------

// Which way a column is better; a table marks each such column's best competing row.
enum class Better { none, lower, higher };

struct TableColumn {
  std::string name;
  Better better = Better::none;
};

struct TableCell {
  std::string text;  // shown (escaped)
  double value = NAN;  // compared for "best" (non-finite: not compared)
};

// Columns in the order given. In each column with a direction, the competing rows with the best
// value get class="best" and <strong> (all of them on a tie); the others stay plain.
struct Table {
  std::string id;  // HTML id ("" = none)
  std::vector<TableColumn> columns;
  std::vector<std::vector<TableCell>> rows;
  std::vector<bool> competes;  // per row; empty = every row competes (a reference row, e.g. the teacher, does not)
};
std::string html_table(const Table&);

// Answers to the same prompts side by side: one row per prompt, one column per model. A mark per
// answer (1 right, 0 wrong, -1 none) shows ✓ / ✗ and colours the cell.
struct SideBySide {
  std::string id;
  std::vector<std::string> columns;  // model names
  bool with_expected = false;        // a column "expected" after the prompt
  struct Row {
    std::string prompt, expected;
    std::vector<std::string> answers;
    std::vector<int> marks;  // empty = no marks
  };
  std::vector<Row> rows;
};
std::string html_side_by_side(const SideBySide&);

struct ReportSection {
  std::string heading;
  std::string html;     // already escaped
  bool folded = false;  // <details><summary>heading</summary>…</details>
};

// The whole page (one <style>, no scripts, fonts or fetched resources); written atomically.
std::string html_page(const std::string& title, const std::vector<ReportSection>& sections);
void write_html_page(const std::string& path, const std::string& title, const std::vector<ReportSection>& sections);

}  // namespace retort
