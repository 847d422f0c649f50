// retort/serve/monitor_db.h — the crawl monitor's records in the serve database (schema in serve_db.h).
//
//   monitor_events   every monitored request (the MonitorEvent as JSON, its embedding as float32 LE):
//                    the history `retort monitor calibrate` draws benign traffic from;
//   monitor_actions  every decision the monitor took (flag, throttle, cap_logprobs, antidistill, block)
//                    with its subject, members, score and reasons;
//   monitor_verdicts the latest verdict of every account and cluster (`retort monitor report`).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "retort/protect/crawl_monitor.h"
#include "retort/serve/serve_db.h"

namespace retort {

nlohmann::json monitor_event_json(const MonitorEvent& e);  // without the embedding
MonitorEvent monitor_event_from_json(const nlohmann::json& j, const std::string& where);

struct MonitorActionRecord {
  int64_t unix_ms = 0;
  std::string subject;
  std::vector<std::string> members;
  std::vector<std::string> actions;
  double score = 0;
  int64_t requests = 0;
  nlohmann::json reasons = nlohmann::json::array();
};

// Writes, each in one transaction (the caller batches).
void write_monitor_events(ServeDb& db, const std::vector<std::pair<std::string, MonitorEvent>>& events);
void write_monitor_action(ServeDb& db, const MonitorActionRecord& a);
void write_monitor_verdicts(ServeDb& db, const std::vector<MonitorVerdict>& verdicts, int64_t now_unix_ms);

// Reads. Events of the accounts named (all when empty), in time order per account.
std::map<std::string, std::vector<MonitorEvent>> read_monitor_events(const ServeDb& db,
                                                                     const std::vector<std::string>& accounts);
std::vector<MonitorActionRecord> read_monitor_actions(const ServeDb& db);
std::vector<nlohmann::json> read_monitor_verdicts(const ServeDb& db);  // highest score first

}  // namespace retort
