// bench/watermark_eval.cpp — the watermark evaluation tables of issue 3 ("How we will know it is
// right"), in one process: generation with the watermark processors, detection with the
// library's scorers, perplexity from the model. Prints one JSON object (and, with --markdown,
// the same numbers as tables).
//
//   build/watermark_eval [--quick] [--model smollm2-135m-instruct] [--prompts FILE.jsonl]
//       [--cache DIR] [--out FILE.json] [--markdown FILE.md] [--threads 2] [--batch 32]
//       [--n-unwm 1000] [--unwm-tokens 64] [--n-power-main 100] [--n-power 40] [--n-power-fixed 0] [--max-tokens 200]
//       [--n-human 1500] [--human-roots /usr/share/doc,/usr/share/common-licenses]
//       [--attr-trials 20] [--attr-accounts 1000] [--attr-tokens 200] [--forward-check 4]
//       [--n-tune 0] [--min-entropy -1] [--entropy-human-docs 1000] [--entropy-human-tokens 128]
//
// Generation sets (chat-formatted prompts, temperature 1, no truncation, one fixed evaluation
// key; each document its own seed; prompt i of every set is the same, so sets are paired):
//   none          unwatermarked, --n-unwm documents of at most --unwm-tokens tokens
//   kgw_self_d{1,2,4}, kgw_left_d2, gumbel, synthid   watermarked, --max-tokens tokens
//   kgw_{self,left}_d2_fixed  (--n-power-fixed > 0) δ 2 with EOS banned until --max-tokens: every
//                 document exactly --max-tokens long, the "completions of 200 tokens"
//   attr_kgw, attr_gumbel  one document per trial under a per-account key
//   kgw_{self,left}_d2_tune  (--n-tune > 0) like the _fixed sets, on the prompts after theirs and with
//                 their own seeds: the tuning set of the entropy filter, never scored in the other tables
// Every generated document is cached in DIR/<set>.jsonl, keyed by (set config, key
// commitment, prompt ids, seed, max and min tokens), so a rerun only generates what is missing.
//
// Tests (one per scheme): kgw_selfhash (γ 0.25, h 4), kgw_lefthash (γ 0.25, h 1), gumbel (h 4),
// synthid_mean (exact binomial), synthid_weighted (Chernoff bound: conservative by design).
// Calibration uses randomized p-values for the discrete tests: with S ~ Bin(T, γ),
//   p_rand = P[S > s] + U · P[S = s],  U ~ U(0, 1)
// is exactly U(0, 1) under the null, while the exact tail P[S >= s] (what detection reports)
// is super-uniform (P[p <= α] <= α) and a KS test over 1,000 short documents rejects it for
// its discreteness alone. The false-positive rate is measured on the reported exact p.
//
// Entropy-filtered KGW (section 6; with --n-power-fixed and --n-tune, or --min-entropy H): SWEET-style
// selection (audit/watermark_detect.h) — score only positions where the unwatermarked model's own
// next-token entropy, given prompt + text so far, is >= H nats. H is chosen on the tuning sets (the
// grid value minimizing the 95th percentile of log10 p: the best document at the worst 5%) unless
// --min-entropy gives it; power is then measured on the _fixed sets and calibration re-run on the
// unwatermarked model text (with its prompts) and the human text (no prompt; its first
// --entropy-human-docs documents cut to --entropy-human-tokens: a forward pass costs ~4.4 ms per token on
// 2 cores). Entropies are cached in DIR/entropy_<set>.jsonl, keyed by model, prompt and text.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "retort/audit/watermark_detect.h"
#include "retort/decode/generate.h"
#include "retort/io/jsonl.h"
#include "retort/model/loader.h"
#include "retort/model/runtime_model.h"
#include "retort/protect/gumbel.h"
#include "retort/protect/keys.h"
#include "retort/protect/kgw.h"
#include "retort/protect/synthid.h"
#include "retort/text/chat_template.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"
#include "retort/util/stats.h"

using namespace retort;
using nlohmann::json;
using clk = std::chrono::steady_clock;
namespace fs = std::filesystem;

namespace {

constexpr double kPowerLog10 = -6;  // detection threshold p < 1e-6
constexpr double kFprLog10 = -3;    // false-positive threshold p < 1e-3
const double kLn10 = std::log(10.0);

struct Options {
  std::string model = "smollm2-135m-instruct";
  std::string prompts_file;
  std::string cache_dir = "build-wm/wm_eval_cache";
  std::string out, markdown;
  int threads = 2;
  int64_t batch = 32;
  int n_unwm = 1000;
  int64_t unwm_tokens = 64;
  int n_power_main = 100;  // kgw_self_d2, the target row
  int n_power_fixed = 0;   // > 0: kgw_{self,left}_d2_fixed, documents of exactly max_tokens (EOS banned)
  int n_power = 40;        // every other watermarked set
  int64_t max_tokens = 200;
  int n_human = 1500;
  int human_max_tokens = 400, human_min_tokens = 50;
  std::string human_roots = "/usr/share/doc,/usr/share/common-licenses";
  int attr_trials = 20, attr_accounts = 1000;
  int64_t attr_tokens = 200;
  int forward_check = 4;  // documents per set whose logprobs are recomputed with a full forward
  int n_tune = 0;          // > 0: kgw_{self,left}_d2_tune, the entropy threshold's tuning sets
  double min_entropy = -1;  // >= 0: the entropy filter's threshold (nats) instead of tuning it
  int entropy_human_docs = 1000;     // human documents in the filter's calibration rows...
  int64_t entropy_human_tokens = 128;  // ...each cut to this many tokens
  bool quick = false;
};

uint64_t fnv1a(const void* data, size_t n, uint64_t h = 1469598103934665603ull) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}
uint64_t fnv1a(const std::string& s) { return fnv1a(s.data(), s.size()); }
uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
std::string hex(uint64_t x) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", (unsigned long long)x);
  return b;
}

// A fixed, public evaluation key (not secret: this is a benchmark), and an unrelated one.
WatermarkKey named_key(const std::string& name) {
  WatermarkKey k;
  k.bytes = sha256(reinterpret_cast<const uint8_t*>(name.data()), name.size());
  return k;
}

// ---------------------------------------------------------------- prompts

std::vector<std::vector<ChatMessage>> builtin_prompts() {
  const char* templates[] = {
      "Write a short essay of about 200 words on %s.",
      "Explain %s to a curious twelve-year-old, in several paragraphs.",
      "What are the main arguments for and against %s? Answer in detail.",
      "Tell a short story in which %s plays an important role.",
      "Give a step-by-step guide for a beginner who wants to learn about %s.",
      "Describe the history of %s in a few paragraphs.",
      "Write a persuasive letter to a local newspaper about %s.",
      "List ten interesting facts about %s and explain each one briefly.",
      "Compare %s today with how it was fifty years ago.",
      "Write a blog post introducing %s to people who have never heard of it.",
      "What common misconceptions do people have about %s? Explain why they are wrong.",
      "Write a dialogue between a teacher and a student discussing %s.",
  };
  const char* topics[] = {
      "urban gardening", "the water cycle", "renewable energy", "medieval castles", "learning a second language",
      "volcanoes", "the invention of the printing press", "remote work", "honeybees", "chess strategy",
      "public libraries", "the human immune system", "space exploration", "baking bread", "climate change",
      "ancient Rome", "electric cars", "sleep and health", "the stock market", "photography",
      "coral reefs", "video games and education", "the history of jazz", "recycling", "mountain climbing",
      "artificial intelligence", "the Silk Road", "vaccines", "minimalism", "the deep ocean",
      "social media", "the Olympic Games", "coffee", "earthquakes", "volunteering",
      "the moon landing", "personal budgeting", "migratory birds", "open-source software", "tea ceremonies",
  };
  std::vector<std::vector<ChatMessage>> out;
  for (const char* t : templates)
    for (const char* topic : topics) {
      char b[512];
      std::snprintf(b, sizeof b, t, topic);
      out.push_back({{"user", b}});
    }
  std::mt19937_64 rng(42);  // interleave templates and topics
  std::shuffle(out.begin(), out.end(), rng);
  return out;
}

std::vector<std::vector<ChatMessage>> file_prompts(const std::string& path) {
  std::vector<std::vector<ChatMessage>> out;
  for_each_jsonl_object(path, [&](const json& j, int64_t lineno) {
    std::vector<ChatMessage> ms;
    if (j.contains("messages") && j["messages"].is_array()) {
      for (const auto& m : j["messages"])
        if (m.contains("role") && m.contains("content") && m["content"].is_string())
          ms.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    } else if (j.contains("prompt") && j["prompt"].is_string()) {
      ms.push_back({"user", j["prompt"].get<std::string>()});
    } else {
      fail(path, ":", lineno, ": needs a \"prompt\" string or a \"messages\" array");
    }
    // A conversation that ends with the assistant's answer: prompt with everything before it.
    while (!ms.empty() && ms.back().role == "assistant") ms.pop_back();
    if (!ms.empty()) out.push_back(std::move(ms));
  });
  check(!out.empty(), path, ": no prompts");
  return out;
}

// ---------------------------------------------------------------- generation sets and cache

struct Doc {
  int prompt_index = 0;
  std::vector<int32_t> tokens;  // completion, the terminating EOS/EOG token removed
  std::vector<float> lp;        // teacher log p of each token (raw logits, temperature 1)
  bool eos = false;             // ended by EOS (else by length)
};

struct GenSet {
  std::string name;
  std::string scheme;  // none | kgw | gumbel | synthid
  std::string context = "selfhash";
  double delta = 2;
  int n = 0;
  int64_t max_tokens = 200;
  int64_t min_tokens = 0;  // > 0: EOS banned until then (GenerationRequest::min_tokens)
  int prompt_offset = 0;   // document i answers prompt (i + prompt_offset) mod #prompts
  std::function<std::string(int)> account;  // per-document account id ("" = the evaluation key)
};

