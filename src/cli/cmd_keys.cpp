// `retort keys`: create, list, update and revoke API keys, read the usage ledger and export the served texts
// (record_completions), in the serve database `retort serve` uses (--db, default $RETORT_HOME/serve.db).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "cli/common.h"
#include "retort/serve/accounts.h"
#include "retort/serve/ledger.h"
#include "retort/serve/serve_db.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

namespace retort::cli {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

constexpr const char* kDbEnv = "RETORT_SERVE_DB";

void add_db_option(CLI::App& sub, std::string& db) {
  sub.add_option("--db", db, "serve database (SQLite); default $RETORT_HOME/serve.db")->envname(kDbEnv);
}

std::string db_path(const std::string& db) { return db.empty() ? default_serve_db_path() : db; }

// For commands that only read or change existing keys: a missing file is a mistake, not a new database.
std::unique_ptr<AccountStore> open_existing(const std::string& db) {
  const std::string path = db_path(db);
  std::error_code ec;
  check(std::filesystem::exists(path, ec), "serve db ", path,
        " does not exist; create a key first with `retort keys create --account NAME` (or pass --db FILE)");
  return AccountStore::open(path);
}

// The policy options shared by create and update. Strings, so that update can tell "not given" apart
// and `--max-top-logprobs none` parses.
struct PolicyArgs {
  std::optional<int64_t> rpm, tpm, tokens_per_day;
  std::string max_top_logprobs;  // K, "none" (refuse) or, for update, "default" (no per-key cap)
  std::string round_logprobs;    // DIGITS or "off"
  std::string watermark;         // on | off
};

void add_policy_options(CLI::App& sub, PolicyArgs& a, bool update) {
  sub.add_option("--rpm", a.rpm, "requests per minute (0 = unlimited)");
  sub.add_option("--tpm", a.tpm, "tokens (prompt + completion) per minute (0 = unlimited)");
  sub.add_option("--tokens-per-day", a.tokens_per_day, "tokens per UTC day (0 = unlimited)");
  sub.add_option("--max-top-logprobs", a.max_top_logprobs,
                 update ? "cap on top_logprobs: K, `none` to refuse logprobs, `default` for the server's setting"
                        : "cap on top_logprobs: K, or `none` to refuse logprobs (absent: the server's setting)");
  sub.add_option("--round-logprobs", a.round_logprobs,
                 "serve logprobs rounded to DIGITS decimals (0-15), or `off`");
  sub.add_option("--watermark", a.watermark, "watermark the text served to this key (default on)")
      ->check(CLI::IsMember({"on", "off"}));
}

// Applies the options given in `a` over `p`.
void apply_policy_args(const PolicyArgs& a, KeyPolicy& p) {
  if (a.rpm) p.rpm = *a.rpm;
  if (a.tpm) p.tpm = *a.tpm;
  if (a.tokens_per_day) p.tokens_per_day = *a.tokens_per_day;
  if (!a.max_top_logprobs.empty()) {
    if (a.max_top_logprobs == "none") {
      p.logprobs_refused = true;
      p.max_top_logprobs.reset();
    } else if (a.max_top_logprobs == "default") {
      p.logprobs_refused = false;
      p.max_top_logprobs.reset();
    } else {
      int k = -1;
      size_t used = 0;
      try {
        k = std::stoi(a.max_top_logprobs, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      check(used == a.max_top_logprobs.size() && k >= 0, "--max-top-logprobs \"", a.max_top_logprobs,
            "\": give a number >= 0, or `none` to refuse logprobs");
      p.logprobs_refused = false;
      p.max_top_logprobs = k;
    }
  }
  if (!a.round_logprobs.empty()) {
    if (a.round_logprobs == "off") {
      p.round_logprobs_digits = -1;
    } else {
      int d = -1;
      size_t used = 0;
      try {
        d = std::stoi(a.round_logprobs, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      check(used == a.round_logprobs.size() && d >= 0 && d <= 15, "--round-logprobs \"", a.round_logprobs,
            "\": give 0-15 decimals, or `off`");
      p.round_logprobs_digits = d;
    }
  }
  if (!a.watermark.empty()) p.watermark = a.watermark == "on";
}

ordered_json policy_json(const KeyPolicy& p) {
  ordered_json j;
  j["rpm"] = p.rpm;
  j["tpm"] = p.tpm;
  j["tokens_per_day"] = p.tokens_per_day;
  j["logprobs"] = p.logprobs_refused ? "refused" : "allowed";
  j["max_top_logprobs"] = p.max_top_logprobs ? json(*p.max_top_logprobs) : json(nullptr);
  j["round_logprobs_digits"] = p.round_logprobs_digits >= 0 ? json(p.round_logprobs_digits) : json(nullptr);
  j["watermark"] = p.watermark;
  j["admin"] = p.admin;
  return j;
}

ordered_json key_json(const KeyRecord& k) {
  ordered_json j;
  j["key_id"] = k.key_id;
  j["account"] = k.account;
  j["created"] = iso8601_utc(k.created_unix_ms);
  j["revoked"] = k.revoked_unix_ms ? json(iso8601_utc(*k.revoked_unix_ms)) : json(nullptr);
  j["policy"] = policy_json(k.policy);
  return j;
}

// Whole seconds, for tables.
std::string time_text(int64_t unix_ms) { return iso8601_utc(unix_ms - ((unix_ms % 1000) + 1000) % 1000); }

std::string limit_text(int64_t v) { return v > 0 ? std::to_string(v) : "-"; }

std::string logprobs_text(const KeyPolicy& p) {
  std::string s = p.logprobs_refused ? "refused" : p.max_top_logprobs ? cat("top<=", *p.max_top_logprobs) : "server";
  if (!p.logprobs_refused && p.round_logprobs_digits >= 0) s += cat(",round", p.round_logprobs_digits);
  return s;
}

void print_key_table(const std::vector<KeyRecord>& keys) {
  std::printf("%-12s  %-20s  %-20s  %-20s  %8s  %8s  %10s  %-16s  %-9s  %s\n", "KEY ID", "ACCOUNT", "CREATED",
              "REVOKED", "RPM", "TPM", "TOKENS/DAY", "LOGPROBS", "WATERMARK", "ADMIN");
  for (const KeyRecord& k : keys)
    std::printf("%-12s  %-20s  %-20s  %-20s  %8s  %8s  %10s  %-16s  %-9s  %s\n", k.key_id.c_str(), k.account.c_str(),
                time_text(k.created_unix_ms).c_str(), k.revoked_unix_ms ? time_text(*k.revoked_unix_ms).c_str() : "-", limit_text(k.policy.rpm).c_str(),
                limit_text(k.policy.tpm).c_str(), limit_text(k.policy.tokens_per_day).c_str(),
                logprobs_text(k.policy).c_str(), k.policy.watermark ? "on" : "off", k.policy.admin ? "yes" : "no");
}

// ---------------------------------------------------------------------------------------------
// create / list / update / revoke

struct CreateArgs {
  std::string db, account;
  PolicyArgs policy;
  bool admin = false, json_out = false;
};

void run_create(const CreateArgs& a) {
  KeyPolicy p;
  apply_policy_args(a.policy, p);
  p.admin = a.admin;
  auto store = AccountStore::open(db_path(a.db));
  NewKey k = store->create_key(a.account, p);
  if (a.json_out) {
    ordered_json j = key_json(k.record);
    j["api_key"] = k.api_key;
    j["db"] = store->path();
    std::cout << j.dump(2) << "\n";
    return;
  }
  // The key alone on stdout (KEY=$(retort keys create ...)); the rest on stderr.
  std::cout << k.api_key << std::endl;
  std::fprintf(stderr,
               "created key %s for account %s in %s\n"
               "This is the only time the key is shown: store it now (the database keeps only a salted hash).\n",
               k.record.key_id.c_str(), k.record.account.c_str(), store->path().c_str());
}

struct ListArgs {
  std::string db, account;
  bool json_out = false;
};

void run_list(const ListArgs& a) {
  auto store = open_existing(a.db);
  auto keys = store->list(a.account);
  if (a.json_out) {
    ordered_json arr = ordered_json::array();
    for (const auto& k : keys) arr.push_back(key_json(k));
    std::cout << ordered_json{{"db", store->path()}, {"keys", arr}}.dump(2) << "\n";
    return;
  }
  if (keys.empty()) {
    std::printf("no keys%s in %s; create one with `retort keys create --account NAME`\n",
                a.account.empty() ? "" : cat(" for account ", a.account).c_str(), store->path().c_str());
    return;
  }
  print_key_table(keys);
}

struct RevokeArgs {
  std::string db, key_id;
  bool json_out = false;
};

void run_revoke(const RevokeArgs& a) {
  auto store = open_existing(a.db);
  const auto before = store->find(a.key_id);
  const bool already = before && before->revoked();
  KeyRecord k = store->revoke(a.key_id);
  if (a.json_out) {
    ordered_json j = key_json(k);
    j["already_revoked"] = already;
    std::cout << j.dump(2) << "\n";
    return;
  }
  if (already)
    std::printf("key %s (account %s) was already revoked at %s\n", k.key_id.c_str(), k.account.c_str(),
                iso8601_utc(*k.revoked_unix_ms).c_str());
  else
    std::printf("revoked key %s (account %s); a running server refuses it within %lld s\n", k.key_id.c_str(),
                k.account.c_str(), static_cast<long long>(AccountStore::kDefaultRefreshInterval.count() / 1000));
}

struct UpdateArgs {
  std::string db, key_id, admin;
  PolicyArgs policy;
  bool json_out = false;
};

void run_update(const UpdateArgs& a) {
  auto store = open_existing(a.db);
  auto k = store->find(a.key_id);
  check(k.has_value(), "no key ", a.key_id, " in ", store->path(), "; `retort keys list --db ", store->path(),
        "` shows the key ids");
  KeyPolicy p = k->policy;
  apply_policy_args(a.policy, p);
  if (!a.admin.empty()) p.admin = a.admin == "on";
  KeyRecord updated = store->update_policy(k->key_id, p);
  if (a.json_out) {
    std::cout << key_json(updated).dump(2) << "\n";
    return;
  }
  print_key_table({updated});
}

// ---------------------------------------------------------------------------------------------
// usage

struct UsageArgs {
  std::string db, account, key_id, since, until;
  bool json_out = false;
};

ordered_json totals_json(const UsageTotals& t) {
  ordered_json by_status = ordered_json::object();
  for (const auto& [status, n] : t.by_status) by_status[std::to_string(status)] = n;
  return ordered_json{{"requests", t.requests},
                      {"prompt_tokens", t.prompt_tokens},
                      {"completion_tokens", t.completion_tokens},
                      {"logprobs_requests", t.logprobs_requests},
                      {"by_status", by_status}};
}

std::string status_text(const UsageTotals& t) {
  std::string s;
  for (const auto& [status, n] : t.by_status) s += cat(s.empty() ? "" : " ", status, ":", n);
  return s;
}

void print_totals_row(const std::string& name, const UsageTotals& t) {
  std::printf("  %-24s  %10lld  %12lld  %12lld  %8lld  %s\n", name.c_str(), static_cast<long long>(t.requests),
              static_cast<long long>(t.prompt_tokens), static_cast<long long>(t.completion_tokens),
              static_cast<long long>(t.logprobs_requests), status_text(t).c_str());
}

void run_usage(const UsageArgs& a) {
  auto store = open_existing(a.db);
  UsageQuery q;
  q.account = a.account;
  if (!a.key_id.empty()) {
    auto k = store->find(a.key_id);
    // A key id that is no longer in the keys table may still have ledger rows: query it anyway.
    q.key_id = k ? k->key_id : a.key_id;
  }
  if (!a.since.empty()) q.since_unix_ms = parse_iso8601_utc(a.since, "--since");
  if (!a.until.empty()) q.until_unix_ms = parse_iso8601_utc(a.until, "--until");
  const UsageReport r = store->usage(q);

  if (a.json_out) {
    ordered_json j;
    j["db"] = store->path();
    j["account"] = a.account.empty() ? json(nullptr) : json(a.account);
    j["key_id"] = q.key_id.empty() ? json(nullptr) : json(q.key_id);
    j["since"] = q.since_unix_ms ? json(iso8601_utc(*q.since_unix_ms)) : json(nullptr);
    j["until"] = q.until_unix_ms ? json(iso8601_utc(*q.until_unix_ms)) : json(nullptr);
    j["total"] = totals_json(r.total);
    ordered_json by_account = ordered_json::array(), by_key = ordered_json::array(), by_day = ordered_json::array();
    for (const auto& [account, t] : r.by_account) {
      ordered_json e{{"account", account}};
      e.update(totals_json(t));
      by_account.push_back(e);
    }
    for (const auto& [key_id, t] : r.by_key) {
      ordered_json e{{"key_id", key_id}, {"account", r.key_account.at(key_id)}};
      e.update(totals_json(t));
      by_key.push_back(e);
    }
    for (const auto& [day, t] : r.by_day) {
      ordered_json e{{"day", day}};
      e.update(totals_json(t));
      by_day.push_back(e);
    }
    j["by_account"] = by_account;
    j["by_key"] = by_key;
    j["by_day"] = by_day;
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::printf("ledger %s%s%s: %lld requests\n", store->path().c_str(),
              q.since_unix_ms ? cat(" since ", iso8601_utc(*q.since_unix_ms)).c_str() : "",
              q.until_unix_ms ? cat(" until ", iso8601_utc(*q.until_unix_ms)).c_str() : "",
              static_cast<long long>(r.total.requests));
  if (r.total.requests == 0) return;
  auto header = [](const char* what) {
    std::printf("\n  %-24s  %10s  %12s  %12s  %8s  %s\n", what, "REQUESTS", "PROMPT TOK", "COMPL TOK", "LOGPROBS",
                "BY STATUS");
  };
  header("ACCOUNT");
  for (const auto& [account, t] : r.by_account) print_totals_row(account.empty() ? "(none)" : account, t);
  header("KEY");
  for (const auto& [key_id, t] : r.by_key)
    print_totals_row(key_id.empty() ? "(none)" : cat(key_id, " ", r.key_account.at(key_id)), t);
  header("DAY (UTC)");
  for (const auto& [day, t] : r.by_day) print_totals_row(day, t);
  print_totals_row("total", r.total);
}

// ---------------------------------------------------------------------------------------------
// served: the texts a server with record_completions kept, as the JSONL `retort audit radioactivity --texts`
// reads ("completion", and "messages" or "prompt").

struct ServedArgs {
  std::string db, accounts_file, out;
  std::vector<std::string> accounts;
};

void run_served(const ServedArgs& a) {
  std::vector<std::string> accounts = a.accounts;
  if (!a.accounts_file.empty()) {
    std::ifstream f(a.accounts_file);
    check(bool(f), "keys served: cannot read ", a.accounts_file, " (one account name per line)");
    for (std::string line; std::getline(f, line);) {
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.pop_back();
      const size_t start = line.find_first_not_of(" \t");
      if (start != std::string::npos && line[start] != '#') accounts.push_back(line.substr(start));
    }
    check(!accounts.empty(), "keys served: ", a.accounts_file, " names no account (one per line)");
  }
  const std::string path = db_path(a.db);
  std::error_code ec;
  check(std::filesystem::exists(path, ec), "serve db ", path, " does not exist; pass --db with the database "
        "`retort serve --record-completions` wrote");
  auto db = ServeDb::open(path);
  const std::map<std::string, int64_t> counts = count_served_texts(*db);
  check(!counts.empty(), "serve db ", path, " holds no served texts: they are recorded only while `retort serve` "
        "runs with record_completions (\"record_completions\": true in its config, or --record-completions)");
  if (!accounts.empty()) {
    std::string have;
    for (const auto& [account, n] : counts) have += cat(have.empty() ? "" : ", ", account.empty() ? "(none)" : account);
    bool any = false;
    for (const std::string& account : accounts) {
      if (counts.count(account)) any = true;
      else std::fprintf(stderr, "keys served: account %s has no served texts in %s\n", account.c_str(), path.c_str());
    }
    check(any, "keys served: none of the accounts asked for has served texts in ", path,
          "; accounts with texts: ", have);
  }

  // Line by line into a file published whole at the end (an error leaves no half export), or to stdout.
  std::optional<AtomicFile> file;
  if (!a.out.empty()) file.emplace(a.out, cat("keys served ", a.out));
  std::string line;
  int64_t lines = 0;
  std::map<std::string, int64_t> per_account;
  for_each_served_text(*db, accounts, [&](const ServedTextRecord& r) {
    ordered_json prompt;  // the messages' keys stay in the order stored
    try {
      prompt = ordered_json::parse(r.prompt);
    } catch (const json::exception& e) {
      fail("serve db ", path, ": served_texts row ", r.request_id, " choice ", r.choice, ": the prompt is not JSON (",
           e.what(), ")");
    }
    ordered_json j;
    j["request_id"] = r.request_id;
    j["choice"] = r.choice;
    j["account"] = r.account;
    j["unix_ms"] = r.unix_ms;
    if (prompt.is_array()) j["messages"] = prompt;
    else if (prompt.is_string()) j["prompt"] = prompt;
    else fail("serve db ", path, ": served_texts row ", r.request_id, " choice ", r.choice,
              ": the prompt is neither a messages array nor a string");
    j["completion"] = r.completion;
    line = j.dump(-1, ' ', false, ordered_json::error_handler_t::replace);
    line += '\n';
    if (file) file->write(line.data(), line.size());
    else std::fwrite(line.data(), 1, line.size(), stdout);
    ++lines;
    ++per_account[r.account];
  });
  if (file) file->commit();
  else check(std::fflush(stdout) == 0, "keys served: cannot write to stdout");
  std::fprintf(stderr, "keys served: %lld texts of %zu account%s from %s%s\n", static_cast<long long>(lines),
               per_account.size(), per_account.size() == 1 ? "" : "s", path.c_str(),
               a.out.empty() ? "" : cat(" written to ", a.out).c_str());
}

}  // namespace

void register_keys(CLI::App& app) {
  CLI::App* keys = app.add_subcommand("keys", "API keys, their quotas and policies, and the usage ledger (serve db)");
  keys->require_subcommand(1);

  auto c = std::make_shared<CreateArgs>();
  CLI::App* create = keys->add_subcommand("create", "create an API key for an account (prints the key once)");
  add_db_option(*create, c->db);
  create->add_option("--account", c->account, "account the key belongs to (letters, digits, . _ - @ + :)")
      ->required();
  add_policy_options(*create, c->policy, /*update=*/false);
  create->add_flag("--admin", c->admin, "allow admin endpoints (POST /v1/watermark/detect)");
  create->add_flag("--json", c->json_out, "JSON output (includes the key)");
  create->callback([c] { run_create(*c); });

  auto l = std::make_shared<ListArgs>();
  CLI::App* list = keys->add_subcommand("list", "list keys with their policies (never their secrets)");
  add_db_option(*list, l->db);
  list->add_option("--account", l->account, "only this account's keys");
  list->add_flag("--json", l->json_out, "JSON output");
  list->callback([l] { run_list(*l); });

  auto r = std::make_shared<RevokeArgs>();
  CLI::App* revoke = keys->add_subcommand("revoke", "revoke a key (a running server refuses it within 2 s)");
  add_db_option(*revoke, r->db);
  revoke->add_option("key_id", r->key_id, "the key id (12 hex digits, as `keys list` shows) or the whole key")
      ->required();
  revoke->add_flag("--json", r->json_out, "JSON output");
  revoke->callback([r] { run_revoke(*r); });

  auto u = std::make_shared<UpdateArgs>();
  CLI::App* update = keys->add_subcommand("update", "change a key's limits and policy (the options given only)");
  add_db_option(*update, u->db);
  update->add_option("key_id", u->key_id, "the key id (12 hex digits) or the whole key")->required();
  add_policy_options(*update, u->policy, /*update=*/true);
  update->add_option("--admin", u->admin, "allow admin endpoints")->check(CLI::IsMember({"on", "off"}));
  update->add_flag("--json", u->json_out, "JSON output");
  update->callback([u] { run_update(*u); });

  auto g = std::make_shared<UsageArgs>();
  CLI::App* usage = keys->add_subcommand("usage", "requests and tokens from the ledger, by account, key and day");
  add_db_option(*usage, g->db);
  usage->add_option("--account", g->account, "only this account");
  usage->add_option("--key", g->key_id, "only this key id");
  usage->add_option("--since", g->since, "only requests started at or after this UTC date/time (YYYY-MM-DD[THH:MM:SS])");
  usage->add_option("--until", g->until, "only requests started before this UTC date/time");
  usage->add_flag("--json", g->json_out, "JSON output");
  usage->callback([g] { run_usage(*g); });

  auto sv = std::make_shared<ServedArgs>();
  CLI::App* served = keys->add_subcommand(
      "served", "export the texts a server with record_completions served, as JSONL for `audit radioactivity --texts`");
  add_db_option(*served, sv->db);
  served->add_option("--account", sv->accounts, "only this account's texts (repeatable, or comma-separated)")
      ->delimiter(',');
  served->add_option("--accounts-file", sv->accounts_file, "only these accounts' texts (one per line)");
  served->add_option("-o,--out", sv->out, "JSONL file to write (atomically); default stdout");
  served->callback([sv] { run_served(*sv); });
}

}  // namespace retort::cli
