// bench/audit_controls.cpp — null calibration of the open ("reading mode") radioactivity test across many
// keys (issue 14, deliverable 5): control models that never saw a key must give uniform (in fact
// super-uniform) p-values, and none may fall below 1e-3.
//
//   build/audit_controls [--keys 100] [--prompts-per-key 4] [--max-tokens 64] [--min-tokens 100]
//       [--cli-min-tokens 100]
//       [--teacher smollm2-135m-instruct] [--readers smollm2-135m-instruct,gemma3-270m]
//       [--prompts data/prompts/heldout.jsonl] [--threads 2] [--batch 32] [--seed 1] [--out FILE.json]
//
// For each of --keys keys K_i (distinct: sha256("retort audit controls v1:<seed>:<i>"), one fresh key per
// test, so the tests are independent): --prompts-per-key chat completions from the teacher with KGW selfhash
// under K_i at the defaults `retort generate --chat --watermark kgw` uses (γ 0.25, δ 2, h 4, temperature 1,
// no truncation), prompts i·P .. i·P + P − 1 (mod the file), each request its own seed and all in one
// batched generate() call. These are "our watermarked texts" of key i, as a texts file of
// {"prompt", "completion"} records would hold them.
//
// Each reader then runs the open test on each key's texts exactly as
//   retort audit radioactivity --suspect READER --texts key_i.jsonl --key-file K_i
// does (defaults: dedup, --min-tokens 100, no --seen): RadioactivityTest with the key holder's (teacher's)
// tokenizer, the prompts' windows as the in_prompt filter, items prefixed with the reader's chat-rendered
// prompt, read_texts_with_suspect() (same- or cross-tokenizer), result("open"). The readers are controls:
//   the clean teacher   it wrote the texts (with the watermark bias added to its logits) but was never
//                       trained on them — the paper's "not radioactive" control;
//   gemma3-270m         another family and tokenizer (cross-tokenizer reading).
// Neither ever saw K_i, so under the test's claim each p-value is a valid p-value and the N of them are
// independent.
//
// Calibration. The reported p = P[Bin(T, γ) >= green] is a discrete tail: under the null it is
// super-uniform (P[p <= u] <= u), not uniform, and a two-sided KS test on it rejects for discreteness alone
// when T is small. So two checks:
//   ks_randomized   two-sided KS of p_rand = P[S > s] + U·P[S = s] (U ~ U(0,1) independent): exactly U(0,1)
//                   when each scored pair is an independent Bernoulli(γ) — the test's own assumption, so
//                   a rejection means the test is miscalibrated in either direction;
//   ks_reported_one_sided  D+ = sup_u (F_n(u) − u) of the reported p: the direction that would make the test
//                   anti-conservative (too many small p); p ≈ exp(−2 n D+²) (Smirnov's asymptotic bound).
// Plus a pooled test: under the null, Σ green over all keys ~ Bin(Σ T, γ) (independent keys), far more
// sensitive to a small systematic excess of green than any single test; and the minimum p against the
// issue's target (no control below 1e-3; with N tests the chance of a min below 1e-3 under the null is
// 1 − (1 − 1e-3)^N ≈ N·1e-3 at most, less for a super-uniform p).
// Positive control: each key's completions, re-tokenized as `retort watermark detect` would, scored with
// their own key (plain detection, dedup) — tiny p-values show the keys and texts are what they claim.
//
// --min-tokens sets the tests' threshold (a p-value is shown only from T scored units on; it does not change
// the p-value). With KGW selfhash the in_text filter drops about two thirds of the positions, so short
// answers give small T: the run in docs/audit.md uses 20; --cli-min-tokens (default 100, the CLI's) only
// counts how many tests `audit radioactivity` would have answered "not enough evidence".
//
// Prints one JSON object and writes it to --out (default bench/results/audit_controls_<UTC date>.json).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bench_util.h"
#include "retort/audit/radioactivity.h"
#include "retort/audit/watermark_detect.h"
#include "retort/decode/generate.h"
#include "retort/io/jsonl.h"
#include "retort/model/runtime_model.h"
#include "retort/protect/keys.h"
#include "retort/protect/kgw.h"
#include "retort/text/chat_template.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/parallel.h"
#include "retort/util/stats.h"

