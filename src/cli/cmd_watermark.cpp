// `retort watermark`: detect (score text for a watermark, exact p-values) and keygen.
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "cli/watermark_options.h"
#include "retort/audit/watermark_detect.h"
#include "retort/io/jsonl.h"
#include "retort/model/runtime_model.h"
#include "retort/protect/synthid.h"
#include "retort/text/chat_template.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"
#include "retort/util/stats.h"

namespace retort::cli {

namespace {
constexpr double kLog10E = 0.43429448190325182765;

using nlohmann::json;

// --min-entropy's default, in nats: chosen on a tuning set of 200-token KGW δ = 2 chat completions of
// the default teacher (100 selfhash + 100 lefthash, prompts apart from the evaluation's) as the grid
// value with the best 95th percentile of log10 p (bench/watermark_eval.cpp --n-tune;
// docs/watermark-evaluation.md, "Entropy-filtered detection"). About 20% of positions fall below it.
constexpr double kDefaultMinEntropy = 1.5;

struct DetectArgs {
  std::string model = "smollm2-135m-instruct";
  std::string text, file, jsonl, field = "text", accounts_file;
  WatermarkCliOptions wm;
  bool no_dedup = false;
  int64_t min_tokens = 1;
  bool json_out = false;
  bool text_given = false;
  // SWEET-style selection: score only positions where this model's next-token entropy >= min_entropy.
  std::string entropy_model;  // "" = score every position
  double min_entropy = kDefaultMinEntropy;
  std::string prompt;         // --text / --file: the user message the text answered
  bool raw_prompt = false;    // prompts are raw text (BOS + text), not one chat turn
};

// A prompt as the JSONL gives it: "messages" (a chat) or "prompt" (one user turn, or raw text).
struct DocPrompt {
  bool given = false;
  std::string raw;
  std::vector<ChatMessage> messages;
};

struct Doc {
  json id;
  std::vector<int32_t> ids;
  DocPrompt prompt;
};

std::vector<Doc> read_docs(const DetectArgs& a, const Tokenizer& tok) {
  // --text "" is a (too short) document, not a missing option.
  int given = a.text_given + !a.file.empty() + !a.jsonl.empty();
  check(given == 1, "watermark detect: give exactly one of --text TEXT, --file FILE or --jsonl FILE");
  auto encode = [&](const std::string& s) { return tok.encode(s, /*parse_special=*/false, /*add_bos=*/false); };
  std::vector<Doc> docs;
  DocPrompt flag_prompt;
  if (!a.prompt.empty()) flag_prompt = {true, a.prompt, {{"user", a.prompt}}};
  if (a.text_given) {
    docs.push_back({json(0), encode(a.text), flag_prompt});
  } else if (!a.file.empty()) {
    docs.push_back({json(a.file), encode(read_file(a.file)), flag_prompt});
  } else {
    check(a.prompt.empty(), "watermark detect: --prompt goes with --text or --file; a JSONL document gives its own "
          "(\"prompt\" or \"messages\")");
    for_each_jsonl_object(a.jsonl, [&](const json& j, int64_t lineno) {
      check(j.contains(a.field), a.jsonl, ":", lineno, ": no field \"", a.field, "\" (choose one with --field)");
      check(j[a.field].is_string(), a.jsonl, ":", lineno, ": field \"", a.field, "\" is not a string");
      Doc d{j.contains("id") ? j["id"] : json(lineno), encode(j[a.field].get<std::string>()), {}};
      // The prompt the text answered (used by --entropy-model): "messages" or "prompt", as `retort generate` reads them.
      if (j.contains("messages")) {
        const json& ms = j["messages"];
        check(ms.is_array(), a.jsonl, ":", lineno, ": \"messages\" must be an array");
        for (const auto& m : ms) {
          check(m.is_object() && m.contains("role") && m["role"].is_string() && m.contains("content") &&
                    m["content"].is_string(),
                a.jsonl, ":", lineno, ": each message needs string fields \"role\" and \"content\"");
          d.prompt.messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
        }
        // A conversation ending with the answer itself: the prompt is everything before it.
        while (!d.prompt.messages.empty() && d.prompt.messages.back().role == "assistant") d.prompt.messages.pop_back();
        d.prompt.given = !d.prompt.messages.empty();
      } else if (j.contains("prompt") && a.field != "prompt") {
        check(j["prompt"].is_string(), a.jsonl, ":", lineno, ": \"prompt\" must be a string");
        d.prompt.given = true;
        d.prompt.raw = j["prompt"].get<std::string>();
        d.prompt.messages = {{"user", d.prompt.raw}};
      }
      docs.push_back(std::move(d));
    });
    check(!docs.empty(), a.jsonl, ": no documents in the file");
  }
  return docs;
}

std::vector<std::string> read_accounts(const std::string& path) {
  std::ifstream in(path);
  check(in.good(), path, ": cannot open the account list");
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    size_t a = line.find_first_not_of(" \t\r"), e = line.find_last_not_of(" \t\r");
    if (a == std::string::npos) continue;
    out.push_back(line.substr(a, e - a + 1));
  }
  check(!out.empty(), path, ": no account ids (one per line)");
  return out;
}

void print_row(const std::string& name, const DetectionResult& r, bool entropy_filter = false) {
  if (entropy_filter) std::printf("%-24s %8lld %8lld ", name.c_str(), (long long)r.tokens, (long long)r.tokens_masked);
  else std::printf("%-24s %8lld ", name.c_str(), (long long)r.tokens);
  if (r.too_short) {
    std::printf("%8lld %10s %8s  too short to test\n", (long long)r.tokens_scored, "-", "-");
    return;
  }
  std::printf("%8lld %10.2f %8.2f  %s\n", (long long)r.tokens_scored, r.score, r.z, format_p(r.log10_p).c_str());
}

// SWEET-style selection (watermark_detect.h): the entropy model's next-token entropy at every position of
// every document, over its prompt (chat-formatted with the model's template as generation did, or raw),
// then score_position[t] = H_t >= min_entropy. Reads no key.
std::vector<std::vector<uint8_t>> entropy_masks(const DetectArgs& a, const Tokenizer& tok, const std::vector<Doc>& docs,
                                                json& params) {
  check(a.min_entropy >= 0 && std::isfinite(a.min_entropy), "watermark detect: --min-entropy ", a.min_entropy,
        " must be a finite number of nats >= 0");
  RuntimeLoaded em = load_runtime_model(a.entropy_model);
  check(em.tokenizer != nullptr, em.path, ": the entropy model has no tokenizer to compare with the text's");
  check(em.tokenizer->n_vocab() == tok.n_vocab() && em.tokenizer->hash() == tok.hash(), "watermark detect: --entropy-model ",
        em.path, " has another tokenizer than --model ", a.model,
        "; use the key holder's own model (the one that generated the text), whose token ids the text was scored in");
  std::vector<std::vector<int32_t>> prompts(docs.size()), texts(docs.size());
  int64_t with_prompt = 0;
  std::optional<ChatTemplate> tpl;
  for (size_t i = 0; i < docs.size(); ++i) {
    texts[i] = docs[i].ids;
    const DocPrompt& p = docs[i].prompt;
    if (!p.given) continue;
    ++with_prompt;
    if (a.raw_prompt && !p.raw.empty()) {
      prompts[i] = em.tokenizer->encode(p.raw, /*parse_special=*/true, /*add_bos=*/true);
      continue;
    }
    if (!tpl) {
      check(ChatTemplate::available(em.chat_template, *em.tokenizer), em.path,
            ": the entropy model has no chat template to format the prompts; give --raw-prompt for raw prompts");
      tpl = ChatTemplate::from_jinja(em.chat_template, *em.tokenizer);
    }
    prompts[i] = tpl->encode(p.messages, *em.tokenizer);
  }
  const std::vector<std::vector<double>> H = model_entropies(*em.model, prompts, texts);
  std::vector<std::vector<uint8_t>> masks;
  for (const auto& h : H) masks.push_back(entropy_mask(h, a.min_entropy));
  params["entropy_model"] = em.path;
  params["min_entropy"] = a.min_entropy;
  params["documents_with_prompt"] = with_prompt;
  params["prompt_format"] = a.raw_prompt ? "raw" : "chat";
  return masks;
}

// ---- synthid (protect/synthid.h): per-document mean and weighted-mean scores ----
void run_detect_synthid(DetectArgs& a) {
  std::shared_ptr<Tokenizer> tok = load_tokenizer_only(a.model);
  std::vector<Doc> docs = read_docs(a, *tok);
  std::optional<int32_t> eos = tok->eos_id();
  auto score_docs = [&](const SynthIdConfig& c) {
    SynthIdScheme scheme(c);
    std::vector<SynthIdScore> out;
    for (const Doc& d : docs) out.push_back(synthid_score(scheme, d.ids, eos));
    return out;
  };
  auto doc_json = [](const SynthIdScore& r) {
    json j = {{"tokens", r.tokens}, {"tokens_scored", r.scored}, {"layers", r.depth}, {"too_short", r.too_short}};
    if (r.too_short || r.scored < 1) return j;
    j["mean"] = r.mean;
    j["mean_log10_p"] = r.mean_log10_p;
    j["mean_p_method"] = "exact_binomial";
    j["weighted_mean"] = r.weighted_mean;
    j["weighted_log10_p"] = r.weighted_log10_p;
    j["weighted_p_method"] = r.weighted_p_method;
    return j;
  };
  std::vector<std::pair<std::string, SynthIdConfig>> runs;  // (account or "", config)
  if (a.accounts_file.empty()) {
    runs.push_back({"", synthid_cli_config(a.wm)});
  } else {
    check(a.wm.synthid_keys.empty() && a.wm.synthid_config.empty(),
          "watermark detect --scheme synthid --accounts: keys are derived per account; drop --synthid-keys/--synthid-config");
    for (const std::string& acc : read_accounts(a.accounts_file)) {
      WatermarkCliOptions o = a.wm;
      o.account = acc;
      runs.push_back({acc, synthid_cli_config(o)});
    }
  }
  json out = {{"scheme", "synthid"}, {"runs", json::array()}};
  std::vector<SynthIdPooled> pooled;  // one per run (account)
  for (const auto& [acc, c] : runs) {
    std::vector<SynthIdScore> res = score_docs(c);
    pooled.push_back(synthid_pool(res));
    json jr = {{"account", acc}, {"ngram_len", c.ngram_len}, {"layers", c.keys.size()}, {"documents", json::array()}};
    for (size_t i = 0; i < docs.size(); i++) {
      json j = doc_json(res[i]);
      j["id"] = docs[i].id;
      jr["documents"].push_back(std::move(j));
    }
    out["runs"].push_back(std::move(jr));
    if (a.json_out) continue;
    std::printf("scheme synthid%s%s, ngram_len %d, %zu layers; mean: exact binomial p; weighted mean: Chernoff bound p\n",
                acc.empty() ? "" : ", account ", acc.c_str(), c.ngram_len, c.keys.size());
    std::printf("%-24s %8s %8s %8s %10s %8s %10s\n", "document", "tokens", "scored", "mean", "p", "wmean", "p (bound)");
    for (size_t i = 0; i < docs.size(); i++) {
      const SynthIdScore& r = res[i];
      std::string name = docs[i].id.is_string() ? docs[i].id.get<std::string>() : docs[i].id.dump();
      if (r.too_short) {
        std::printf("%-24s %8lld %8lld  too short to test\n", name.c_str(), (long long)r.tokens, (long long)r.scored);
        continue;
      }
      std::printf("%-24s %8lld %8lld %8.4f %10s %8.4f %10s\n", name.c_str(), (long long)r.tokens, (long long)r.scored,
                  r.mean, format_p(r.mean_log10_p).c_str(), r.weighted_mean, format_p(r.weighted_log10_p).c_str());
    }
  }
  if (!a.accounts_file.empty()) {
    // One pooled mean test per account, Holm–Bonferroni across accounts; ranked by p.
    std::vector<double> log_p;
    for (const SynthIdPooled& p : pooled) log_p.push_back(p.too_short ? 0.0 : p.log10_p / kLog10E);
    const std::vector<double> adj = holm_bonferroni_log(log_p);
    std::vector<size_t> order(runs.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) { return log_p[x] < log_p[y]; });
    json ja = json::array();
    for (size_t i : order) {
      const SynthIdPooled& p = pooled[i];
      ja.push_back({{"account", runs[i].first}, {"documents", p.documents}, {"tokens_scored", p.scored},
                    {"g_values", p.g_values}, {"mean", p.mean}, {"log10_p", p.log10_p}, {"p_value", p.p},
                    {"log10_p_holm", p.too_short ? 0.0 : adj[i] * kLog10E}, {"p_holm", p.too_short ? 1.0 : std::exp(adj[i])},
                    {"too_short", p.too_short}, {"p_method", "exact_binomial (mean test, documents pooled)"}});
    }
    out["accounts"] = ja;
    if (!a.json_out) {
      std::printf("\naccounts (mean test over all documents, Holm–Bonferroni over %zu accounts)\n", runs.size());
      std::printf("%-24s %8s %8s %10s %12s\n", "account", "scored", "mean", "p", "p (Holm)");
      for (size_t r = 0; r < order.size() && r < 10; ++r) {
        const size_t i = order[r];
        const SynthIdPooled& p = pooled[i];
        if (p.too_short) {
          std::printf("%-24s  too short to test\n", runs[i].first.c_str());
          continue;
        }
        std::printf("%-24s %8lld %8.4f %10s %12s\n", runs[i].first.c_str(), (long long)p.scored, p.mean,
                    format_p(p.log10_p).c_str(), format_p(adj[i] * kLog10E).c_str());
      }
      if (order.size() > 10) std::printf("(%zu more accounts; --json lists all)\n", order.size() - 10);
    }
  }
  if (a.json_out) std::cout << out.dump(2) << "\n";
}

