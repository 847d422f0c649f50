// retort/serve/monitor_db.cpp — reading and writing the monitor's tables (see monitor_db.h).
#include "retort/serve/monitor_db.h"

#include <algorithm>
#include <cstring>

#include "retort/util/error.h"

namespace retort {

using nlohmann::json;

json monitor_event_json(const MonitorEvent& e) {
  return {{"account", e.account},         {"client_ip", e.client_ip}, {"unix_ms", e.unix_ms},
          {"prompt_text", e.prompt_text}, {"user_turns", e.user_turns}, {"has_history", e.has_history},
          {"n", e.n},                     {"top_logprobs", e.top_logprobs}, {"max_tokens", e.max_tokens},
          {"temperature", e.temperature}, {"system_prompt", e.system_prompt},
          {"seed_given", e.seed_given}};
}

MonitorEvent monitor_event_from_json(const json& j, const std::string& where) {
  MonitorEvent e;
  try {
    e.account = j.at("account").get<std::string>();
    e.client_ip = j.value("client_ip", "");
    e.unix_ms = j.at("unix_ms").get<int64_t>();
    e.prompt_text = j.at("prompt_text").get<std::string>();
    e.user_turns = j.value("user_turns", 1);
    e.has_history = j.value("has_history", false);
    e.n = j.value("n", 1);
    e.top_logprobs = j.value("top_logprobs", -1);
    e.max_tokens = j.value("max_tokens", int64_t(-1));
    e.temperature = j.value("temperature", -1.0);
    e.system_prompt = j.value("system_prompt", "");
    e.seed_given = j.value("seed_given", false);
  } catch (const json::exception& ex) {
    fail(where, ": a monitor event is malformed (", ex.what(), ")");
  }
  return e;
}

void write_monitor_events(ServeDb& db, const std::vector<std::pair<std::string, MonitorEvent>>& events) {
  if (events.empty()) return;
  SqlTransaction tx(db, "write monitor events");
  SqlStatement st(db, "INSERT OR IGNORE INTO monitor_events(request_id, account, unix_ms, event, embedding) "
                      "VALUES(?, ?, ?, ?, ?)");
  for (const auto& [id, e] : events) {
    st.reset();
    st.bind(1, id).bind(2, e.account).bind(3, e.unix_ms).bind(4, monitor_event_json(e).dump());
    if (e.embedding.empty()) st.bind_null(5);
    else st.bind_blob(5, e.embedding.data(), e.embedding.size() * sizeof(float));
    st.step("write a monitor event");
  }
  tx.commit();
}

void write_monitor_action(ServeDb& db, const MonitorActionRecord& a) {
  SqlStatement st(db, "INSERT INTO monitor_actions(unix_ms, subject, members, actions, score, requests, reasons) "
                      "VALUES(?, ?, ?, ?, ?, ?, ?)");
  st.bind(1, a.unix_ms).bind(2, a.subject).bind(3, json(a.members).dump()).bind(4, json(a.actions).dump());
  st.bind(5, json(a.score).dump());  // text; the REAL column converts it
  st.bind(6, a.requests).bind(7, a.reasons.dump());
  st.step("write a monitor action");
}

void write_monitor_verdicts(ServeDb& db, const std::vector<MonitorVerdict>& verdicts, int64_t now_unix_ms) {
  if (verdicts.empty()) return;
  SqlTransaction tx(db, "write monitor verdicts");
  SqlStatement st(db, "INSERT INTO monitor_verdicts(subject, updated_unix_ms, verdict) VALUES(?, ?, ?) "
                      "ON CONFLICT(subject) DO UPDATE SET updated_unix_ms = excluded.updated_unix_ms, "
                      "verdict = excluded.verdict");
  for (const auto& v : verdicts) {
    st.reset();
    st.bind(1, v.subject).bind(2, now_unix_ms).bind(3, v.to_json().dump());
    st.step("write a monitor verdict");
  }
  tx.commit();
}

std::map<std::string, std::vector<MonitorEvent>> read_monitor_events(const ServeDb& db,
                                                                     const std::vector<std::string>& accounts) {
  std::map<std::string, std::vector<MonitorEvent>> out;
  SqlStatement st(db, "SELECT account, event, embedding, request_id FROM monitor_events ORDER BY account, unix_ms, "
                      "request_id");
  while (st.step("read monitor events")) {
    const std::string account = st.text(0);
    if (!accounts.empty() && std::find(accounts.begin(), accounts.end(), account) == accounts.end()) continue;
    json j;
    try {
      j = json::parse(st.text(1));
    } catch (const json::exception& e) {
      fail("serve db ", db.path(), ": monitor event ", st.text(3), " is not valid JSON: ", e.what());
    }
    MonitorEvent e = monitor_event_from_json(j, "serve db " + db.path() + ", monitor event " + st.text(3));
    if (!st.is_null(2)) {
      const std::string b = st.blob(2);
      check(b.size() % sizeof(float) == 0, "serve db ", db.path(), ": monitor event ", st.text(3),
            " has an embedding of ", b.size(), " bytes (not float32)");
      e.embedding.resize(b.size() / sizeof(float));
      std::memcpy(e.embedding.data(), b.data(), b.size());
    }
    out[account].push_back(std::move(e));
  }
  return out;
}

std::vector<MonitorActionRecord> read_monitor_actions(const ServeDb& db) {
  std::vector<MonitorActionRecord> out;
  SqlStatement st(db, "SELECT unix_ms, subject, members, actions, score, requests, reasons FROM monitor_actions "
                      "ORDER BY id");
  while (st.step("read monitor actions")) {
    MonitorActionRecord a;
    a.unix_ms = st.int64(0);
    a.subject = st.text(1);
    try {
      a.members = json::parse(st.text(2)).get<std::vector<std::string>>();
      a.actions = json::parse(st.text(3)).get<std::vector<std::string>>();
      a.score = json::parse(st.text(4)).get<double>();
      a.reasons = json::parse(st.text(6));
    } catch (const json::exception& e) {
      fail("serve db ", db.path(), ": a monitor action of ", a.subject, " is malformed: ", e.what());
    }
    a.requests = st.int64(5);
    out.push_back(std::move(a));
  }
  return out;
}

std::vector<json> read_monitor_verdicts(const ServeDb& db) {
  std::vector<json> out;
  SqlStatement st(db, "SELECT subject, verdict FROM monitor_verdicts");
  while (st.step("read monitor verdicts")) {
    try {
      out.push_back(json::parse(st.text(1)));
    } catch (const json::exception& e) {
      fail("serve db ", db.path(), ": the monitor verdict of ", st.text(0), " is not valid JSON: ", e.what());
    }
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const json& a, const json& b) { return a.value("score", 0.0) > b.value("score", 0.0); });
  return out;
}

}  // namespace retort