using namespace retort;
using OJson = nlohmann::ordered_json;
using retort_bench::clk;
using retort_bench::secs_since;
using retort_bench::utc_date;

namespace {

struct Options {
  int keys = 100;
  int prompts_per_key = 4;
  int64_t max_tokens = 64;
  int64_t min_tokens = 100;  // `audit radioactivity --min-tokens` default
  int64_t cli_min_tokens = 100;  // the CLI's default, for the "not enough evidence there" count
  std::string teacher = "smollm2-135m-instruct";
  std::vector<std::string> readers = {"smollm2-135m-instruct", "gemma3-270m"};
  std::string prompts = "data/prompts/heldout.jsonl";
  int threads = 2;
  int64_t batch = 32;
  uint64_t seed = 1;
  std::string out;
};


uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string x;
  while (std::getline(ss, x, sep))
    if (!x.empty()) out.push_back(x);
  return out;
}

// The i-th test key: public and reproducible (this is a benchmark), distinct for distinct (seed, i).
WatermarkKey bench_key(uint64_t seed, int i) {
  const std::string name = "retort audit controls v1:" + std::to_string(seed) + ":" + std::to_string(i);
  WatermarkKey k;
  k.bytes = sha256(reinterpret_cast<const uint8_t*>(name.data()), name.size());
  return k;
}

// Randomized p of the discrete binomial test: P[S > s] + u · P[S = s] (as bench/watermark_eval.cpp).
double randomized_binomial_p(int64_t s, int64_t n, double pi, double u) {
  const double ge = std::exp(log_binomial_sf(s, n, pi)), gt = std::exp(log_binomial_sf(s + 1, n, pi));
  return gt + u * (ge - gt);
}

// One-sided KS: D+ = sup_u (F_n(u) − u) (too many small p-values), p ≈ exp(−2 n D+²).
std::pair<double, double> ks_plus(std::vector<double> x) {
  if (x.empty()) return {0.0, 1.0};
  std::sort(x.begin(), x.end());
  const double n = double(x.size());
  double d = 0;
  for (size_t i = 0; i < x.size(); ++i) d = std::max(d, double(i + 1) / n - x[i]);
  return {d, std::min(1.0, std::exp(-2 * n * d * d))};
}

double quantile(std::vector<double> v, double q) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const double pos = q * double(v.size() - 1);
  const size_t i = size_t(pos);
  const double f = pos - double(i);
  return i + 1 < v.size() ? v[i] * (1 - f) + v[i + 1] * f : v[i];
}

OJson num(double x) { return std::isfinite(x) ? OJson(x) : OJson(nullptr); }

std::vector<std::string> read_prompts(const std::string& path) {
  std::vector<std::string> out;
  for_each_jsonl_object(path, [&](const nlohmann::json& j, int64_t lineno) {
    check(j.contains("prompt") && j["prompt"].is_string(), path, ":", lineno, ": needs a \"prompt\" string");
    out.push_back(j["prompt"].get<std::string>());
  });
  check(!out.empty(), path, ": no prompts");
  return out;
}

void parse(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    check(i + 1 < argc, k, ": needs a value");
    const std::string v = argv[++i];
    if (k == "--keys") o.keys = std::stoi(v);
    else if (k == "--prompts-per-key") o.prompts_per_key = std::stoi(v);
    else if (k == "--max-tokens") o.max_tokens = std::stoll(v);
    else if (k == "--min-tokens") o.min_tokens = std::stoll(v);
    else if (k == "--cli-min-tokens") o.cli_min_tokens = std::stoll(v);
    else if (k == "--teacher") o.teacher = v;
    else if (k == "--readers") o.readers = split(v, ',');
    else if (k == "--prompts") o.prompts = v;
    else if (k == "--threads") o.threads = std::stoi(v);
    else if (k == "--batch") o.batch = std::stoll(v);
    else if (k == "--seed") o.seed = std::stoull(v);
    else if (k == "--out") o.out = v;
    else fail("unknown option ", k);
  }
  check(o.keys >= 1 && o.prompts_per_key >= 1 && o.max_tokens >= 1 && !o.readers.empty(), "bad options");
}