void run_detect(DetectArgs& a) {
  check(a.entropy_model.empty() || a.wm.scheme != "synthid",
        "watermark detect: --entropy-model selects positions for kgw and gumbel; synthid scores every position");
  check(!a.raw_prompt || !a.entropy_model.empty(), "watermark detect: --raw-prompt only matters with --entropy-model");
  if (a.wm.scheme == "synthid") return run_detect_synthid(a);
  check(a.wm.account.empty(), "internal: detect has no single account");
  DetectorConfig cfg = watermark_detector_config(a.wm);
  cfg.dedup = !a.no_dedup;
  cfg.min_tokens = a.min_tokens;
  check_detector_config(cfg);
  const WatermarkKey master = load_key(a.wm.key_file);
  std::vector<std::string> accounts;
  if (!a.accounts_file.empty()) accounts = read_accounts(a.accounts_file);

  std::shared_ptr<Tokenizer> tok = load_tokenizer_only(a.model);
  std::vector<Doc> docs = read_docs(a, *tok);

  json params = {{"dedup", cfg.dedup}, {"window", detector_window(cfg)}};
  if (cfg.scheme == "kgw") {
    params["gamma"] = cfg.kgw.gamma;
    params["context"] = cfg.kgw.context;
    params["h"] = cfg.kgw.width();
  } else {
    params["h"] = cfg.gumbel.h;
  }
  const bool filter = !a.entropy_model.empty();
  std::vector<std::vector<uint8_t>> masks;
  if (filter) masks = entropy_masks(a, *tok, docs, params);
  auto add_doc = [&](WatermarkScorer& s, size_t i) {
    if (filter) s.add_tokens(docs[i].ids, masks[i]);
    else s.add_tokens(docs[i].ids);
  };
  json out = {{"scheme", cfg.scheme}, {"key_commitment", master.commitment()}, {"params", params}};

  if (accounts.empty()) {
    WatermarkScorer all(master, cfg);  // pooled over documents, deduplicated across them
    WatermarkScorer one(master, cfg);  // per document (reset between them; keeps its seed caches)
    json jdocs = json::array();
    std::vector<DetectionResult> per_doc;
    for (size_t i = 0; i < docs.size(); ++i) {
      one.reset();
      add_doc(one, i);
      per_doc.push_back(one.result());
      add_doc(all, i);
      json j = detection_json(per_doc.back(), filter);
      j["id"] = docs[i].id;
      if (filter) j["prompt_used"] = docs[i].prompt.given;
      jdocs.push_back(std::move(j));
    }
    DetectionResult agg = all.result();
    if (a.json_out) {
      out["documents"] = jdocs;
      out["aggregate"] = detection_json(agg, filter);
      std::cout << out.dump(2) << "\n";
      return;
    }
    std::printf("scheme %s, key %s…", cfg.scheme.c_str(), master.commitment().substr(0, 16).c_str());
    if (filter)
      std::printf(", scoring positions where %s's entropy >= %g nats", params["entropy_model"].get<std::string>().c_str(),
                  a.min_entropy);
    std::printf("\n%-24s %8s ", "document", "tokens");
    if (filter) std::printf("%8s ", "low-H");
    std::printf("%8s %10s %8s  %s\n", "scored", cfg.scheme == "kgw" ? "green" : "score", "z", "p-value");
    for (size_t i = 0; i < docs.size(); ++i)
      print_row(docs[i].id.is_string() ? docs[i].id.get<std::string>() : docs[i].id.dump(), per_doc[i], filter);
    if (docs.size() > 1) print_row("(all, deduplicated)", agg, filter);
    return;
  }

  std::vector<std::vector<int32_t>> ids;
  for (const Doc& d : docs) ids.push_back(d.ids);
  std::vector<AccountDetection> res = detect_accounts(master, accounts, cfg, ids, masks);
  if (a.json_out) {
    json ja = json::array();
    for (const auto& r : res) ja.push_back(json(account_detection_json(r, filter)));
    out["accounts"] = ja;
    out["correction"] = "holm-bonferroni";
    std::cout << out.dump(2) << "\n";
    return;
  }
  std::printf("scheme %s, master key %s…, %zu accounts, %zu documents pooled; p-values Holm–Bonferroni corrected%s\n",
              cfg.scheme.c_str(), master.commitment().substr(0, 16).c_str(), res.size(), docs.size(),
              filter ? cat("; ", res.empty() ? 0 : res[0].result.tokens_masked, " low-entropy positions skipped").c_str() : "");
  std::printf("%-24s %8s %8s %10s %8s  %-10s %s\n", "account", "tokens", "scored", cfg.scheme == "kgw" ? "green" : "score",
              "z", "p", "p (Holm)");
  for (const auto& r : res) {
    if (r.result.too_short) {
      print_row(r.account, r.result);
      continue;
    }
    std::printf("%-24s %8lld %8lld %10.2f %8.2f  %-10s %s\n", r.account.c_str(), (long long)r.result.tokens,
                (long long)r.result.tokens_scored, r.result.score, r.result.z, format_p(r.result.log10_p).c_str(),
                format_p(r.log10_p_holm).c_str());
  }
}

