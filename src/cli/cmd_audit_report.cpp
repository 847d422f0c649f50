// `retort audit report`: the case file — one self-contained HTML page and the same content as JSON,
// built only from the results that `audit radioactivity --out` and `audit provenance --out` wrote.
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "retort/audit/case_file.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

namespace retort::cli {

namespace {

using OJson = nlohmann::ordered_json;

struct ReportArgs {
  std::vector<std::string> suspect, controls, provenance;
  std::string title, suspect_name, out;
  bool json_out = false;
};

OJson read_result(const std::string& path) {
  const std::string text = read_file(path);
  try {
    return OJson::parse(text);
  } catch (const std::exception& e) {
    throw Error(cat(path, ": not JSON (", e.what(), "); give the file that `retort audit ... --out` wrote"));
  }
}

std::string utc_now() {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return b;
}

void run_report(const ReportArgs& a) {
  CaseInputs in;
  in.title = a.title;
  in.suspect_name = a.suspect_name;
  in.created = utc_now();
  for (const auto& p : a.suspect) in.suspect.push_back(read_result(p)), in.sources.push_back("suspect: " + p);
  for (const auto& p : a.controls) in.controls.push_back(read_result(p)), in.sources.push_back("control: " + p);
  for (const auto& p : a.provenance) in.provenance.push_back(read_result(p)), in.sources.push_back("provenance: " + p);
  const OJson c = build_case(in);

  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(a.out, ec);
  check(!ec && fs::is_directory(a.out), "--out ", a.out, ": cannot create the directory (", ec.message(), ")");
  const std::string html = (fs::path(a.out) / "case.html").string(), js = (fs::path(a.out) / "case.json").string();
  write_file_atomic(js, c.dump(2, ' ', false, OJson::error_handler_t::replace) + "\n");
  write_file_atomic(html, case_html(c));
  if (a.json_out) {
    std::printf("%s\n", c.dump(2, ' ', false, OJson::error_handler_t::replace).c_str());
    return;
  }
  std::printf("%s\n\nverdict (%s): %s\n", c["title"].get<std::string>().c_str(),
              c["verdict"]["finding"].get<std::string>().c_str(), c["verdict"]["paragraph"].get<std::string>().c_str());
  for (const auto& cv : c["verdict"]["caveats"]) std::printf("  - %s\n", cv.get<std::string>().c_str());
  std::printf("wrote %s\nwrote %s\n", html.c_str(), js.c_str());
}

}  // namespace

void register_audit_report(CLI::App* audit) {
  auto a = std::make_shared<ReportArgs>();
  CLI::App* rp = audit->add_subcommand(
      "report",
      "the case file: a self-contained HTML page (case.html) and the same content as JSON (case.json) from the "
      "results of `audit radioactivity --out` and `audit provenance --out`: verdict in plain words with caveats, "
      "p-values and counts, null calibration on control models, provenance table, highlighted samples, settings");
  rp->add_option("--suspect-result", a->suspect, "radioactivity result(s) on the suspect (open and/or closed test)")
      ->delimiter(',');
  rp->add_option("--control-result", a->controls,
                 "radioactivity result(s) on control models that never saw our watermark (the null calibration)")
      ->delimiter(',');
  rp->add_option("--provenance", a->provenance, "provenance result(s)")->delimiter(',');
  rp->add_option("--title", a->title, "page title (default \"Case file: <suspect>\")");
  rp->add_option("--suspect-name", a->suspect_name, "how the page names the suspect (default: from the results)");
  rp->add_option("-o,--out", a->out, "directory for case.html and case.json (written atomically)")->required();
  rp->add_flag("--json", a->json_out, "print the case JSON");
  rp->callback([a] { run_report(*a); });
}

}  // namespace retort::cli