// One key's texts file: (prompt, watermarked completion) records.
struct KeyTexts {
  WatermarkKey key;
  std::vector<std::string> prompts, texts;
};

// The reader's tokens before a record's text, as `audit radioactivity` builds them for a record with a
// "prompt": the reader's chat template on {user: prompt} when it has one, else the prompt with BOS.
std::vector<int32_t> reader_prefix(const RuntimeLoaded& m, const std::string& prompt) {
  const Tokenizer& tok = *m.tokenizer;
  if (ChatTemplate::available(m.chat_template, tok))
    return ChatTemplate::from_jinja(m.chat_template, tok).encode({{"user", prompt}}, tok);
  return tok.encode(prompt, /*parse_special=*/false, /*add_bos=*/true);
}

OJson reader_row(const std::string& name, const RuntimeLoaded& reader, const Tokenizer& ours,
                 const std::vector<KeyTexts>& keys, const DetectorConfig& cfg, uint64_t seed, int64_t cli_min_tokens) {
  const auto t0 = clk::now();
  std::mt19937_64 rng(splitmix(seed ^ 0x5eed));
  std::uniform_real_distribution<double> unif(0.0, 1.0);
  std::vector<double> p_exact, p_rand, log10s;
  std::vector<int64_t> scored_per_test;  // T of every test, key order (too-short ones included)
  int64_t too_short = 0, scored_sum = 0, green_sum = 0, below_1e3 = 0;
  RadioactivityCounts tot;
  double min_log10 = 0;
  int min_key = -1;
  for (size_t i = 0; i < keys.size(); ++i) {
    const KeyTexts& kt = keys[i];
    RadioactivityTest test(kt.key, cfg);
    WindowSet prompt_windows(test.window());
    for (const std::string& p : kt.prompts)
      prompt_windows.add_windows_of(ours.encode(p, /*parse_special=*/false, /*add_bos=*/false));
    test.set_prompt_windows(&prompt_windows);
    std::vector<ReadingItem> items;
    for (size_t j = 0; j < kt.texts.size(); ++j) {
      ReadingItem it;
      it.prefix = reader_prefix(reader, kt.prompts[j]);
      it.text = kt.texts[j];
      items.push_back(std::move(it));
    }
    read_texts_with_suspect(*reader.model, *reader.tokenizer, ours, items, test);
    const RadioactivityResult r = test.result("open");
    const RadioactivityCounts& c = r.counts;
    tot.positions += c.positions, tot.no_window += c.no_window, tot.in_prompt += c.in_prompt;
    tot.unseen += c.unseen, tot.unscorable += c.unscorable, tot.in_text += c.in_text;
    tot.repeated += c.repeated, tot.scored += c.scored;
    scored_per_test.push_back(r.test.tokens_scored);
    const double u = unif(rng);  // drawn for every key, so the stream does not depend on which are too short
    if (r.test.too_short) {
      ++too_short;
      continue;
    }
    const int64_t green = int64_t(std::llround(r.test.score));
    p_exact.push_back(std::pow(10.0, r.test.log10_p));
    log10s.push_back(r.test.log10_p);
    p_rand.push_back(randomized_binomial_p(green, r.test.tokens_scored, cfg.kgw.gamma, u));
    scored_sum += r.test.tokens_scored, green_sum += green;
    below_1e3 += r.test.log10_p < -3;
    if (r.test.log10_p < min_log10 || min_key < 0) min_log10 = r.test.log10_p, min_key = int(i);
    if ((i + 1) % 10 == 0) std::fprintf(stderr, "  [%s] %zu/%zu keys, %.0f s\n", name.c_str(), i + 1, keys.size(), secs_since(t0));
  }
  const int64_t n = int64_t(p_exact.size());
  const KsResult ks_r = ks_uniform(p_rand), ks_e = ks_uniform(p_exact);
  const auto [dplus, dplus_p] = ks_plus(p_exact);
  const auto [dplus_r, dplus_r_p] = ks_plus(p_rand);
  const double g = cfg.kgw.gamma;
  const double pooled_rate = scored_sum ? double(green_sum) / double(scored_sum) : NAN;
  const double pooled_z = scored_sum ? (double(green_sum) - g * double(scored_sum)) / std::sqrt(double(scored_sum) * g * (1 - g)) : NAN;
  const double pooled_log10_p = scored_sum ? log_binomial_sf(green_sum, scored_sum, g) / std::log(10.0) : 0.0;
  const double nk = double(keys.size());
  auto per_test = [&](int64_t x) { return nk > 0 ? double(x) / nk : 0.0; };
  OJson row;
  row["reader"] = name;
  row["path"] = reader.path;
  row["same_tokenizer"] = same_tokenizer(*reader.tokenizer, ours);
  row["tests"] = int64_t(keys.size());
  row["tests_with_p"] = n;
  row["not_enough_evidence"] = too_short;
  row["not_enough_evidence_fraction"] = nk > 0 ? double(too_short) / nk : 0.0;
  row["not_enough_evidence_at_cli_min_tokens"] = {
      {"min_tokens", cli_min_tokens},
      {"tests", std::count_if(scored_per_test.begin(), scored_per_test.end(),
                              [&](int64_t t) { return t < cli_min_tokens; })}};
  row["mean_scored_pairs"] = n ? double(scored_sum) / double(n) : 0.0;  // over the tests with a p-value
  row["mean_counts_per_test"] = {{"positions", per_test(tot.positions)}, {"no_window", per_test(tot.no_window)},
                                 {"in_prompt", per_test(tot.in_prompt)},  {"unscorable", per_test(tot.unscorable)},
                                 {"in_text", per_test(tot.in_text)},      {"repeated", per_test(tot.repeated)},
                                 {"scored", per_test(tot.scored)}};
  row["ks_randomized"] = {{"d", ks_r.d}, {"p", ks_r.p_value}, {"d_plus", dplus_r}, {"p_plus", dplus_r_p}};
  row["ks_reported_one_sided"] = {{"d_plus", dplus}, {"p", dplus_p}};
  row["ks_reported_two_sided"] = {{"d", ks_e.d}, {"p", ks_e.p_value},
                                  {"note", "expected to reject for discreteness alone (super-uniform p)"}};
  row["min_p"] = std::pow(10.0, min_log10);
  row["min_log10_p"] = min_log10;
  row["min_p_key_index"] = min_key;
  row["min_p_at_least_1e-3"] = !(min_log10 < -3);
  row["tests_below_1e-3"] = below_1e3;
  row["tests_below_0.05"] = std::count_if(p_exact.begin(), p_exact.end(), [](double p) { return p < 0.05; });
  row["tests_below_0.01"] = std::count_if(p_exact.begin(), p_exact.end(), [](double p) { return p < 0.01; });
  row["median_p"] = num(quantile(p_exact, 0.5));
  row["mean_p_randomized"] = n ? num(std::accumulate(p_rand.begin(), p_rand.end(), 0.0) / double(n)) : OJson(nullptr);
  row["pooled"] = {{"green", green_sum}, {"scored", scored_sum}, {"green_rate", num(pooled_rate)}, {"gamma", g},
                   {"z", num(pooled_z)}, {"log10_p", pooled_log10_p}};
  row["scored_pairs"] = scored_per_test;
  row["p_values"] = log10s;  // log10 of each test's reported p, key order (too-short tests left out)
  row["seconds"] = secs_since(t0);
  return row;
}