void run_keygen(const std::string& out_path) {
  check(!out_path.empty(), "watermark keygen: --out FILE is required (the key is never printed)");
  struct stat st;
  check(::stat(out_path.c_str(), &st) != 0, "watermark keygen: ", out_path,
        " already exists; refusing to overwrite a key (remove it first)");
  WatermarkKey k = generate_key();
  write_file_atomic(out_path, key_to_hex(k) + "\n");
  ::chmod(out_path.c_str(), 0600);
  std::printf("wrote %s (mode 600); key commitment %s\n", out_path.c_str(), k.commitment().c_str());
}

}  // namespace

void register_watermark(CLI::App& app) {
  CLI::App* wm = app.add_subcommand("watermark", "watermark keys and detection");
  wm->require_subcommand(1);

  auto a = std::make_shared<DetectArgs>();
  CLI::App* det = wm->add_subcommand("detect", "score text for a watermark: exact p-values per document and pooled");
  det->add_option("-m,--model", a->model, "model whose tokenizer produced the text (a .gguf, HF dir or short name)")
      ->capture_default_str();
  det->add_option("--text", a->text, "text to test")->each([a](const std::string&) { a->text_given = true; });
  det->add_option("--file", a->file, "a text file to test (one document)");
  det->add_option("--jsonl", a->jsonl, "a JSONL file, one document per line");
  det->add_option("--field", a->field, "the JSONL field holding the text")->capture_default_str();
  add_watermark_detect_options(*det, a->wm);
  det->add_option("--accounts", a->accounts_file,
                  "file of account ids (one per line): test each per-account key derived from the master key");
  det->add_flag("--no-dedup", a->no_dedup, "score repeated (context, token) n-grams every time (not recommended)");
  det->add_option("--min-tokens", a->min_tokens, "fewer scored tokens than this -> too short to test")
      ->capture_default_str();
  det->add_option("--entropy-model", a->entropy_model,
                  "score only positions where this model (the key holder's own, unwatermarked; same tokenizer) had "
                  "next-token entropy >= --min-entropy, given the document's prompt (JSONL \"messages\" or \"prompt\", "
                  "or --prompt) and the text before; the test stays exact (the selection never reads the key)");
  det->add_option("--min-entropy", a->min_entropy, "with --entropy-model: the entropy threshold, in nats")
      ->capture_default_str();
  det->add_option("--prompt", a->prompt, "with --text/--file and --entropy-model: the user message the text answered");
  det->add_flag("--raw-prompt", a->raw_prompt,
                "prompts are raw text (BOS + text, as `retort generate` without --chat), not one user turn of the chat template");
  det->add_flag("--json", a->json_out, "JSON output");
  det->callback([a] { run_detect(*a); });

  auto out = std::make_shared<std::string>();
  CLI::App* kg = wm->add_subcommand("keygen", "write a new random watermark key file (prints only its commitment)");
  kg->add_option("-o,--out", *out, "key file to create")->required();
  kg->callback([out] { run_keygen(*out); });
}

}  // namespace retort::cli
