// `retort monitor`: calibrate the crawl monitor on benign history, and report what it found.
//   retort monitor calibrate --db serve.db --accounts-file benign.txt --out calibration.json
//   retort monitor report --db serve.db [--html report.html] [--json]
//   retort monitor rescore --db serve.db --calibration calibration.json [--json]
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/common.h"
#include "retort/protect/crawl_monitor.h"
#include "retort/serve/monitor_db.h"
#include "retort/serve/serve_db.h"
#include "retort/util/error.h"
#include "retort/util/html_report.h"

namespace retort::cli {

namespace {

using nlohmann::json;

std::unique_ptr<ServeDb> open_existing_db(const std::string& db) {
  const std::string path = db.empty() ? default_serve_db_path() : db;
  std::error_code ec;
  check(std::filesystem::exists(path, ec), "serve db ", path,
        " does not exist; the monitor's records are in the database `retort serve` ran with (pass --db FILE)");
  return ServeDb::open(path);
}

struct CalibrateArgs {
  std::string db, accounts_file, out, model;
  std::vector<std::string> accounts;
  CalibrateOptions o;
};

void run_calibrate(const CalibrateArgs& a) {
  std::vector<std::string> accounts = a.accounts;
  if (!a.accounts_file.empty()) {
    std::ifstream f(a.accounts_file);
    check(bool(f), "monitor calibrate: cannot read ", a.accounts_file, " (one benign account name per line)");
    for (std::string line; std::getline(f, line);) {
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
      if (!line.empty() && line[0] != '#') accounts.push_back(line);
    }
  }
  check(!accounts.empty(), "monitor calibrate: name the benign accounts to calibrate on (--accounts A,B,... or "
        "--accounts-file FILE): only traffic known to be benign may set the thresholds");
  auto db = open_existing_db(a.db);
  auto events = read_monitor_events(*db, accounts);
  for (const auto& name : accounts)
    if (!events.count(name))
      std::fprintf(stderr, "monitor calibrate: account %s has no monitored requests in %s\n", name.c_str(),
                   db->path().c_str());
  CalibrateOptions o = a.o;
  o.model = a.model;
  MonitorCalibration cal = calibrate_monitor(events, o);
  cal.save(a.out);
  std::printf("calibrated on %d benign accounts, %d requests (%d windows); pool %zu embeddings of %lld values\n",
              cal.benign_accounts, cal.benign_requests, cal.benign_windows, cal.pool.size(),
              static_cast<long long>(cal.n_embd));
  std::printf("thresholds (benign max × %.2f) by requests seen: [%d, %d) | [%d, %d) | %d+\n", cal.margin,
              cal.min_requests, 2 * cal.min_requests, 2 * cal.min_requests, 4 * cal.min_requests, 4 * cal.min_requests);
  for (const auto& [test, thr] : cal.threshold) {
    std::printf("  %-12s", test.c_str());
    for (double t : thr) std::printf(" %12.5g", t);
    std::printf("\n");
  }
  std::printf("timing links: runs test z >= %.2f (largest between two benign accounts: %.2f)\n", cal.link_lockstep_z,
              cal.benign_lockstep_z);
  std::printf("group timing links: turn-taking p <= %.1e (smallest for any group of benign accounts: %.1e)\n",
              cal.link_turn_taking_p, cal.benign_turn_taking_p);
  std::printf("wrote %s\n", a.out.c_str());
}

struct ReportArgs {
  std::string db, html;
  bool json_out = false;
  bool all = false;
};

std::string reasons_text(const json& v) {
  std::string r;
  for (const auto& x : v.value("reasons", json::array())) {
    if (!r.empty()) r += "; ";
    r += x.value("text", "");
  }
  return r;
}

void print_verdict_table(const std::vector<json>& verdicts, bool all) {
  std::printf("%-28s %8s %7s %8s %9s  %s\n", "account / cluster", "requests", "score", "flagged", "at request",
              "reasons");
  int shown = 0;
  for (const auto& v : verdicts) {
    if (!all && !v.value("flagged", false) && shown >= 20) continue;
    ++shown;
    std::string subject = v.value("subject", "");
    if (v.value("cluster", false)) subject += " (" + std::to_string(v["members"].size()) + ")";
    std::printf("%-28s %8lld %7.2f %8s %9lld  %s\n", subject.c_str(),
                static_cast<long long>(v.value("requests", int64_t(0))), v.value("score", 0.0),
                v.value("flagged", false) ? "yes" : "no", static_cast<long long>(v.value("flagged_at_request", int64_t(-1))),
                reasons_text(v).c_str());
  }
}

void run_report(const ReportArgs& a) {
  auto db = open_existing_db(a.db);
  const auto verdicts = read_monitor_verdicts(*db);
  const auto actions = read_monitor_actions(*db);
  if (a.json_out) {
    json acts = json::array();
    for (const auto& x : actions)
      acts.push_back({{"unix_ms", x.unix_ms}, {"time", iso8601_utc(x.unix_ms)}, {"subject", x.subject},
                      {"members", x.members}, {"actions", x.actions}, {"score", x.score}, {"requests", x.requests},
                      {"reasons", x.reasons}});
    std::printf("%s\n", json{{"verdicts", verdicts}, {"actions", acts}}.dump(2).c_str());
  } else {
    print_verdict_table(verdicts, a.all);
    std::printf("\n%zu decisions recorded\n", actions.size());
    for (const auto& x : actions) {
      std::string acts;
      for (const auto& s : x.actions) acts += (acts.empty() ? "" : ",") + s;
      std::printf("  %s  %-24s %-20s score %.2f after %lld requests\n", iso8601_utc(x.unix_ms).c_str(),
                  x.subject.c_str(), acts.c_str(), x.score, static_cast<long long>(x.requests));
    }
  }
  if (!a.html.empty()) {
    json rows = json::array();
    for (const auto& v : verdicts)
      rows.push_back({{"account / cluster", v.value("subject", "")},
                      {"members", v.value("cluster", false) ? std::to_string(v["members"].size()) : std::string("1")},
                      {"requests", v.value("requests", int64_t(0))},
                      {"score", v.value("score", 0.0)},
                      {"flagged", v.value("flagged", false) ? "yes" : "no"},
                      {"flagged at request", v.value("flagged_at_request", int64_t(-1))},
                      {"reasons", reasons_text(v)}});
    std::string decisions = "<table><tr><th>time</th><th>subject</th><th>members</th><th>actions</th><th>score</th>"
                            "<th>requests</th><th>reasons</th></tr>";
    for (const auto& x : actions) {
      std::string members, acts, why;
      for (const auto& s : x.members) members += html_escape(s) + " ";
      for (const auto& s : x.actions) acts += html_escape(s) + " ";
      for (const auto& r : x.reasons) why += html_escape(r.value("text", "")) + "<br>";
      char score[32];
      std::snprintf(score, sizeof(score), "%.2f", x.score);
      decisions += "<tr><td>" + html_escape(iso8601_utc(x.unix_ms)) + "</td><td>" + html_escape(x.subject) + "</td><td>" +
                   members + "</td><td>" + acts + "</td><td>" + score + "</td><td>" + std::to_string(x.requests) +
                   "</td><td>" + why + "</td></tr>";
    }
    decisions += "</table>";
    std::string details;
    for (const auto& v : verdicts) {
      details += "<h3>" + html_escape(v.value("subject", "")) + "</h3><pre>" + html_escape(v.dump(2)) + "</pre>";
    }
    write_html_report(a.html, "retort crawl monitor — " + db->path(), rows, {},
                      {{"Decisions (" + std::to_string(actions.size()) + ")", decisions},
                       {"Every verdict with its statistics", details}});
    std::printf("wrote %s\n", a.html.c_str());
  }
}

struct RescoreArgs {
  std::string db, calibration;
  bool json_out = false, all = false;
};

// Every recorded request of every account, in time order, through a fresh monitor with the given
// calibration: what it would have found in that traffic (nothing is written; no action is taken).
void run_rescore(const RescoreArgs& a) {
  MonitorCalibration cal = MonitorCalibration::load(a.calibration);
  auto db = open_existing_db(a.db);
  std::vector<MonitorEvent> stream;
  for (auto& [name, events] : read_monitor_events(*db, {}))
    for (auto& e : events) stream.push_back(std::move(e));
  std::stable_sort(stream.begin(), stream.end(), [](const auto& x, const auto& y) { return x.unix_ms < y.unix_ms; });
  CrawlMonitor m(cal);
  for (const auto& e : stream) m.observe(e);
  m.update_clusters();
  std::vector<json> verdicts;
  for (const auto& v : m.verdicts()) verdicts.push_back(v.to_json());
  std::stable_sort(verdicts.begin(), verdicts.end(),
                   [](const json& x, const json& y) { return x.value("max_score", 0.0) > y.value("max_score", 0.0); });
  if (a.json_out) {
    std::printf("%s\n", json{{"requests", stream.size()}, {"verdicts", verdicts}}.dump(2).c_str());
    return;
  }
  std::printf("%zu recorded requests rescored with %s\n", stream.size(), a.calibration.c_str());
  print_verdict_table(verdicts, a.all);
}

}  // namespace

void register_monitor(CLI::App& app) {
  auto* mon = app.add_subcommand("monitor", "the crawl monitor of `retort serve`: calibrate it, read its findings");
  mon->require_subcommand(1);

  auto c = std::make_shared<CalibrateArgs>();
  auto* cal = mon->add_subcommand("calibrate", "set the monitor's thresholds from benign accounts' recorded traffic");
  cal->add_option("--db", c->db, "serve database the traffic was recorded in (default $RETORT_HOME/serve.db)")
      ->envname("RETORT_SERVE_DB");
  cal->add_option("--accounts", c->accounts, "benign accounts, comma-separated")->delimiter(',');
  cal->add_option("--accounts-file", c->accounts_file, "benign accounts, one per line");
  cal->add_option("-o,--out", c->out, "calibration file to write (JSON)")->required();
  cal->add_option("--window", c->o.window, "requests per account the statistics look at")->capture_default_str();
  cal->add_option("--min-requests", c->o.min_requests, "requests before a test speaks")->capture_default_str();
  cal->add_option("--margin", c->o.margin, "thresholds = benign extreme × margin")->capture_default_str();
  cal->add_option("--pool-size", c->o.pool_size, "benign embeddings kept as the MMD reference")->capture_default_str();
  cal->add_option("--model-name", c->model, "the served model's name, recorded in the file");
  cal->callback([c] { run_calibrate(*c); });

  auto r = std::make_shared<ReportArgs>();
  auto* rep = mon->add_subcommand("report", "accounts and clusters by score, with reasons and every decision taken");
  rep->add_option("--db", r->db, "serve database (default $RETORT_HOME/serve.db)")->envname("RETORT_SERVE_DB");
  rep->add_option("--html", r->html, "also write an HTML report");
  rep->add_flag("--json", r->json_out, "print JSON instead of the table");
  rep->add_flag("--all", r->all, "list every account (default: flagged ones and the top 20)");
  rep->callback([r] { run_report(*r); });

  auto s = std::make_shared<RescoreArgs>();
  auto* res = mon->add_subcommand("rescore", "what a calibration would have found in recorded traffic (replays every "
                                             "monitored request through a fresh monitor; writes nothing)");
  res->add_option("--db", s->db, "serve database (default $RETORT_HOME/serve.db)")->envname("RETORT_SERVE_DB");
  res->add_option("--calibration", s->calibration, "calibration file (JSON, from `retort monitor calibrate`)")
      ->required();
  res->add_flag("--json", s->json_out, "print JSON instead of the table");
  res->add_flag("--all", s->all, "list every account (default: flagged ones and the top 20)");
  res->callback([s] { run_rescore(*s); });
}

}  // namespace retort::cli