struct Ctx {
  Options o;
  LoadedModel m;
  std::vector<std::vector<ChatMessage>> prompts;
  std::vector<std::vector<int32_t>> prompt_ids;
  WatermarkKey key, wrong_key;
  std::set<int32_t> eos;
  json gen_stats = json::object();
  std::string defs_id;  // hash_definitions_id(), set once the key is
  // The entropy filter's model: the same checkpoint through the runtime (model_entropies), loaded on demand.
  RuntimeLoaded rt;
  std::string rt_id;  // path and size of its file: part of the entropy cache's keys
  double entropy_seconds = 0;
  int64_t entropy_rows = 0;
};

// Fingerprint of the schemes' hash definitions under the evaluation key: green bits, Gumbel
// uniforms and SynthID g-values at fixed points. Part of every watermarked document's cache
// key, so documents generated under an older definition are never re-scored as current ones.
std::string hash_definitions_id(const Ctx& cx) {
  const HashKey hk = cx.key.hash_key();
  std::string bits;
  const std::vector<int32_t> ctx = {11, 2222, 333, 44444, 5};
  for (int32_t v = 0; v < 64; ++v) {
    KgwConfig self, left;
    left.context = "lefthash";
    bits += kgw_is_green(hk, self, ctx, v) ? '1' : '0';
    bits += kgw_is_green(hk, left, ctx, v) ? '1' : '0';
    bits += std::to_string(gumbel_uniform(hk, GumbelConfig{}, ctx, v));
  }
  SynthIdConfig c;
  c.keys = derive_synthid_keys(cx.key, 30);
  std::vector<uint8_t> g = SynthIdScheme(c).sequence_g_values(ctx);
  return hex(fnv1a(bits) ^ fnv1a(g.data(), g.size()));
}

std::string set_config_id(const Ctx& cx, const GenSet& s, int i) {
  std::string id = s.scheme;
  if (s.scheme == "kgw") id += ":gamma=0.25:delta=" + std::to_string(s.delta) + ":" + s.context;
  if (s.scheme == "gumbel") id += ":h=4";
  if (s.scheme == "synthid") id += ":layers=30:ngram=5";
  if (s.scheme != "none") {
    std::string acc = s.account ? s.account(i) : "";
    WatermarkKey k = acc.empty() ? cx.key : derive_account_key(cx.key, acc);
    id += ":key=" + k.commitment().substr(0, 16) + ":defs=" + cx.defs_id;
  }
  return id;
}

uint64_t doc_seed(const GenSet& s, int i) { return splitmix(fnv1a(s.name) ^ splitmix(static_cast<uint64_t>(i))); }

std::string doc_cache_key(const Ctx& cx, const GenSet& s, int i) {
  const auto& p = cx.prompt_ids[(i + s.prompt_offset) % cx.prompt_ids.size()];
  return set_config_id(cx, s, i) + "|prompt=" + hex(fnv1a(p.data(), p.size() * sizeof(int32_t))) +
         "|seed=" + hex(doc_seed(s, i)) + "|max=" + std::to_string(s.max_tokens) + "|t=1" +
         (s.min_tokens > 0 ? "|min=" + std::to_string(s.min_tokens) : "");
}

std::shared_ptr<LogitsProcessor> make_processor(const Ctx& cx, const GenSet& s, int i) {
  if (s.scheme == "none") return nullptr;
  std::string acc = s.account ? s.account(i) : "";
  WatermarkKey k = acc.empty() ? cx.key : derive_account_key(cx.key, acc);
  if (s.scheme == "kgw") {
    KgwConfig c;
    c.gamma = 0.25;
    c.delta = s.delta;
    c.context = s.context;
    return std::make_shared<KgwProcessor>(k, c);
  }
  if (s.scheme == "gumbel") return std::make_shared<GumbelProcessor>(k, GumbelConfig{});
  SynthIdConfig c;
  c.keys = derive_synthid_keys(k, 30);
  c.ngram_len = 5;
  // Each request its own tournament seed (processors share the scheme's table).
  return std::make_shared<SynthIdProcessor>(std::make_shared<SynthIdScheme>(c), doc_seed(s, i), -1);
}

std::vector<Doc> generate_set(Ctx& cx, const GenSet& s) {
  fs::create_directories(cx.o.cache_dir);
  const std::string path = cx.o.cache_dir + "/" + s.name + ".jsonl";
  std::map<std::string, Doc> cached;
  {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded() || !j.is_object() || !j.contains("key")) continue;  // a torn last line
      Doc d;
      d.tokens = j["tokens"].get<std::vector<int32_t>>();
      d.lp = j["lp"].get<std::vector<float>>();
      d.eos = j["eos"].get<bool>();
      cached[j["key"].get<std::string>()] = std::move(d);
    }
  }
  std::vector<Doc> docs(s.n);
  std::vector<int> missing;
  for (int i = 0; i < s.n; ++i) {
    auto it = cached.find(doc_cache_key(cx, s, i));
    if (it == cached.end()) {
      missing.push_back(i);
    } else {
      docs[i] = it->second;
    }
    docs[i].prompt_index = (i + s.prompt_offset) % static_cast<int>(cx.prompt_ids.size());
  }
  int64_t new_tokens = 0;
  double secs = 0;
  const size_t chunk = static_cast<size_t>(2 * cx.o.batch);
  for (size_t c0 = 0; c0 < missing.size(); c0 += chunk) {
    std::vector<int> idx(missing.begin() + c0, missing.begin() + std::min(missing.size(), c0 + chunk));
    std::vector<GenerationRequest> reqs;
    for (int i : idx) {
      GenerationRequest r;
      r.prompt = cx.prompt_ids[(i + s.prompt_offset) % cx.prompt_ids.size()];
      r.sampling.temperature = 1.0;
      r.sampling.seed = doc_seed(s, i);
      r.max_tokens = s.max_tokens;
      r.min_tokens = s.min_tokens;
      r.processor = make_processor(cx, s, i);
      reqs.push_back(std::move(r));
    }
    GenerateOptions go;
    go.max_batch = cx.o.batch;
    auto t0 = clk::now();
    std::vector<GenerationResult> res = generate(cx.m, reqs, go);
    secs += std::chrono::duration<double>(clk::now() - t0).count();
    std::ofstream out(path, std::ios::app);
    for (size_t k = 0; k < idx.size(); ++k) {
      Doc& d = docs[idx[k]];
      for (const auto& t : res[k].tokens) {
        if (cx.eos.count(t.token)) {
          d.eos = true;
          break;
        }
        d.tokens.push_back(t.token);
        d.lp.push_back(t.logprob_raw);
      }
      new_tokens += static_cast<int64_t>(res[k].tokens.size());
      json j = {{"key", doc_cache_key(cx, s, idx[k])}, {"tokens", d.tokens}, {"lp", d.lp}, {"eos", d.eos}};
      out << j.dump() << "\n";
    }
    out.flush();
    std::fprintf(stderr, "[%s] %zu/%zu new documents, %.1f tok/s\n", s.name.c_str(), c0 + idx.size(), missing.size(),
                 secs > 0 ? new_tokens / secs : 0.0);
  }
  cx.gen_stats[s.name] = {{"documents", s.n},
                          {"generated_now", missing.size()},
                          {"generated_tokens_now", new_tokens},
                          {"seconds", secs},
                          {"tokens_per_s", secs > 0 ? new_tokens / secs : 0.0}};
  return docs;
}

// ---------------------------------------------------------------- entropies of the key holder's model

// model_entropies() of each (prompts[i], texts[i]) (prompts[i] empty: no prompt), cached in
// DIR/entropy_<name>.jsonl under a hash of (model file, prompt, text); computed in batches of 64
// documents, each appended to the cache when it finishes.
std::vector<std::vector<double>> cached_entropies(Ctx& cx, const std::string& name,
                                                  const std::vector<std::vector<int32_t>>& prompts,
                                                  const std::vector<std::span<const int32_t>>& texts) {
  if (!cx.rt.model) {
    cx.rt = load_runtime_model(cx.o.model);
    cx.rt_id = cx.rt.path + ":" + std::to_string(fs::file_size(cx.rt.path));
  }
  fs::create_directories(cx.o.cache_dir);
  const std::string path = cx.o.cache_dir + "/entropy_" + name + ".jsonl";
  auto key_of = [&](size_t i) {
    const auto& p = prompts[i];
    return hex(fnv1a(cx.rt_id)) + hex(fnv1a(p.data(), p.size() * sizeof(int32_t))) +
           hex(fnv1a(texts[i].data(), texts[i].size() * sizeof(int32_t))) + ":" + std::to_string(p.size()) + ":" +
           std::to_string(texts[i].size());
  };
  std::map<std::string, std::vector<double>> cached;
  {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded() || !j.is_object() || !j.contains("key")) continue;  // a torn last line
      std::vector<double> h;
      for (const auto& x : j["H"]) h.push_back(x.is_null() ? NAN : x.get<double>());
      cached[j["key"].get<std::string>()] = std::move(h);
    }
  }
  std::vector<std::vector<double>> out(texts.size());
  std::vector<size_t> missing;
  for (size_t i = 0; i < texts.size(); ++i) {
    auto it = cached.find(key_of(i));
    if (it != cached.end() && it->second.size() == texts[i].size()) out[i] = it->second;
    else missing.push_back(i);
  }
  const size_t kBatch = 64;
  for (size_t b0 = 0; b0 < missing.size(); b0 += kBatch) {
    std::vector<std::vector<int32_t>> P, X;
    std::vector<size_t> idx(missing.begin() + b0, missing.begin() + std::min(missing.size(), b0 + kBatch));
    int64_t rows = 0;
    for (size_t i : idx) {
      P.push_back(prompts[i]);
      X.emplace_back(texts[i].begin(), texts[i].end());
      rows += int64_t(prompts[i].size() + texts[i].size());
    }
    auto t0 = clk::now();
    std::vector<std::vector<double>> H = model_entropies(*cx.rt.model, P, X);
    cx.entropy_seconds += std::chrono::duration<double>(clk::now() - t0).count();
    cx.entropy_rows += rows;
    std::ofstream f(path, std::ios::app);
    for (size_t k = 0; k < idx.size(); ++k) {
      json h = json::array();
      for (double x : H[k]) h.push_back(std::isfinite(x) ? json(x) : json(nullptr));
      f << json{{"key", key_of(idx[k])}, {"H", h}}.dump() << "\n";
      out[idx[k]] = std::move(H[k]);
    }
    std::fprintf(stderr, "[entropy %s] %zu/%zu documents, %.0f rows/s\n", name.c_str(), b0 + idx.size(), missing.size(),
                 cx.entropy_seconds > 0 ? cx.entropy_rows / cx.entropy_seconds : 0.0);
  }
  return out;
}