int run(int argc, char** argv) {
  const auto t_start = clk::now();
  Options o;
  parse(argc, argv, o);
  set_num_threads(o.threads);
  std::string command = "build/audit_controls";
  for (int i = 1; i < argc; ++i) command += std::string(" ") + argv[i];
  if (o.out.empty()) o.out = "bench/results/audit_controls_" + utc_date() + ".json";

  // `retort audit radioactivity` defaults: kgw selfhash, γ 0.25, h 4, dedup, --min-tokens 100.
  DetectorConfig cfg;
  cfg.scheme = "kgw";
  cfg.dedup = true;
  cfg.min_tokens = o.min_tokens;
  check_detector_config(cfg);
  const KgwConfig embed;  // `retort generate --watermark kgw` defaults: γ 0.25, δ 2, selfhash, h 4

  RuntimeLoaded teacher = load_runtime_model(o.teacher);
  check(teacher.tokenizer && ChatTemplate::available(teacher.chat_template, *teacher.tokenizer), o.teacher,
        ": needs a tokenizer and a chat template");
  const Tokenizer& ours = *teacher.tokenizer;
  const ChatTemplate tpl = ChatTemplate::from_jinja(teacher.chat_template, ours);
  const std::vector<std::string> prompts = read_prompts(o.prompts);

  // ---- generation: every key's completions in one batched call, each request with its key's processor
  std::vector<KeyTexts> keys(size_t(o.keys));
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < o.keys; ++i) {
    keys[size_t(i)].key = bench_key(o.seed, i);
    auto proc = std::make_shared<KgwProcessor>(keys[size_t(i)].key, embed);
    for (int j = 0; j < o.prompts_per_key; ++j) {
      const std::string& p = prompts[size_t(i * o.prompts_per_key + j) % prompts.size()];
      keys[size_t(i)].prompts.push_back(p);
      GenerationRequest r;
      r.prompt = tpl.encode({{"user", p}}, ours);
      r.sampling.temperature = 1.0;
      r.sampling.seed = splitmix(o.seed * 0x100000001b3ull + uint64_t(i * o.prompts_per_key + j));
      r.max_tokens = o.max_tokens;
      r.processor = proc;
      reqs.push_back(std::move(r));
    }
  }
  for (int i = 1; i < o.keys; ++i) check(!(keys[size_t(i)].key == keys[size_t(i - 1)].key), "duplicate key");
  std::fprintf(stderr, "generating %zu completions (%d keys x %d prompts, <= %lld tokens)\n", reqs.size(), o.keys,
               o.prompts_per_key, (long long)o.max_tokens);
  GenerateOptions go;
  go.max_batch = o.batch;
  auto t0 = clk::now();
  const std::vector<GenerationResult> res = generate(teacher, reqs, go);
  const double gen_secs = secs_since(t0);
  int64_t gen_tokens = 0;
  for (size_t q = 0; q < res.size(); ++q) {
    gen_tokens += int64_t(res[q].tokens.size());
    keys[q / size_t(o.prompts_per_key)].texts.push_back(res[q].text);
  }
  std::fprintf(stderr, "generated %lld tokens in %.1f s (%.1f tok/s)\n", (long long)gen_tokens, gen_secs,
               gen_tokens / std::max(gen_secs, 1e-9));

  // ---- positive control: each key's texts, scored with their own key (plain detection, dedup over the key's texts)
  std::vector<double> pos_log10;
  int64_t pos_scored = 0, pos_short = 0;
  for (const KeyTexts& kt : keys) {
    DetectorConfig dc = cfg;
    WatermarkScorer sc(kt.key, dc);
    for (const std::string& t : kt.texts) sc.add_tokens(ours.encode(t, false, false));
    const DetectionResult r = sc.result();
    if (r.too_short) {
      ++pos_short;
      continue;
    }
    pos_log10.push_back(r.log10_p);
    pos_scored += r.tokens_scored;
  }
  OJson positive = {
      {"what", "each key's own completions, re-tokenized, scored with their key (plain detection, dedup)"},
      {"tests_with_p", int64_t(pos_log10.size())},
      {"not_enough_evidence", pos_short},
      {"mean_scored_pairs", pos_log10.empty() ? 0.0 : double(pos_scored) / double(pos_log10.size())},
      {"max_log10_p", pos_log10.empty() ? OJson(nullptr) : OJson(*std::max_element(pos_log10.begin(), pos_log10.end()))},
      {"median_log10_p", num(quantile(pos_log10, 0.5))},
      {"fraction_below_1e-5", pos_log10.empty() ? 0.0
                                                : double(std::count_if(pos_log10.begin(), pos_log10.end(),
                                                                       [](double l) { return l < -5; })) /
                                                      double(pos_log10.size())}};
  std::fprintf(stderr, "positive control: median log10 p %.1f, max %.1f\n", quantile(pos_log10, 0.5),
               pos_log10.empty() ? 0.0 : *std::max_element(pos_log10.begin(), pos_log10.end()));

  // ---- the control readers
  OJson readers = OJson::array();
  for (size_t ri = 0; ri < o.readers.size(); ++ri) {
    const std::string& name = o.readers[ri];
    std::fprintf(stderr, "reader %s\n", name.c_str());
    if (name == o.teacher) {
      readers.push_back(reader_row(name, teacher, ours, keys, cfg, o.seed + ri, o.cli_min_tokens));
    } else {
      RuntimeLoaded m = load_runtime_model(name);
      check(m.tokenizer != nullptr, name, ": no tokenizer");
      readers.push_back(reader_row(name, m, ours, keys, cfg, o.seed + ri, o.cli_min_tokens));
    }
  }

  OJson R;
  R["bench"] = "audit_controls";
  R["command"] = command;
  R["date"] = utc_date();
  R["config"] = {{"keys", o.keys}, {"prompts_per_key", o.prompts_per_key}, {"max_tokens", o.max_tokens},
                 {"teacher", o.teacher}, {"prompts", o.prompts}, {"seed", o.seed}, {"threads", o.threads},
                 {"embed", {{"scheme", "kgw"}, {"context", embed.context}, {"gamma", embed.gamma}, {"delta", embed.delta},
                            {"h", embed.width()}, {"temperature", 1.0}}},
                 {"test", {{"mode", "open"}, {"scheme", cfg.scheme}, {"gamma", cfg.kgw.gamma}, {"h", cfg.kgw.width()},
                           {"window", detector_window(cfg)}, {"dedup", true}, {"min_tokens", cfg.min_tokens},
                           {"filters", "no_window, in_prompt, unscorable, in_text, repeated (no --seen)"}}}};
  const double nk = double(o.keys);
  R["null_expectation"] = {
      {"p_min_below_1e-3_at_most", 1 - std::pow(1 - 1e-3, nk)},
      {"expected_tests_below_1e-3_at_most", nk * 1e-3},
      {"note", "exact binomial tail: P[p <= u] <= u, so these are upper bounds under the null"}};
  R["generation"] = {{"completions", int64_t(res.size())}, {"tokens", gen_tokens}, {"seconds", gen_secs},
                     {"tokens_per_s", gen_tokens / std::max(gen_secs, 1e-9)},
                     {"mean_tokens", res.empty() ? 0.0 : double(gen_tokens) / double(res.size())}};
  R["positive_control"] = positive;
  R["readers"] = readers;
  bool all_ok = true;
  for (const auto& r : readers) all_ok = all_ok && r["min_p_at_least_1e-3"].get<bool>();
  R["target_no_control_below_1e-3"] = all_ok;
  R["seconds"] = secs_since(t_start);
  const std::string s = R.dump(2);
  std::printf("%s\n", s.c_str());
  std::filesystem::create_directories(std::filesystem::path(o.out).parent_path());
  std::ofstream(o.out) << s << "\n";
  std::fprintf(stderr, "wrote %s\n", o.out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return retort_bench::run_main("audit_controls", run, argc, argv); }
