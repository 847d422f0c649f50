// `retort audit`: was a suspect model distilled from ours?
//   audit radioactivity — our watermark's trace in what the suspect predicts (open) or writes (closed).
//   audit provenance (cmd_audit_provenance.cpp), audit report (cmd_audit_report.cpp): added here.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "cli/watermark_options.h"
#include "retort/audit/radioactivity.h"
#include "retort/io/jsonl.h"
#include "retort/model/runtime_model.h"
#include "retort/serve/openai_client.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"
#include "retort/util/stats.h"

namespace retort::cli {

namespace {

using nlohmann::json;
using OJson = nlohmann::ordered_json;

struct RadioactivityArgs {
  std::string suspect, suspect_url, suspect_model, api_key_env;
  std::string mode;                          // "" = open for a local suspect, closed for a URL
  std::string model = "smollm2-135m-instruct";  // the key holder's model: its tokenizer scores
  std::string texts, prompts, seen, field, accounts_file, out;
  WatermarkCliOptions wm;
  int64_t min_tokens = 100;
  double target_p = 1e-5;
  int samples = 1;
  int64_t max_tokens = 256;
  SamplingParams sampling;
  int threads = 0;
  int64_t max_texts = 0;
  int keep_samples = 3;
  bool raw = false;
  bool json_out = false;
};

// A record of our texts or prompts file: a prompt (raw or chat) and, for texts, the watermarked text.
struct Record {
  json id;
  std::string raw;                    // prompt as text ("" when none)
  std::vector<ChatMessage> messages;  // chat prompt (empty when none)
  std::string text;                   // the watermarked text (texts file only)
  std::string account;                // the account it was served to ("account", as `keys served` writes)
};

std::vector<ChatMessage> read_messages(const json& ms, const std::string& where) {
  check(ms.is_array() && !ms.empty(), where, ": \"messages\" must be a non-empty array");
  std::vector<ChatMessage> out;
  for (const auto& m : ms) {
    check(m.is_object() && m.contains("role") && m["role"].is_string() && m.contains("content") &&
              m["content"].is_string(),
          where, ": each message needs string fields \"role\" and \"content\"");
    out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return out;
}

// texts: the watermarked text in `field` (default: "completion", else "text"); prompts: "prompt" or
// "messages" (required for a prompts file, optional for texts).
std::vector<Record> read_records(const std::string& path, bool texts, const std::string& field, int64_t max) {
  std::vector<Record> out;
  for_each_jsonl_object(path, [&](const json& j, int64_t lineno) {
    if (max > 0 && int64_t(out.size()) >= max) return;
    const std::string where = cat(path, ":", lineno);
    Record r;
    r.id = j.contains("id") ? j["id"] : json(lineno);
    if (j.contains("messages")) r.messages = read_messages(j["messages"], where);
    if (j.contains("prompt")) {
      check(j["prompt"].is_string(), where, ": \"prompt\" must be a string");
      r.raw = j["prompt"].get<std::string>();
    }
    if (texts) {
      const std::string f = !field.empty() ? field : j.contains("completion") ? "completion" : "text";
      check(j.contains(f), where, ": no field \"", f, "\" holding the watermarked text (choose one with --field)");
      check(j[f].is_string(), where, ": field \"", f, "\" is not a string");
      r.text = j[f].get<std::string>();
      if (j.contains("account")) {
        check(j["account"].is_string(), where, ": \"account\" must be a string");
        r.account = j["account"].get<std::string>();
      }
    } else {
      check(!r.messages.empty() || j.contains("prompt"), where, ": needs a \"prompt\" string or a \"messages\" array");
    }
    out.push_back(std::move(r));
  });
  check(!out.empty(), path, ": no records in the file");
  return out;
}

// The prompt's own text, for the prompt-window filter: a chat's message contents, or the raw prompt.
std::string prompt_text(const Record& r) {
  if (r.messages.empty()) return r.raw;
  std::string s;
  for (const auto& m : r.messages) s += m.content + "\n";
  return s;
}

// The chat to send: the record's messages, or its raw prompt as one user turn.
std::vector<ChatMessage> as_chat(const Record& r) {
  if (!r.messages.empty()) return r.messages;
  return {{"user", r.raw}};
}

// A local suspect's token ids for a record's prompt: the chat template when the suspect has one (and --raw
// is off), else the prompt text with BOS.
std::vector<int32_t> suspect_prompt(const RuntimeLoaded& m, const Record& r, bool raw) {
  const Tokenizer& tok = *m.tokenizer;
  const bool chat = !raw && (!r.messages.empty() || !r.raw.empty()) && ChatTemplate::available(m.chat_template, tok);
  if (chat) return ChatTemplate::from_jinja(m.chat_template, tok).encode(as_chat(r), tok);
  std::string text = r.messages.empty() ? r.raw : prompt_text(r);
  return tok.encode(text, /*parse_special=*/false, /*add_bos=*/true);
}

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  check(in.good(), path, ": cannot open the account list");
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    const size_t a = line.find_first_not_of(" \t\r"), e = line.find_last_not_of(" \t\r");
    if (a != std::string::npos) out.push_back(line.substr(a, e - a + 1));
  }
  check(!out.empty(), path, ": no account ids (one per line)");
  return out;
}

// The plain-words reading of one result.
std::string verdict(const RadioactivityResult& r, const DetectorConfig& c) {
  const double alpha_log10 = std::log10(r.target_p);
  const char* what = r.mode == "open" ? "predicts" : "writes";
  if (r.test.too_short) {
    std::string s = cat("not enough evidence: ", r.test.tokens_scored, " distinct (window, token) pairs could be scored, ",
                        "fewer than the ", c.min_tokens, " the test needs; no p-value is given.");
    if (r.pairs_needed > 0)
      s += cat(" At the rate seen so far, about ", r.pairs_needed, " pairs would reach p < ", r.target_p, ".");
    return s;
  }
  if (r.test.log10_p <= alpha_log10)
    return cat("radioactive: what the suspect ", what, " prefers our key's green tokens (", r.test.tokens_scored,
               " distinct pairs, p = ", format_p(r.test.log10_p), "). A model that never learned from our watermarked text "
               "would show this with probability p.");
  std::string s = cat("no evidence at p < ", r.target_p, ": p = ", format_p(r.test.log10_p), " over ", r.test.tokens_scored,
                      " distinct pairs. This does not show that the suspect was not trained on our text: ");
  if (r.pairs_needed > 0)
    s += cat("at the rate seen, about ", r.pairs_needed, " pairs would be needed.");
  else
    s += "the suspect shows no excess of green tokens at all.";
  return s;
}

OJson result_json(const RadioactivityResult& r, const DetectorConfig& c) {
  OJson j;
  j["mode"] = r.mode;
  const RadioactivityCounts& n = r.counts;
  j["counts"] = {{"positions", n.positions}, {"no_window", n.no_window}, {"in_prompt", n.in_prompt},
                 {"unseen", n.unseen},       {"unscorable", n.unscorable}, {"in_text", n.in_text},
                 {"repeated", n.repeated}, {"other_key", n.other_key},
                 {"scored", n.scored}};
  j["test"] = detection_json(r.test);
  j["test"]["method"] = c.scheme == "kgw" ? "exact binomial tail P[Bin(T, gamma) >= green]"
                                          : "exact gamma tail P[Gamma(T, 1) >= score]";
  j["score_rate"] = r.score_rate;
  j["null_rate"] = r.null_rate;
  j["enough_evidence"] = !r.test.too_short;
  j["pairs_needed_for_target"] = r.pairs_needed < 0 ? json(nullptr) : json(r.pairs_needed);
  j["target_p"] = r.target_p;
  if (!r.accounts.empty()) {
    OJson ja = OJson::array();
    for (const auto& a : r.accounts) ja.push_back(account_detection_json(a));
    j["accounts"] = ja;
    j["accounts_correction"] = "holm-bonferroni";
  }
  j["verdict"] = verdict(r, c);
  return j;
}

void print_result(const RadioactivityResult& r, const DetectorConfig& c) {
  const RadioactivityCounts& n = r.counts;
  std::printf("positions %lld: no window %lld, window in a prompt %lld, unseen %lld, unscorable %lld, "
              "unit earlier in the text %lld, repeated %lld -> scored %lld distinct pairs\n",
              (long long)n.positions, (long long)n.no_window, (long long)n.in_prompt, (long long)n.unseen,
              (long long)n.unscorable, (long long)n.in_text, (long long)n.repeated, (long long)n.scored);
  if (!r.test.too_short)
    std::printf("%s %.4f (null %.4f), z %.2f, p %s\n", c.scheme == "kgw" ? "green share" : "mean score", r.score_rate,
                r.null_rate, r.test.z, format_p(r.test.log10_p).c_str());
  if (!r.accounts.empty()) {
    std::printf("%-24s %8s %10s %12s\n", "account", "scored", "p", "p (Holm)");
    for (const auto& a : r.accounts) {
      if (a.result.too_short) {
        std::printf("%-24s %8lld  not enough evidence\n", a.account.c_str(), (long long)a.result.tokens_scored);
        continue;
      }
      std::printf("%-24s %8lld %10s %12s\n", a.account.c_str(), (long long)a.result.tokens_scored,
                  format_p(a.result.log10_p).c_str(), format_p(a.log10_p_holm).c_str());
    }
  }
  std::printf("%s\n", verdict(r, c).c_str());
}

void run_radioactivity(RadioactivityArgs& a) {
  check(a.suspect.empty() != a.suspect_url.empty(),
        "audit radioactivity: give exactly one of --suspect MODEL (a local model) or --suspect-url URL");
  std::string mode = a.mode.empty() ? (a.suspect_url.empty() ? "open" : "closed") : a.mode;
  check(mode == "open" || mode == "closed", "audit radioactivity: --mode must be open or closed, not '", mode, "'");
  check(!(mode == "open" && !a.suspect_url.empty()),
        "audit radioactivity: the open-model test reads our texts through the suspect's weights; a URL gives only "
        "text: use --mode closed (or --suspect with the model file)");
  check(mode == "closed" || !a.texts.empty(), "audit radioactivity --mode open: --texts FILE (our watermarked texts) "
        "is required");
  check(mode == "open" || !a.texts.empty() || !a.prompts.empty(),
        "audit radioactivity --mode closed: give --prompts FILE (or --texts FILE, whose prompts are then used)");
  check(a.samples >= 1 && a.samples <= 16, "audit radioactivity: --samples must be 1..16");
  check(a.target_p > 0 && a.target_p < 1, "audit radioactivity: --target-p must be in (0, 1)");
  apply_threads(a.threads);

  check(a.wm.scheme != "synthid", "audit radioactivity: --scheme synthid is not supported yet (its tournament scores "
        "need their own per-pair test); use kgw or gumbel");
  DetectorConfig cfg = watermark_detector_config(a.wm);
  cfg.dedup = true;
  cfg.min_tokens = a.min_tokens;
  check_detector_config(cfg);
  const WatermarkKey master = load_key(a.wm.key_file);
  std::vector<std::string> accounts;
  if (!a.accounts_file.empty()) accounts = read_lines(a.accounts_file);
  std::shared_ptr<Tokenizer> ours = load_tokenizer_only(a.model);

  RadioactivityTest test(master, cfg, accounts);
  test.set_samples(a.keep_samples);
  const int w = test.window();
  auto encode_ours = [&](const std::string& s) { return ours->encode(s, /*parse_special=*/false, /*add_bos=*/false); };

  std::vector<Record> texts, prompts;
  if (!a.texts.empty()) texts = read_records(a.texts, /*texts=*/true, a.field, a.max_texts);
  if (!a.prompts.empty()) prompts = read_records(a.prompts, /*texts=*/false, "", a.max_texts);
  if (mode == "closed" && prompts.empty()) {
    for (const Record& r : texts)
      if (!r.messages.empty() || !r.raw.empty()) prompts.push_back(r);
    check(!prompts.empty(), a.texts, ": no record has a \"prompt\" or \"messages\" to ask the suspect; give --prompts FILE");
  }

  // Windows of the prompts (the suspect may copy them) and, optionally, of our served text.
  WindowSet prompt_windows(w), seen_windows(w);
  for (const Record& r : mode == "open" ? texts : prompts) prompt_windows.add_windows_of(encode_ours(prompt_text(r)));
  test.set_prompt_windows(&prompt_windows);
  if (!a.seen.empty()) {
    bool jsonl = a.seen.size() > 6 && a.seen.substr(a.seen.size() - 6) == ".jsonl";
    if (jsonl) {
      for (const Record& r : read_records(a.seen, true, a.field, 0)) seen_windows.add_windows_of(encode_ours(r.text));
    } else {
      seen_windows.add_windows_of(encode_ours(read_file(a.seen)));
    }
    check(seen_windows.size() > 0, a.seen, ": no ", w, "-token windows in the served text");
    test.set_seen_windows(&seen_windows);
  }

  OJson suspect_j;
  std::string accounts_texts;  // open mode with accounts: "own" or "all" (set where the texts are read)
  const auto t0 = std::chrono::steady_clock::now();
  int64_t generated_texts = 0;
  auto note = [&](const std::string& s) {
    if (!a.json_out) std::fprintf(stderr, "%s\n", s.c_str());
  };
  if (!a.suspect.empty()) {
    RuntimeLoadOptions lo;
    RuntimeLoaded m = load_runtime_model(a.suspect, lo);
    check(m.tokenizer != nullptr, m.path, ": the suspect has no tokenizer");
    suspect_j = {{"model", a.suspect}, {"path", m.path}, {"arch", m.hparams.arch},
                 {"tokenizer_hash", m.tokenizer->hash()}, {"same_tokenizer", same_tokenizer(*m.tokenizer, *ours)}};
    if (mode == "open") {
      // Texts that say which account they were served to (`retort keys served`) are scored by that
      // account's test alone; one without an account makes every account test score every text.
      const bool own_texts = !accounts.empty() &&
                             std::all_of(texts.begin(), texts.end(), [](const Record& r) { return !r.account.empty(); });
      accounts_texts = accounts.empty() ? "" : own_texts ? "own" : "all";
      std::vector<ReadingItem> items;
      for (const Record& r : texts) {
        ReadingItem it;
        it.text = r.text;
        if (own_texts) it.account = test.account_index(r.account);
        if (!r.messages.empty() || !r.raw.empty())
          it.prefix = suspect_prompt(m, r, a.raw);
        else if (m.tokenizer->bos_id() && m.tokenizer->add_bos_token())
          it.prefix = {*m.tokenizer->bos_id()};
        items.push_back(std::move(it));
      }
      note(cat("reading ", items.size(), " texts through ", m.path));
      read_texts_with_suspect(*m.model, *m.tokenizer, *ours, items, test, [&](size_t done) {
        if (!a.json_out) std::fprintf(stderr, "\r  %zu/%zu texts", done, items.size());
      });
      if (!a.json_out) std::fprintf(stderr, "\n");
    } else {
      std::vector<GenerationRequest> reqs;
      for (const Record& r : prompts)
        for (int s = 0; s < a.samples; ++s) {
          GenerationRequest q;
          q.prompt = suspect_prompt(m, r, a.raw);
          q.sampling = a.sampling;
          q.sampling.seed = a.sampling.seed + uint64_t(s);
          q.max_tokens = a.max_tokens;
          reqs.push_back(std::move(q));
        }
      note(cat("asking ", m.path, " ", reqs.size(), " prompts"));
      const std::vector<GenerationResult> res = generate(m, reqs);
      for (const auto& g : res) test.add_text(encode_ours(g.text));
      generated_texts = int64_t(res.size());
    }
  } else {
    OpenAIClientOptions co;
    co.base_url = a.suspect_url;
    if (!a.api_key_env.empty()) {
      const char* k = std::getenv(a.api_key_env.c_str());
      check(k && *k, "audit radioactivity: --api-key-env ", a.api_key_env, " names an unset or empty variable");
      co.api_key = k;
    }
    OpenAIClient client(co);
    std::string model_name = a.suspect_model;
    if (model_name.empty()) {
      const std::vector<std::string> ids = client.models();
      check(!ids.empty(), client.base_url(), " lists no models; name one with --suspect-model");
      model_name = ids[0];
    }
    note(cat("asking ", client.base_url(), " (model ", model_name, ") ", prompts.size() * size_t(a.samples), " prompts"));
    std::string fingerprint, reported_model;
    for (const Record& r : prompts) {
      ApiRequest q;
      q.kind = a.raw ? Endpoint::completion : Endpoint::chat;
      q.model = model_name;
      if (a.raw)
        q.prompt = prompt_text(r);
      else
        q.messages = as_chat(r);
      q.max_tokens = a.max_tokens;
      q.sampling = a.sampling;
      q.seed = int64_t(a.sampling.seed);
      q.n = a.samples;
      const ParsedCompletion c = a.raw ? client.complete(q) : client.chat(q);
      for (const auto& ch : c.choices) test.add_text(encode_ours(ch.text)), ++generated_texts;
      if (fingerprint.empty()) fingerprint = c.system_fingerprint;
      if (reported_model.empty()) reported_model = c.model;
      if (!a.json_out) std::fprintf(stderr, "\r  %lld texts", (long long)generated_texts);
    }
    if (!a.json_out) std::fprintf(stderr, "\n");
    const OpenAIClientStats& st = client.stats();
    suspect_j = {{"url", client.base_url()}, {"model", model_name}, {"model_reported", reported_model},
                 {"system_fingerprint", fingerprint},
                 {"requests", {{"sent", st.requests}, {"retries", st.retries}, {"throttled", st.throttled},
                               {"server_errors", st.server_errors}, {"transport_errors", st.transport_errors},
                               {"prompt_tokens", st.prompt_tokens}, {"completion_tokens", st.completion_tokens}}}};
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const RadioactivityResult r = test.result(mode, a.target_p);
  OJson params = {{"scheme", cfg.scheme}, {"window", w}, {"dedup", true}, {"min_tokens", cfg.min_tokens}};
  if (cfg.scheme == "kgw") {
    params["gamma"] = cfg.kgw.gamma;
    params["context"] = cfg.kgw.context;
    params["h"] = cfg.kgw.width();
  } else {
    params["h"] = cfg.gumbel.h;
  }
  OJson out;
  out["audit"] = "radioactivity";
  out["key_commitment"] = master.commitment();
  out["key_holder_model"] = a.model;
  out["key_holder_tokenizer_hash"] = ours->hash();
  out["params"] = params;
  out["suspect"] = suspect_j;
  OJson inputs = {{"texts", a.texts.empty() ? json(nullptr) : json(a.texts)}, {"texts_count", texts.size()},
                  {"prompts", a.prompts.empty() ? json(nullptr) : json(a.prompts)}, {"prompt_windows", prompt_windows.size()},
                  {"seen", a.seen.empty() ? json(nullptr) : json(a.seen)}, {"seen_windows", seen_windows.size()}};
  if (mode == "closed") {
    inputs["prompts_count"] = prompts.size();
    inputs["samples_per_prompt"] = a.samples;
    inputs["generated_texts"] = generated_texts;
    inputs["sampling"] = {{"temperature", a.sampling.temperature}, {"top_p", a.sampling.top_p},
                          {"max_tokens", a.max_tokens}, {"seed", a.sampling.seed}};
  }
  out["inputs"] = inputs;
  const OJson res = result_json(r, cfg);
  for (auto it = res.begin(); it != res.end(); ++it) out[it.key()] = it.value();
  // Which texts each account's test scored: "own" (those served to it) or "all".
  if (!accounts.empty()) out["accounts_texts"] = mode == "open" && !accounts_texts.empty() ? accounts_texts : "all";
  // Sample texts with each position's fate, for people (the case file highlights them).
  OJson samples = OJson::array();
  for (const auto& sample : r.samples) {
    OJson toks = OJson::array();
    for (const SampleMark& m : sample) {
      OJson t = {{"text", ours->token_bytes(m.token)},
                 {"mark", m.kind == SampleMark::kGreen ? "green" : m.kind == SampleMark::kRed ? "red" : "not_scored"}};
      if (m.prediction >= 0) t["predicted"] = ours->token_bytes(m.prediction);
      toks.push_back(std::move(t));
    }
    samples.push_back({{"tokens", std::move(toks)}});
  }
  out["samples"] = std::move(samples);
  out["seconds"] = secs;
  // Token pieces may hold part of a UTF-8 character: replaced, never a crash.
  const std::string dumped = out.dump(2, ' ', false, OJson::error_handler_t::replace);
  if (!a.out.empty()) write_file_atomic(a.out, dumped + "\n");
  if (a.json_out) {
    std::cout << dumped << "\n";
    return;
  }
  std::printf("radioactivity (%s model), scheme %s, key %s…, %.1f s\n", mode.c_str(), cfg.scheme.c_str(),
              master.commitment().substr(0, 16).c_str(), secs);
  print_result(r, cfg);
  if (!a.out.empty()) std::printf("wrote %s\n", a.out.c_str());
}

}  // namespace

void register_audit(CLI::App& app) {
  CLI::App* au = app.add_subcommand("audit", "was a suspect model distilled from ours? (radioactivity, provenance, report)");
  au->require_subcommand(1);
  register_audit_provenance(au);
  register_audit_report(au);
  auto a = std::make_shared<RadioactivityArgs>();
  a->sampling.temperature = 0.8;
  CLI::App* ra = au->add_subcommand(
      "radioactivity",
      "our watermark's trace in a suspect: open (it reads our watermarked texts; its top-1 predictions are scored) or "
      "closed (it answers our prompts; its text is scored). Exact p-values, per-account attribution.");
  ra->add_option("--suspect", a->suspect, "the suspect model (.gguf, HF dir or short name)");
  ra->add_option("--suspect-url", a->suspect_url, "an OpenAI-compatible endpoint serving the suspect (closed test)");
  ra->add_option("--suspect-model", a->suspect_model, "model name to ask the endpoint for (default: the first it lists)");
  ra->add_option("--api-key-env", a->api_key_env, "environment variable holding the endpoint's API key");
  ra->add_option("--mode", a->mode, "open | closed (default: open for --suspect, closed for --suspect-url)");
  ra->add_option("-m,--model", a->model, "our model: its tokenizer is the one our watermark was embedded with")
      ->capture_default_str();
  ra->add_option("--texts", a->texts, "our watermarked texts (JSONL: \"completion\" or \"text\", optional \"prompt\"/\"messages\")");
  ra->add_option("--field", a->field, "the JSONL field holding the watermarked text");
  ra->add_option("--prompts", a->prompts, "closed test: prompts to ask the suspect (JSONL \"prompt\" or \"messages\")");
  ra->add_option("--seen", a->seen, "keep only windows that occur in our served text (a .jsonl of texts, or a text file)");
  ra->add_option("--accounts", a->accounts_file, "file of account ids (one per line): test each account's key, Holm-corrected");
  add_watermark_detect_options(*ra, a->wm);
  ra->add_option("--min-tokens", a->min_tokens, "fewer distinct scored pairs than this -> not enough evidence, no p-value")
      ->capture_default_str();
  ra->add_option("--target-p", a->target_p, "the p-value the verdict calls radioactive")->capture_default_str();
  ra->add_option("--samples", a->samples, "closed test: answers per prompt")->capture_default_str();
  add_sampling_options(*ra, a->sampling, a->max_tokens);
  ra->add_flag("--raw", a->raw, "no chat template: prompts as plain text (completions endpoint for a URL)");
  ra->add_option("--max-texts", a->max_texts, "read at most this many records of each file (0 = all)");
  ra->add_option("--keep-samples", a->keep_samples, "texts kept with each token's mark, for the case file")
      ->capture_default_str();
  ra->add_option("-t,--threads", a->threads, "CPU threads (0 = all cores)");
  ra->add_option("-o,--out", a->out, "also write the JSON result to this file (atomically)");
  ra->add_flag("--json", a->json_out, "JSON output");
  ra->callback([a] { run_radioactivity(*a); });
}

}  // namespace retort::cli