std::vector<std::vector<uint8_t>> masks_at(const std::vector<std::vector<double>>& H, double min_entropy) {
  std::vector<std::vector<uint8_t>> m;
  for (const auto& h : H) m.push_back(entropy_mask(h, min_entropy));
  return m;
}

// ---------------------------------------------------------------- human-written documents

bool valid_utf8_text(const std::string& s) {
  size_t printable = 0, chars = 0;
  for (size_t i = 0; i < s.size();) {
    unsigned char c = s[i];
    if (c == 0) return false;
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0) return false;
    if (i + len > s.size()) break;  // a character cut by the read limit
    for (int k = 1; k < len; ++k)
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
    if (len > 1 || (c >= 0x20 && c != 0x7f) || c == '\n' || c == '\t' || c == '\r') ++printable;
    ++chars;
    i += len;
  }
  return chars > 0 && printable >= 0.97 * chars;
}

struct HumanCorpus {
  std::vector<std::vector<int32_t>> docs;
  std::vector<std::string> paths;
  json stats;
};

HumanCorpus collect_human(const Ctx& cx) {
  std::vector<std::string> files;
  std::stringstream roots(cx.o.human_roots);
  std::string root;
  while (std::getline(roots, root, ',')) {
    std::error_code ec;
    if (!fs::exists(root, ec)) continue;
    for (auto it = fs::recursive_directory_iterator(root, fs::directory_options::skip_permission_denied, ec);
         it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (ec) break;
      if (it->is_regular_file(ec)) files.push_back(it->path().string());
    }
  }
  std::sort(files.begin(), files.end());
  const std::set<std::string> binary_ext = {".gz", ".bz2", ".xz", ".zst", ".zip", ".png", ".jpg", ".jpeg", ".gif",
                                            ".ico", ".svg", ".css", ".js", ".pdf", ".woff", ".ttf", ".html", ".htm",
                                            ".xml", ".json", ".map", ".inv", ".pyc", ".mo", ".db"};
  HumanCorpus hc;
  int64_t n_ext = 0, n_binary = 0, n_dup = 0, n_short = 0, n_near = 0;
  std::unordered_set<uint64_t> content_seen, ngrams_seen;
  const int kN = 8;  // near-duplicate test on 8-grams of token ids
  for (const auto& f : files) {
    if (static_cast<int>(hc.docs.size()) >= cx.o.n_human) break;
    if (binary_ext.count(fs::path(f).extension().string())) {
      ++n_ext;
      continue;
    }
    std::ifstream in(f, std::ios::binary);
    std::string text(16384, '\0');
    in.read(text.data(), static_cast<std::streamsize>(text.size()));
    text.resize(static_cast<size_t>(in.gcount()));
    if (!valid_utf8_text(text)) {
      ++n_binary;
      continue;
    }
    if (!content_seen.insert(fnv1a(text)).second) {
      ++n_dup;
      continue;
    }
    std::vector<int32_t> ids = cx.m.tokenizer->encode(text, /*parse_special=*/false, /*add_bos=*/false);
    if (static_cast<int>(ids.size()) > cx.o.human_max_tokens) ids.resize(cx.o.human_max_tokens);
    if (static_cast<int>(ids.size()) < cx.o.human_min_tokens) {
      ++n_short;
      continue;
    }
    // Near-duplicates (the same license text under many packages) would make the documents'
    // p-values dependent: skip a document when over half of its 8-grams were seen before.
    std::vector<uint64_t> grams;
    for (size_t t = 0; t + kN <= ids.size(); ++t) grams.push_back(fnv1a(ids.data() + t, kN * sizeof(int32_t)));
    size_t seen = 0;
    for (uint64_t g : grams) seen += ngrams_seen.count(g);
    if (2 * seen > grams.size()) {
      ++n_near;
      continue;
    }
    for (uint64_t g : grams) ngrams_seen.insert(g);
    hc.docs.push_back(std::move(ids));
    hc.paths.push_back(f);
  }
  int64_t toks = 0;
  for (const auto& d : hc.docs) toks += static_cast<int64_t>(d.size());
  hc.stats = {{"roots", cx.o.human_roots},      {"files", files.size()},     {"skipped_extension", n_ext},
              {"skipped_not_text", n_binary},   {"skipped_duplicate", n_dup}, {"skipped_short", n_short},
              {"skipped_near_duplicate", n_near}, {"documents", hc.docs.size()}, {"tokens", toks},
              {"max_tokens", cx.o.human_max_tokens}, {"min_tokens", cx.o.human_min_tokens}};
  return hc;
}

// ---------------------------------------------------------------- detection

// One statistical test with its key.
struct Test {
  std::string name;  // kgw_selfhash | kgw_lefthash | gumbel | synthid_mean | synthid_weighted
  WatermarkKey key;
  DetectorConfig det;
  std::shared_ptr<SynthIdScheme> sid;
  bool synthid() const { return sid != nullptr; }
  bool weighted() const { return name == "synthid_weighted"; }
};

Test make_test(const std::string& name, const WatermarkKey& key) {
  Test t;
  t.name = name;
  t.key = key;
  if (name == "kgw_selfhash" || name == "kgw_lefthash") {
    t.det.scheme = "kgw";
    t.det.kgw.gamma = 0.25;
    t.det.kgw.context = name == "kgw_selfhash" ? "selfhash" : "lefthash";
  } else if (name == "gumbel") {
    t.det.scheme = "gumbel";
  } else {
    SynthIdConfig c;
    c.keys = derive_synthid_keys(key, 30);
    c.ngram_len = 5;
    t.sid = std::make_shared<SynthIdScheme>(c);
  }
  check_detector_config(t.det);
  return t;
}

struct Score {
  bool ok = false;       // false: too short to test
  double log10_p = 0;    // the reported p-value (exact tail, or the Chernoff bound)
  double p_rand = 1;     // randomized p-value (discrete tests), else the p-value
  int64_t scored = 0;
};

// Randomized p of a discrete binomial test: P[S > s] + u · P[S = s].
double randomized_binomial_p(int64_t s, int64_t n, double pi, double u) {
  double ge = std::exp(log_binomial_sf(s, n, pi)), gt = std::exp(log_binomial_sf(s + 1, n, pi));
  return gt + u * (ge - gt);
}

// mask: empty = every position; else score_position (entropy filter), kgw and gumbel only.
Score score_tokens(const Test& t, std::span<const int32_t> tokens, uint64_t rand_seed, std::span<const uint8_t> mask = {}) {
  Score sc;
  const double u = (static_cast<double>(splitmix(rand_seed) >> 11) + 0.5) * 0x1.0p-53;
  if (t.synthid()) {
    SynthIdScore r = synthid_score(*t.sid, tokens);
    if (r.too_short || r.scored < 1) return sc;
    sc.ok = true;
    sc.scored = r.scored;
    if (t.weighted()) {
      sc.log10_p = r.weighted_log10_p;
      sc.p_rand = std::pow(10.0, r.weighted_log10_p);
    } else {
      sc.log10_p = r.mean_log10_p;
      sc.p_rand = randomized_binomial_p(r.ones, r.scored * r.depth, r.pi, u);
    }
    return sc;
  }
  DetectionResult r = mask.empty() ? detect_tokens(t.key, t.det, tokens) : detect_tokens(t.key, t.det, tokens, mask);
  if (r.too_short) return sc;
  sc.ok = true;
  sc.scored = r.tokens_scored;
  sc.log10_p = r.log10_p;
  sc.p_rand = t.det.scheme == "kgw"
                  ? randomized_binomial_p(static_cast<int64_t>(std::llround(r.score)), r.tokens_scored, t.det.kgw.gamma, u)
                  : r.p_value;
  return sc;
}

// log10 p of the first L tokens, for each L in `lengths` (ascending; L past the end = the whole text);
// with a mask, only its selected positions.
std::vector<double> prefix_log10_p(const Test& t, const std::vector<int32_t>& tokens, const std::vector<int64_t>& lengths,
                                   std::span<const uint8_t> mask = {}) {
  std::vector<double> out;
  if (t.synthid()) {
    for (int64_t L : lengths) {
      std::span<const int32_t> s(tokens.data(), std::min<size_t>(tokens.size(), static_cast<size_t>(L)));
      out.push_back(score_tokens(t, s, 0).log10_p);
    }
    return out;
  }
  WatermarkScorer sc(t.key, t.det);
  size_t pos = 0;
  for (int64_t L : lengths) {
    size_t end = std::min<size_t>(tokens.size(), static_cast<size_t>(L));
    for (; pos < end; ++pos)
      if (mask.empty() || mask[pos]) sc.add_pair(std::span<const int32_t>(tokens.data(), pos), tokens[pos]);
    DetectionResult r = sc.result();
    out.push_back(r.too_short ? 0.0 : r.log10_p);
  }
  return out;
}

// ---------------------------------------------------------------- statistics helpers

// Exact (Clopper–Pearson) two-sided 95% interval for k successes in n trials.
std::pair<double, double> clopper_pearson(int64_t k, int64_t n, double alpha = 0.05) {
  if (n == 0) return {0, 1};
  auto bisect = [](auto f) {  // f increasing in p; root of f(p) = 0
    double lo = 0, hi = 1;
    for (int it = 0; it < 200; ++it) {
      double mid = 0.5 * (lo + hi);
      (f(mid) < 0 ? lo : hi) = mid;
    }
    return 0.5 * (lo + hi);
  };
  double lower = k == 0 ? 0.0 : bisect([&](double p) { return std::exp(log_binomial_sf(k, n, p)) - alpha / 2; });
  // P[Bin(n, p) <= k] decreases in p: root of alpha/2 - P[<= k].
  double upper = k == n ? 1.0 : bisect([&](double p) { return alpha / 2 - (1 - std::exp(log_binomial_sf(k + 1, n, p))); });
  return {lower, upper};
}

double quantile(std::vector<double> v, double q) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  double pos = q * (v.size() - 1);
  size_t i = static_cast<size_t>(pos);
  double f = pos - i;
  return i + 1 < v.size() ? v[i] * (1 - f) + v[i + 1] * f : v[i];
}

json num(double x) { return std::isfinite(x) ? json(x) : json(nullptr); }

// KS of randomized p-values and FPR of the reported p over a set of documents. With
// per_doc_master, document i is scored under its own key derive_account_key(master,
// "calibration-doc-<i>"): the p-values are then independent across documents, which is what
// the KS test assumes. Under one key for all they are not: documents that share n-grams
// (license boilerplate, "of the") share the same green/red coins.
json calibration_row(const Test& t, const std::vector<std::span<const int32_t>>& docs, uint64_t seed,
                     const WatermarkKey* per_doc_master = nullptr,
                     const std::vector<std::vector<uint8_t>>* masks = nullptr) {
  std::vector<double> p_rand, p_exact;
  int64_t too_short = 0, fp = 0, scored = 0;
  double min_log10 = 0;
  for (size_t i = 0; i < docs.size(); ++i) {
    std::span<const uint8_t> mask;
    if (masks) mask = (*masks)[i];
    Score s = per_doc_master
                  ? score_tokens(make_test(t.name, derive_account_key(*per_doc_master, "calibration-doc-" + std::to_string(i))),
                                 docs[i], seed ^ splitmix(i), mask)
                  : score_tokens(t, docs[i], seed ^ splitmix(i), mask);
    if (!s.ok) {
      ++too_short;
      continue;
    }
    p_rand.push_back(s.p_rand);
    p_exact.push_back(std::pow(10.0, s.log10_p));
    fp += s.log10_p < kFprLog10;
    scored += s.scored;
    min_log10 = std::min(min_log10, s.log10_p);
  }
  const int64_t n = static_cast<int64_t>(p_rand.size());
  KsResult ks = ks_uniform(p_rand), ks_exact = ks_uniform(p_exact);
  auto [lo, hi] = clopper_pearson(fp, n);
  return {{"test", t.name},
          {"documents", n},
          {"too_short", too_short},
          {"mean_tokens_scored", n ? double(scored) / n : 0.0},
          {"ks_d", ks.d},
          {"ks_p", ks.p_value},
          {"ks_p_is_for", t.weighted() ? "the Chernoff-bound p (conservative)" : t.name == "gumbel" ? "exact p" : "randomized p"},
          {"ks_d_reported_p", ks_exact.d},
          {"ks_p_reported_p", ks_exact.p_value},
          {"false_positives_at_1e-3", fp},
          {"fpr_at_1e-3", n ? double(fp) / n : 0.0},
          {"fpr_ci95", {lo, hi}},
          {"min_log10_p", min_log10},
          {"median_p", quantile(p_exact, 0.5)}};
}

std::vector<std::span<const int32_t>> spans_of(const std::vector<Doc>& docs) {
  std::vector<std::span<const int32_t>> v;
  for (const auto& d : docs) v.emplace_back(d.tokens);
  return v;
}

// ---------------------------------------------------------------- attacks

std::vector<int32_t> delete_fraction(const std::vector<int32_t>& x, double f, std::mt19937_64& rng) {
  std::vector<size_t> idx(x.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  std::shuffle(idx.begin(), idx.end(), rng);
  std::vector<uint8_t> drop(x.size(), 0);
  for (size_t i = 0; i < static_cast<size_t>(std::llround(f * x.size())); ++i) drop[idx[i]] = 1;
  std::vector<int32_t> out;
  for (size_t i = 0; i < x.size(); ++i)
    if (!drop[i]) out.push_back(x[i]);
  return out;
}

std::vector<int32_t> substitute_fraction(const std::vector<int32_t>& x, double f, int64_t n_vocab, std::mt19937_64& rng) {
  std::vector<size_t> idx(x.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  std::shuffle(idx.begin(), idx.end(), rng);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(n_vocab - 1));
  std::vector<int32_t> out = x;
  for (size_t i = 0; i < static_cast<size_t>(std::llround(f * x.size())); ++i) out[idx[i]] = tok(rng);
  return out;
}

// The watermarked text in the middle of 3× as many unwatermarked tokens (1.5× before, 1.5× after).
std::vector<int32_t> dilute(const std::vector<int32_t>& x, const std::vector<int32_t>& pool, size_t doc_index) {
  const size_t extra = 3 * x.size(), before = extra / 2;
  std::vector<int32_t> out;
  if (pool.size() <= extra) return x;
  size_t off = (doc_index * 7919 * (extra + 1)) % (pool.size() - extra);
  out.insert(out.end(), pool.begin() + off, pool.begin() + off + before);
  out.insert(out.end(), x.begin(), x.end());
  out.insert(out.end(), pool.begin() + off + before, pool.begin() + off + extra);
  return out;
}

// ---------------------------------------------------------------- perplexity

json quality_row(const std::string& set, const std::vector<Doc>& docs, int64_t common_len) {
  double nll = 0, nll_common = 0;
  int64_t n = 0, n_common = 0;
  std::vector<double> doc_logppl;
  for (const auto& d : docs) {
    if (d.lp.empty()) continue;
    double s = 0;
    for (size_t i = 0; i < d.lp.size(); ++i) {
      s -= d.lp[i];
      if (static_cast<int64_t>(i) < common_len) nll_common -= d.lp[i], ++n_common;
    }
    nll += s;
    n += static_cast<int64_t>(d.lp.size());
    doc_logppl.push_back(s / d.lp.size());
  }
  double mean = 0, var = 0;
  for (double x : doc_logppl) mean += x;
  mean /= std::max<size_t>(1, doc_logppl.size());
  for (double x : doc_logppl) var += (x - mean) * (x - mean);
  var /= std::max<size_t>(1, doc_logppl.size() - 1);
  return {{"set", set},
          {"documents", doc_logppl.size()},
          {"tokens", n},
          {"ppl", std::exp(nll / std::max<int64_t>(1, n))},
          {"ppl_first_tokens", std::exp(nll_common / std::max<int64_t>(1, n_common))},
          {"first_tokens", common_len},
          {"mean_doc_log_ppl", mean},
          {"se_doc_log_ppl", std::sqrt(var / std::max<size_t>(1, doc_logppl.size()))},
          {"median_doc_ppl", std::exp(quantile(doc_logppl, 0.5))}};
}

// Recomputes the cached per-token log p with one full forward of prompt + completion.
double forward_check(Ctx& cx, const std::vector<Doc>& docs, int k) {
  torch::NoGradGuard ng;
  double worst = 0;
  for (int i = 0; i < std::min<int>(k, static_cast<int>(docs.size())); ++i) {
    const Doc& d = docs[i];
    if (d.tokens.empty()) continue;
    std::vector<int64_t> ids(cx.prompt_ids[d.prompt_index].begin(), cx.prompt_ids[d.prompt_index].end());
    const int64_t p = static_cast<int64_t>(ids.size());
    ids.insert(ids.end(), d.tokens.begin(), d.tokens.end());
    torch::Tensor x = torch::tensor(ids, torch::kInt64).unsqueeze(0);
    torch::Tensor logp = torch::log_softmax(cx.m.model->forward(x)[0], -1);  // [T, V]
    for (size_t t = 0; t < d.tokens.size(); ++t) {
      double ref = logp[p - 1 + static_cast<int64_t>(t)][d.tokens[t]].item<float>();
      worst = std::max(worst, std::abs(ref - d.lp[t]));
    }
  }
  return worst;
}

// ---------------------------------------------------------------- markdown

std::string fmt(const char* f, double x) {
  char b[64];
  std::snprintf(b, sizeof b, f, x);
  return b;
}
std::string pct(double x) { return fmt("%.1f%%", 100 * x); }
std::string tok_or_dash(const json& j) { return j.is_null() ? std::string("> max") : std::to_string(j.get<int64_t>()); }

void calibration_table(std::ostringstream& o, const json& rows) {
  o << "| corpus | test | docs | mean scored tokens | KS D | KS p | FP at p<1e-3 | FPR [95% CI] | min p |\n"
       "|---|---|---:|---:|---:|---:|---:|---|---:|\n";
  for (const auto& c : rows)
    o << "| " << c["corpus"].get<std::string>() << " | " << c["test"].get<std::string>() << " | " << c["documents"]
      << " | " << fmt("%.0f", c["mean_tokens_scored"].get<double>()) << " | " << fmt("%.4f", c["ks_d"].get<double>())
      << " | " << fmt("%.3g", c["ks_p"].get<double>()) << " | " << c["false_positives_at_1e-3"] << " | "
      << fmt("%.4f", c["fpr_at_1e-3"].get<double>()) << " [" << fmt("%.4f", c["fpr_ci95"][0].get<double>()) << ", "
      << fmt("%.4f", c["fpr_ci95"][1].get<double>()) << "] | " << fmt("%.2g", std::pow(10.0, c["min_log10_p"].get<double>()))
      << " |\n";
}

// Section 6: the entropy-filtered detector (present when the run had it).
void entropy_markdown(std::ostringstream& o, const json& e) {
  const double h = e["min_entropy"].get<double>();
  o << "\n### 6. Entropy-filtered KGW: scoring only positions where the model's entropy >= " << fmt("%.2f", h)
    << " nats\n\nThreshold from " << e["threshold_source"].get<std::string>() << ". Detector-side only: the texts "
    << "are those of the tables above (quality unchanged).\n";
  if (e.contains("tuning")) {
    const json& t = e["tuning"];
    const std::string s0 = t["sets"][0].get<std::string>(), s1 = t["sets"][1].get<std::string>();
    o << "\nTuning: " << t["documents_per_set"] << " documents per set (prompts " << t["prompts"][0] << "–"
      << t["prompts"][1].get<int64_t>() - 1 << ", own seeds), " << t["criterion"].get<std::string>() << ".\n\n"
      << "| min entropy (nats) | " << s0 << ": skipped | detected | q95 log10 p | " << s1
      << ": skipped | detected | q95 log10 p | pooled q95 log10 p |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for (const auto& row : t["grid"]) {
      o << "| " << fmt("%.2f", row["min_entropy"].get<double>());
      for (const std::string& s : {s0, s1})
        o << " | " << pct(row[s]["fraction_masked"].get<double>()) << " | " << pct(row[s]["detected"].get<double>())
          << " | " << fmt("%.1f", row[s]["q95_log10_p"].get<double>());
      o << " | " << fmt("%.2f", row["pooled_q95_log10_p"].get<double>())
        << (row["min_entropy"].get<double>() == h ? " (chosen)" : "") << " |\n";
    }
  }
  o << "\nPower at p < 1e-6 on the evaluation sets (never used to choose the threshold):\n\n"
       "| set | test | docs | positions skipped | mean scored units | detected [95% CI] | unfiltered [95% CI] | "
       "gained / lost | median log10 p (unfiltered) | worst log10 p | tokens for 50% | 90% | 99% |\n"
       "|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|\n";
  for (const auto& p : e["power"])
    o << "| " << p["set"].get<std::string>() << " | " << p["test"].get<std::string>() << " | " << p["documents"] << " | "
      << pct(p["fraction_masked"].get<double>()) << " | " << fmt("%.0f", p["mean_tokens_scored"].get<double>()) << " | "
      << pct(p["detected"].get<double>()) << " [" << pct(p["detected_ci95"][0].get<double>()) << ", "
      << pct(p["detected_ci95"][1].get<double>()) << "] | " << pct(p["detected_unfiltered"].get<double>()) << " ["
      << pct(p["detected_unfiltered_ci95"][0].get<double>()) << ", " << pct(p["detected_unfiltered_ci95"][1].get<double>())
      << "] | " << p["gained"] << " / " << p["lost"] << " | " << fmt("%.1f", p["median_log10_p"].get<double>()) << " ("
      << fmt("%.1f", p["median_log10_p_unfiltered"].get<double>()) << ") | "
      << fmt("%.1f", p["worst_log10_p"][0].get<double>()) << " | " << tok_or_dash(p["tokens_for_50"]) << " | "
      << tok_or_dash(p["tokens_for_90"]) << " | " << tok_or_dash(p["tokens_for_99"]) << " |\n";
  o << "\nCalibration with the filter (model text with its prompts; human text without, the first "
    << e["human_documents"] << " documents cut to " << e["human_max_tokens"] << " tokens, "
    << pct(e["human_fraction_masked"].get<double>()) << " of their positions skipped):\n\n";
  std::ostringstream c;
  calibration_table(c, e["calibration"]);
  o << c.str();
}

std::string markdown(const json& r) {
  std::ostringstream o;
  o << "### 1. Calibration on unwatermarked text\n\n";
  calibration_table(o, r["calibration"]);
  o << "\n### 2. Power at p < 1e-6\n\n"
       "| set | test | docs | mean length | full length | detected [95% CI] | median log10 p | tokens for 50% | 90% | 99% |\n"
       "|---|---|---:|---:|---:|---|---:|---:|---:|---:|\n";
  for (const auto& p : r["power"])
    o << "| " << p["set"].get<std::string>() << " | " << p["test"].get<std::string>() << " | " << p["documents"] << " | "
      << fmt("%.0f", p["mean_tokens"].get<double>()) << " | " << pct(p["fraction_full_length"].get<double>()) << " | "
      << pct(p["detected"].get<double>()) << " [" << pct(p["detected_ci95"][0].get<double>()) << ", "
      << pct(p["detected_ci95"][1].get<double>()) << "] | " << fmt("%.1f", p["median_log10_p"].get<double>()) << " | "
      << tok_or_dash(p["tokens_for_50"]) << " | " << tok_or_dash(p["tokens_for_90"]) << " | "
      << tok_or_dash(p["tokens_for_99"]) << " |\n";
  o << "\n### 3. Robustness: detected at p < 1e-6 (at p < 1e-3)\n\n| set | test |";
  std::vector<std::string> attacks;
  if (!r["robustness"].empty())
    for (const auto& [k, v] : r["robustness"][0]["attacks"].items()) attacks.push_back(k);
  std::sort(attacks.begin(), attacks.end(), [](const std::string& a, const std::string& b) {
    auto rank = [](const std::string& s) {
      return s == "none" ? 0 : s.rfind("delete", 0) == 0 ? 1 : s.rfind("substitute", 0) == 0 ? 2 : 3;
    };
    return rank(a) != rank(b) ? rank(a) < rank(b) : a < b;
  });
  for (const auto& a : attacks) o << " " << a << " |";
  o << "\n|---|---|";
  for (size_t i = 0; i < attacks.size(); ++i) o << "---|";
  o << "\n";
  for (const auto& row : r["robustness"]) {
    o << "| " << row["set"].get<std::string>() << " | " << row["test"].get<std::string>() << " |";
    for (const auto& a : attacks)
      o << " " << pct(row["attacks"][a]["detected_1e-6"].get<double>()) << " ("
        << pct(row["attacks"][a]["detected_1e-3"].get<double>()) << ") |";
    o << "\n";
  }
  o << "\n### 4. Quality: perplexity under the unwatermarked model (temperature 1)\n\n"
       "| set | docs | tokens | PPL | PPL, first "
    << r["quality"][0]["first_tokens"] << " tokens | mean doc log-PPL ± se |\n|---|---:|---:|---:|---:|---|\n";
  for (const auto& q : r["quality"])
    o << "| " << q["set"].get<std::string>() << " | " << q["documents"] << " | " << q["tokens"] << " | "
      << fmt("%.2f", q["ppl"].get<double>()) << " | " << fmt("%.2f", q["ppl_first_tokens"].get<double>()) << " | "
      << fmt("%.3f", q["mean_doc_log_ppl"].get<double>()) << " ± " << fmt("%.3f", q["se_doc_log_ppl"].get<double>())
      << " |\n";
  o << "\n### 5. Attribution among " << r["attribution"]["accounts"] << " accounts (Holm-corrected)\n\n"
    << "| set | trials | right account ranked first | right account Holm p < 1e-3 | median Holm p, right | min Holm p, best wrong |\n"
       "|---|---:|---:|---:|---:|---:|\n";
  for (const auto& a : r["attribution"]["sets"])
    o << "| " << a["set"].get<std::string>() << " | " << a["trials"] << " | " << pct(a["accuracy"].get<double>()) << " | "
      << pct(a["significant"].get<double>()) << " | " << fmt("%.2g", std::pow(10.0, a["median_log10_p_holm_right"].get<double>()))
      << " | " << fmt("%.2g", std::pow(10.0, a["min_log10_p_holm_best_wrong"].get<double>())) << " |\n";
  if (r.contains("entropy_filter")) entropy_markdown(o, r["entropy_filter"]);
  return o.str();
}

// ---------------------------------------------------------------- main

void parse(int argc, char** argv, Options& o) {
  std::vector<std::string> a(argv + 1, argv + argc);
  for (const auto& s : a)
    if (s == "--quick") {
      o.quick = true;
      o.n_unwm = 48, o.unwm_tokens = 32, o.n_power_main = 16, o.n_power = 8, o.max_tokens = 48;
      o.n_human = 100, o.attr_trials = 4, o.attr_accounts = 100, o.attr_tokens = 48, o.forward_check = 1;
      o.cache_dir = "build-wm/wm_eval_cache_quick";
    }
  for (size_t i = 0; i < a.size(); ++i) {
    const std::string& k = a[i];
    if (k == "--quick") continue;
    check(i + 1 < a.size(), k, ": needs a value");
    const std::string v = a[++i];
    if (k == "--model") o.model = v;
    else if (k == "--prompts") o.prompts_file = v;
    else if (k == "--cache") o.cache_dir = v;
    else if (k == "--out") o.out = v;
    else if (k == "--markdown") o.markdown = v;
    else if (k == "--threads") o.threads = std::stoi(v);
    else if (k == "--batch") o.batch = std::stoll(v);
    else if (k == "--n-unwm") o.n_unwm = std::stoi(v);
    else if (k == "--unwm-tokens") o.unwm_tokens = std::stoll(v);
    else if (k == "--n-power-main") o.n_power_main = std::stoi(v);
    else if (k == "--n-power") o.n_power = std::stoi(v);
    else if (k == "--n-power-fixed") o.n_power_fixed = std::stoi(v);
    else if (k == "--max-tokens") o.max_tokens = std::stoll(v);
    else if (k == "--n-human") o.n_human = std::stoi(v);
    else if (k == "--human-roots") o.human_roots = v;
    else if (k == "--attr-trials") o.attr_trials = std::stoi(v);
    else if (k == "--attr-accounts") o.attr_accounts = std::stoi(v);
    else if (k == "--attr-tokens") o.attr_tokens = std::stoll(v);
    else if (k == "--forward-check") o.forward_check = std::stoi(v);
    else if (k == "--n-tune") o.n_tune = std::stoi(v);
    else if (k == "--min-entropy") o.min_entropy = std::stod(v);
    else if (k == "--entropy-human-docs") o.entropy_human_docs = std::stoi(v);
    else if (k == "--entropy-human-tokens") o.entropy_human_tokens = std::stoll(v);
    else fail(k, ": unknown option (see the comment at the top of bench/watermark_eval.cpp)");
  }
}

std::string cpu_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

int run(int argc, char** argv) {
  auto t_start = clk::now();
  Ctx cx;
  parse(argc, argv, cx.o);
  const Options& o = cx.o;
  torch::set_num_threads(o.threads);
  cx.m = load_model(o.model);
  check(cx.m.tokenizer != nullptr && !cx.m.chat_template.empty(), o.model, ": needs a tokenizer and a chat template");
  for (int32_t e : cx.m.eos_ids) cx.eos.insert(e);
  cx.key = named_key("retort watermark evaluation key v1");
  cx.defs_id = hash_definitions_id(cx);
  cx.wrong_key = named_key("retort watermark evaluation: an unrelated key");
  cx.prompts = o.prompts_file.empty() ? builtin_prompts() : file_prompts(o.prompts_file);
  ChatTemplate tpl = ChatTemplate::from_jinja(cx.m.chat_template, *cx.m.tokenizer);
  for (const auto& ms : cx.prompts)
    cx.prompt_ids.push_back(cx.m.tokenizer->encode(tpl.render(ms, true), /*parse_special=*/true, /*add_bos=*/false));
  const int64_t n_vocab = cx.m.hparams.n_vocab;
  if (o.n_power_main > static_cast<int>(cx.prompts.size()))
    std::fprintf(stderr, "warning: %d documents per set but %zu prompts: Gumbel (deterministic given the context) "
                 "repeats documents\n", o.n_power_main, cx.prompts.size());

  // ---- generation
  std::vector<GenSet> sets;
  auto add = [&](std::string name, std::string scheme, std::string ctx, double delta, int n, int64_t max_tokens) {
    GenSet s;
    s.name = std::move(name), s.scheme = std::move(scheme), s.context = std::move(ctx), s.delta = delta, s.n = n;
    s.max_tokens = max_tokens;
    sets.push_back(std::move(s));
  };
  add("kgw_self_d2", "kgw", "selfhash", 2, o.n_power_main, o.max_tokens);
  add("none", "none", "", 0, o.n_unwm, o.unwm_tokens);
  add("kgw_left_d2", "kgw", "lefthash", 2, o.n_power, o.max_tokens);
  add("gumbel", "gumbel", "", 0, o.n_power, o.max_tokens);
  add("synthid", "synthid", "", 0, o.n_power, o.max_tokens);
  add("kgw_self_d1", "kgw", "selfhash", 1, o.n_power, o.max_tokens);
  add("kgw_self_d4", "kgw", "selfhash", 4, o.n_power, o.max_tokens);
  // The power target reads "completions of 200 tokens": the same KGW setting with EOS banned
  // until max_tokens, so every document is a full-length answer (not only those that ran long).
  if (o.n_power_fixed > 0) {
    add("kgw_self_d2_fixed", "kgw", "selfhash", 2, o.n_power_fixed, o.max_tokens);
    sets.back().min_tokens = o.max_tokens;
    add("kgw_left_d2_fixed", "kgw", "lefthash", 2, o.n_power_fixed, o.max_tokens);
    sets.back().min_tokens = o.max_tokens;
  }
  std::vector<std::string> accounts;
  for (int a = 0; a < o.attr_accounts; ++a) {
    char b[32];
    std::snprintf(b, sizeof b, "acct-%04d", a);
    accounts.push_back(b);
  }
  auto account_of = [&](int i) { return accounts[(static_cast<size_t>(i) * 7919 + 13) % accounts.size()]; };
  add("attr_kgw", "kgw", "selfhash", 2, o.attr_trials, o.attr_tokens);
  sets.back().account = account_of;
  add("attr_gumbel", "gumbel", "", 0, o.attr_trials, o.attr_tokens);
  sets.back().account = account_of;

  std::map<std::string, std::vector<Doc>> docs;
  for (const auto& s : sets) docs[s.name] = generate_set(cx, s);
  // The entropy filter's tuning sets: the _fixed settings on the prompts after the _fixed sets' (their
  // own seeds too), generated here but scored only in section 6's threshold choice.
  const bool entropy_section = o.n_power_fixed > 0 && (o.n_tune > 0 || o.min_entropy >= 0);
  if (entropy_section && o.n_tune > 0) {
    if (o.n_power_fixed + o.n_tune > static_cast<int>(cx.prompts.size()))
      std::fprintf(stderr, "warning: --n-power-fixed %d + --n-tune %d > %zu prompts: tuning prompts overlap the "
                   "evaluation's\n", o.n_power_fixed, o.n_tune, cx.prompts.size());
    for (const char* ctx : {"selfhash", "lefthash"}) {
      GenSet t;
      t.name = std::string("kgw_") + (ctx[0] == 's' ? "self" : "left") + "_d2_tune";
      t.scheme = "kgw", t.context = ctx, t.delta = 2, t.n = o.n_tune;
      t.max_tokens = t.min_tokens = o.max_tokens;
      t.prompt_offset = o.n_power_fixed;
      docs[t.name] = generate_set(cx, t);
    }
  }
  const auto t_gen = clk::now();

  json R;
  R["machine"] = {{"cpu", cpu_name()}, {"hardware_threads", std::thread::hardware_concurrency()}, {"torch_threads", o.threads}};
  R["model"] = cx.m.path;
  R["config"] = {{"temperature", 1.0}, {"top_k", 0}, {"top_p", 1.0}, {"prompts", cx.prompts.size()},
                 {"prompts_source", o.prompts_file.empty() ? "built-in (12 templates x 40 topics)" : o.prompts_file},
                 {"n_unwm", o.n_unwm}, {"unwm_tokens", o.unwm_tokens}, {"n_power_main", o.n_power_main},
                 {"n_power", o.n_power}, {"n_power_fixed", o.n_power_fixed}, {"n_tune", o.n_tune}, {"max_tokens", o.max_tokens}, {"attr_trials", o.attr_trials},
                 {"attr_accounts", o.attr_accounts}, {"attr_tokens", o.attr_tokens}, {"quick", o.quick}, {"key_commitment", cx.key.commitment()},
                 {"kgw", {{"gamma", 0.25}, {"selfhash_h", 4}, {"lefthash_h", 1}}}, {"gumbel_h", 4},
                 {"synthid", {{"layers", 30}, {"ngram_len", 5}, {"keys", "derive_synthid_keys(key, 30)"}}}};
  R["generation"] = cx.gen_stats;

  // ---- 1. calibration
  const std::vector<std::string> test_names = {"kgw_selfhash", "kgw_lefthash", "gumbel", "synthid_mean", "synthid_weighted"};
  HumanCorpus human = collect_human(cx);
  R["human_corpus"] = human.stats;
  std::vector<std::span<const int32_t>> human_spans(human.docs.begin(), human.docs.end());
  R["calibration"] = json::array();
  for (const auto& name : test_names) {
    Test t = make_test(name, cx.key);
    json a = calibration_row(t, spans_of(docs["none"]), 11);
    a["corpus"] = "model, unwatermarked";
    R["calibration"].push_back(a);
    json b = calibration_row(t, human_spans, 12);
    b["corpus"] = "human (Debian docs)";
    R["calibration"].push_back(b);
    json c = calibration_row(t, spans_of(docs["none"]), 14, &cx.key);
    c["corpus"] = "model, unwatermarked, one key per doc";
    R["calibration"].push_back(c);
    json d = calibration_row(t, human_spans, 15, &cx.key);
    d["corpus"] = "human (Debian docs), one key per doc";
    R["calibration"].push_back(d);
  }
  // Wrong key on watermarked text: each watermarked set scored with an unrelated key.
  auto tests_for = [](const GenSet& s) -> std::vector<std::string> {
    if (s.scheme == "kgw") return {s.context == "selfhash" ? "kgw_selfhash" : "kgw_lefthash"};
    if (s.scheme == "gumbel") return {"gumbel"};
    if (s.scheme == "synthid") return {"synthid_mean", "synthid_weighted"};
    return {};
  };
  for (const auto& s : sets) {
    if (s.scheme == "none" || s.account) continue;
    for (const auto& name : tests_for(s)) {
      json w = calibration_row(make_test(name, cx.wrong_key), spans_of(docs[s.name]), 13);
      w["corpus"] = "wrong key on " + s.name;
      R["calibration"].push_back(w);
    }
  }

  // ---- 2. power and 3. robustness
  std::vector<int32_t> pool;  // unwatermarked tokens for dilution
  for (const auto& d : docs["none"]) pool.insert(pool.end(), d.tokens.begin(), d.tokens.end());
  std::vector<int64_t> grid;
  for (int64_t L = 5; L < o.max_tokens; L += 5) grid.push_back(L);
  grid.push_back(o.max_tokens);
  R["power"] = json::array();
  R["robustness"] = json::array();
  for (const auto& s : sets) {
    if (s.scheme == "none" || s.account) continue;
    const auto& D = docs[s.name];
    for (const auto& name : tests_for(s)) {
      Test t = make_test(name, cx.key);
      std::vector<int64_t> det_at(grid.size(), 0);
      std::vector<double> full_log10;
      int64_t det = 0, full = 0, det_full = 0, toks = 0;
      for (const auto& d : D) {
        std::vector<double> lp = prefix_log10_p(t, d.tokens, grid);
        for (size_t g = 0; g < grid.size(); ++g) det_at[g] += lp[g] < kPowerLog10;
        const bool is_full = static_cast<int64_t>(d.tokens.size()) >= o.max_tokens;
        full += is_full;
        det += lp.back() < kPowerLog10;
        det_full += is_full && lp.back() < kPowerLog10;
        full_log10.push_back(lp.back());
        toks += static_cast<int64_t>(d.tokens.size());
      }
      const int64_t n = static_cast<int64_t>(D.size());
      auto first_reaching = [&](double q) -> json {
        for (size_t g = 0; g < grid.size(); ++g)
          if (det_at[g] >= q * n) return grid[g];
        return nullptr;
      };
      json curve = json::array();
      for (size_t g = 0; g < grid.size(); ++g) curve.push_back({grid[g], double(det_at[g]) / std::max<int64_t>(1, n)});
      auto [lo, hi] = clopper_pearson(det, n);
      json row = {{"set", s.name},
                  {"test", name},
                  {"documents", n},
                  {"mean_tokens", double(toks) / std::max<int64_t>(1, n)},
                  {"fraction_full_length", double(full) / std::max<int64_t>(1, n)},
                  {"detected", double(det) / std::max<int64_t>(1, n)},
                  {"detected_ci95", {lo, hi}},
                  {"detected_among_full_length", full ? json(double(det_full) / full) : json(nullptr)},
                  {"median_log10_p", quantile(full_log10, 0.5)},
                  {"tokens_for_50", first_reaching(0.5)},
                  {"tokens_for_90", first_reaching(0.9)},
                  {"tokens_for_99", first_reaching(0.99)},
                  {"curve", curve}};
      if (s.name == "kgw_self_d2" || s.name == "kgw_self_d2_fixed") {
        // The same documents decoded to text and re-tokenized, as `retort watermark detect` sees them.
        int64_t det_retok = 0;
        for (const auto& d : D) {
          std::vector<int32_t> ids = cx.m.tokenizer->encode(cx.m.tokenizer->decode(d.tokens), false, false);
          det_retok += score_tokens(t, ids, 0).log10_p < kPowerLog10;
        }
        row["detected_retokenized"] = double(det_retok) / std::max<int64_t>(1, n);
      }
      R["power"].push_back(row);

      json attacks = json::object();
      auto attack_rate = [&](const std::string& label, const std::function<std::vector<int32_t>(size_t)>& edit) {
        int64_t d6 = 0, d3 = 0;
        std::vector<double> l10;
        for (size_t i = 0; i < D.size(); ++i) {
          Score sc = score_tokens(t, edit(i), 0);
          d6 += sc.ok && sc.log10_p < kPowerLog10;
          d3 += sc.ok && sc.log10_p < kFprLog10;
          l10.push_back(sc.log10_p);
        }
        attacks[label] = {{"detected_1e-6", double(d6) / std::max<int64_t>(1, n)},
                          {"detected_1e-3", double(d3) / std::max<int64_t>(1, n)},
                          {"median_log10_p", quantile(l10, 0.5)}};
      };
      attack_rate("none", [&](size_t i) { return D[i].tokens; });
      for (double f : {0.1, 0.25, 0.5}) {
        const std::string pctl = std::to_string(static_cast<int>(std::lround(100 * f))) + "%";
        attack_rate("delete " + pctl, [&](size_t i) {
          std::mt19937_64 rng(splitmix(i * 1000 + static_cast<uint64_t>(100 * f)));
          return delete_fraction(D[i].tokens, f, rng);
        });
        attack_rate("substitute " + pctl, [&](size_t i) {
          std::mt19937_64 rng(splitmix(i * 1000 + 500 + static_cast<uint64_t>(100 * f)));
          return substitute_fraction(D[i].tokens, f, n_vocab, rng);
        });
      }
      attack_rate("within 3x unwatermarked", [&](size_t i) { return dilute(D[i].tokens, pool, i); });
      R["robustness"].push_back({{"set", s.name}, {"test", name}, {"documents", n}, {"attacks", attacks}});
    }
  }

  // ---- 4. quality
  R["quality"] = json::array();
  double worst = 0;
  for (const auto& s : sets) {
    if (s.account) continue;
    R["quality"].push_back(quality_row(s.name, docs[s.name], o.unwm_tokens));
    worst = std::max(worst, forward_check(cx, docs[s.name], o.forward_check));
  }
  R["quality_forward_check"] = {{"documents_per_set", o.forward_check}, {"max_abs_logprob_diff", worst},
                                {"note", "per-token log p from generation vs one full forward of prompt + completion"}};

  // ---- 5. attribution
  json attr = {{"accounts", accounts.size()}, {"sets", json::array()}};
  for (const auto& s : sets) {
    if (!s.account) continue;
    Test t = make_test(s.scheme == "kgw" ? "kgw_selfhash" : "gumbel", cx.key);
    int64_t right = 0, sig = 0;
    std::vector<double> right_l10, wrong_l10;
    json trials = json::array();
    for (int i = 0; i < s.n; ++i) {
      const std::string acc = s.account(i);
      std::vector<AccountDetection> res = detect_accounts(cx.key, accounts, t.det, {docs[s.name][i].tokens});
      size_t best = 0;
      double best_wrong = 0;
      double right_p = 0;
      for (size_t a = 0; a < res.size(); ++a) {
        if (res[a].log10_p_holm < res[best].log10_p_holm) best = a;
        if (res[a].account == acc) right_p = res[a].log10_p_holm;
        else best_wrong = std::min(best_wrong, res[a].log10_p_holm);
      }
      right += res[best].account == acc;
      sig += right_p < kFprLog10;
      right_l10.push_back(right_p);
      wrong_l10.push_back(best_wrong);
      trials.push_back({{"account", acc}, {"tokens", docs[s.name][i].tokens.size()}, {"log10_p_holm_right", right_p},
                        {"log10_p_holm_best_wrong", best_wrong}, {"top", res[best].account}});
    }
    attr["sets"].push_back({{"set", s.name},
                            {"test", t.name},
                            {"trials", s.n},
                            {"accuracy", double(right) / std::max(1, s.n)},
                            {"significant", double(sig) / std::max(1, s.n)},
                            {"median_log10_p_holm_right", quantile(right_l10, 0.5)},
                            {"max_log10_p_holm_right", right_l10.empty() ? 0.0 : *std::max_element(right_l10.begin(), right_l10.end())},
                            {"min_log10_p_holm_best_wrong", wrong_l10.empty() ? 0.0 : *std::min_element(wrong_l10.begin(), wrong_l10.end())},
                            {"trial_results", trials}});
  }
  {
    // No watermark: does any account light up on unwatermarked documents?
    Test t = make_test("kgw_selfhash", cx.key);
    int64_t any = 0, n = 0;
    double min_l10 = 0;
    for (size_t i = 0; i < docs["none"].size() && n < o.attr_trials; ++i) {
      if (docs["none"][i].tokens.size() < 8) continue;
      std::vector<AccountDetection> res = detect_accounts(cx.key, accounts, t.det, {docs["none"][i].tokens});
      double m = 0;
      for (const auto& a : res) m = std::min(m, a.log10_p_holm);
      any += m < kFprLog10;
      min_l10 = std::min(min_l10, m);
      ++n;
    }
    attr["unwatermarked"] = {{"documents", n}, {"any_account_holm_p_below_1e-3", any}, {"min_log10_p_holm", min_l10}};
  }
  R["attribution"] = attr;

  // ---- 6. entropy-filtered KGW (SWEET): score only positions where the model's entropy >= H
  if (entropy_section) {
    const auto t_ent = clk::now();
    json E;
    auto prompts_of = [&](const std::vector<Doc>& D) {
      std::vector<std::vector<int32_t>> p;
      for (const auto& d : D) p.push_back(cx.prompt_ids[d.prompt_index]);
      return p;
    };
    std::map<std::string, std::vector<std::vector<double>>> H;
    auto H_of = [&](const std::string& set) -> const std::vector<std::vector<double>>& {
      if (!H.count(set)) H[set] = cached_entropies(cx, set, prompts_of(docs[set]), spans_of(docs[set]));
      return H[set];
    };
    // Detection of one set at one threshold: log10 p per document (0 when too short) and the counts.
    struct At {
      std::vector<double> log10_p;
      int64_t detected = 0, scored = 0, masked = 0, windowed = 0;
    };
    auto score_at = [&](const std::string& set, const Test& t, double h) {
      At a;
      const auto& D = docs[set];
      const auto& HS = H_of(set);
      const int64_t w = detector_window(t.det);
      for (size_t i = 0; i < D.size(); ++i) {
        DetectionResult r = detect_tokens(t.key, t.det, D[i].tokens, entropy_mask(HS[i], h));
        const double l = r.too_short ? 0.0 : r.log10_p;
        a.log10_p.push_back(l);
        a.detected += l < kPowerLog10;
        a.scored += r.tokens_scored;
        a.masked += r.tokens_masked;
        a.windowed += std::max<int64_t>(0, r.tokens - w);
      }
      return a;
    };
    const std::vector<std::pair<std::string, std::string>> tune_sets = {{"kgw_self_d2_tune", "kgw_selfhash"},
                                                                         {"kgw_left_d2_tune", "kgw_lefthash"}};
    const std::vector<std::pair<std::string, std::string>> eval_sets = {{"kgw_self_d2_fixed", "kgw_selfhash"},
                                                                         {"kgw_left_d2_fixed", "kgw_lefthash"}};
    const std::vector<double> grid_h = {0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0};
    double h_star = o.min_entropy;
    E["threshold_source"] = o.min_entropy >= 0 ? "--min-entropy" : "tuning sets";
    if (o.n_tune > 0) {
      // Criterion: the 95th percentile of log10 p over both tuning sets pooled (the worst 5% of
      // documents is where detection at 1e-6 is lost; a rarer quantile would rest on one or two
      // documents); the lowest wins, ties to the smaller threshold.
      json rows = json::array();
      double best = INFINITY;
      for (double h : grid_h) {
        json row = {{"min_entropy", h}};
        std::vector<double> pooled;
        for (const auto& [set, test] : tune_sets) {
          At a = score_at(set, make_test(test, cx.key), h);
          const double n = std::max<double>(1, double(a.log10_p.size()));
          row[set] = {{"detected", a.detected / n},
                      {"median_log10_p", quantile(a.log10_p, 0.5)},
                      {"q95_log10_p", quantile(a.log10_p, 0.95)},
                      {"max_log10_p", *std::max_element(a.log10_p.begin(), a.log10_p.end())},
                      {"mean_tokens_scored", a.scored / n},
                      {"fraction_masked", a.windowed ? double(a.masked) / a.windowed : 0.0}};
          pooled.insert(pooled.end(), a.log10_p.begin(), a.log10_p.end());
        }
        const double crit = quantile(pooled, 0.95);
        row["pooled_q95_log10_p"] = crit;
        if (o.min_entropy < 0 && crit < best - 1e-12) best = crit, h_star = h;
        rows.push_back(row);
      }
      E["tuning"] = {{"sets", {tune_sets[0].first, tune_sets[1].first}},
                     {"documents_per_set", o.n_tune},
                     {"prompts", {o.n_power_fixed, o.n_power_fixed + o.n_tune}},
                     {"criterion", "lowest 95th percentile of log10 p over both tuning sets pooled"},
                     {"grid", rows}};
    }
    E["min_entropy"] = h_star;
    std::fprintf(stderr, "entropy filter: min_entropy %.2f nats (%s)\n", h_star, E["threshold_source"].get<std::string>().c_str());

    // Power on the evaluation sets at the chosen threshold, next to the unfiltered detector on the same documents.
    E["power"] = json::array();
    for (const auto& [set, test] : eval_sets) {
      const Test t = make_test(test, cx.key);
      const auto& D = docs[set];
      const auto masks = masks_at(H_of(set), h_star);
      std::vector<int64_t> det_at(grid.size(), 0);
      std::vector<double> l_f, l_u;
      int64_t det_f = 0, det_u = 0, gained = 0, lost = 0, scored = 0, masked = 0, windowed = 0;
      for (size_t i = 0; i < D.size(); ++i) {
        std::vector<double> lp = prefix_log10_p(t, D[i].tokens, grid, masks[i]);
        for (size_t g = 0; g < grid.size(); ++g) det_at[g] += lp[g] < kPowerLog10;
        DetectionResult rf = detect_tokens(t.key, t.det, D[i].tokens, masks[i]);
        DetectionResult ru = detect_tokens(t.key, t.det, D[i].tokens);
        const double f = rf.too_short ? 0.0 : rf.log10_p, u = ru.too_short ? 0.0 : ru.log10_p;
        l_f.push_back(f), l_u.push_back(u);
        det_f += f < kPowerLog10, det_u += u < kPowerLog10;
        gained += f < kPowerLog10 && !(u < kPowerLog10);
        lost += !(f < kPowerLog10) && u < kPowerLog10;
        scored += rf.tokens_scored, masked += rf.tokens_masked;
        windowed += std::max<int64_t>(0, rf.tokens - detector_window(t.det));
      }
      const int64_t n = static_cast<int64_t>(D.size());
      auto first_reaching = [&](double q) -> json {
        for (size_t g = 0; g < grid.size(); ++g)
          if (det_at[g] >= q * n) return grid[g];
        return nullptr;
      };
      auto [lo, hi] = clopper_pearson(det_f, n);
      auto [ulo, uhi] = clopper_pearson(det_u, n);
      // The whole grid on these documents too — reported, never used to choose the threshold.
      json sweep = json::array();
      for (double h : grid_h) {
        At a = score_at(set, t, h);
        sweep.push_back({{"min_entropy", h}, {"detected", double(a.detected) / std::max<int64_t>(1, n)},
                         {"q95_log10_p", quantile(a.log10_p, 0.95)}});
      }
      std::vector<double> worst = l_f;
      std::sort(worst.rbegin(), worst.rend());
      worst.resize(std::min<size_t>(worst.size(), 5));
      E["power"].push_back({{"set", set},
                            {"test", test},
                            {"documents", n},
                            {"min_entropy", h_star},
                            {"fraction_masked", windowed ? double(masked) / windowed : 0.0},
                            {"mean_tokens_scored", double(scored) / std::max<int64_t>(1, n)},
                            {"detected", double(det_f) / std::max<int64_t>(1, n)},
                            {"detected_count", det_f},
                            {"detected_ci95", {lo, hi}},
                            {"detected_unfiltered", double(det_u) / std::max<int64_t>(1, n)},
                            {"detected_unfiltered_count", det_u},
                            {"detected_unfiltered_ci95", {ulo, uhi}},
                            {"gained", gained},
                            {"lost", lost},
                            {"median_log10_p", quantile(l_f, 0.5)},
                            {"median_log10_p_unfiltered", quantile(l_u, 0.5)},
                            {"worst_log10_p", worst},
                            {"tokens_for_50", first_reaching(0.5)},
                            {"tokens_for_90", first_reaching(0.9)},
                            {"tokens_for_99", first_reaching(0.99)},
                            {"grid_on_these_documents_not_used_to_choose", sweep}});
    }

    // Calibration with the filter on unwatermarked text: the model's own (with its prompts) and human (no prompt).
    const auto masks_none = masks_at(H_of("none"), h_star);
    std::vector<std::span<const int32_t>> human_cut;
    for (size_t i = 0; i < human_spans.size() && static_cast<int>(i) < o.entropy_human_docs; ++i)
      human_cut.push_back(human_spans[i].first(std::min<size_t>(human_spans[i].size(), size_t(o.entropy_human_tokens))));
    std::vector<std::vector<int32_t>> no_prompts(human_cut.size());
    const auto H_human = cached_entropies(cx, "human", no_prompts, human_cut);
    const auto masks_human = masks_at(H_human, h_star);
    E["calibration"] = json::array();
    for (const std::string name : {"kgw_selfhash", "kgw_lefthash"}) {
      Test t = make_test(name, cx.key);
      json a = calibration_row(t, spans_of(docs["none"]), 21, nullptr, &masks_none);
      a["corpus"] = "model, unwatermarked";
      E["calibration"].push_back(a);
      json b = calibration_row(t, human_cut, 22, nullptr, &masks_human);
      b["corpus"] = "human (Debian docs)";
      E["calibration"].push_back(b);
      json c = calibration_row(t, spans_of(docs["none"]), 24, &cx.key, &masks_none);
      c["corpus"] = "model, unwatermarked, one key per doc";
      E["calibration"].push_back(c);
      json d = calibration_row(t, human_cut, 25, &cx.key, &masks_human);
      d["corpus"] = "human (Debian docs), one key per doc";
      E["calibration"].push_back(d);
    }
    for (const auto& [set, test] : eval_sets) {
      const auto masks = masks_at(H_of(set), h_star);
      json w = calibration_row(make_test(test, cx.wrong_key), spans_of(docs[set]), 23, nullptr, &masks);
      w["corpus"] = "wrong key on " + set;
      E["calibration"].push_back(w);
    }
    int64_t human_masked = 0, human_windowed = 0;
    for (size_t i = 0; i < masks_human.size(); ++i)
      for (size_t p = 1; p < masks_human[i].size(); ++p) human_masked += !masks_human[i][p], ++human_windowed;
    E["human_fraction_masked"] = human_windowed ? double(human_masked) / human_windowed : 0.0;
    E["human_documents"] = human_cut.size();
    E["human_max_tokens"] = o.entropy_human_tokens;
    E["quality"] = "detector-side only: the texts are the same as in the other tables (section 4's perplexities are unchanged)";
    E["entropy_seconds"] = cx.entropy_seconds;
    E["entropy_rows_per_s"] = cx.entropy_seconds > 0 ? cx.entropy_rows / cx.entropy_seconds : 0.0;
    E["seconds"] = std::chrono::duration<double>(clk::now() - t_ent).count();
    R["entropy_filter"] = E;
  }
  R["seconds"] = {{"generation", std::chrono::duration<double>(t_gen - t_start).count()},
                  {"total", std::chrono::duration<double>(clk::now() - t_start).count()}};

  const std::string text = R.dump(2) + "\n";
  if (o.out.empty()) std::fwrite(text.data(), 1, text.size(), stdout);
  else write_file_atomic(o.out, text);
  if (!o.markdown.empty()) write_file_atomic(o.markdown, markdown(R));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
