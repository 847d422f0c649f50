// bench/watermark_neutralization.cpp — the inference-time attack on radioactivity (issue 14, deliverable 5):
// Pan et al., "Can LLM Watermarks Robustly Prevent Unauthorized Knowledge Distillation?" (ACL 2025),
// watermark neutralization (WN). A thief who distilled a student from our watermarked answers cannot see our
// key, but holds the watermarked text it trained on. It steals an estimate of the green lists from that text
// and, when its student answers, subtracts δ' from the logits of the tokens it believes green — undoing the
// bias the student inherited, so the closed test (which scores what the suspect writes) finds nothing.
//
//   build/watermark_neutralization --runs DIR [--student DIR/run_f100/final] [--deltas 0,1,2,4]
//       [--prompts data/prompts/heldout.jsonl] [--samples 2] [--max-tokens 64] [--temperature 1] [--seed 7]
//       [--min-count 3] [--ratio 1.5] [--threads 2] [--out FILE.json]
//
// DIR is bench/run_radioactivity_fractions.sh's work dir: key (ours), mix_f100.jsonl (the thief's training
// text: every answer watermarked), clean.jsonl (unwatermarked answers of the same teacher to the same prompts:
// the thief's reference text — generous to the thief, its reference matches the content), wm_all.jsonl (what
// we served: the --seen filter).
//
// Stealing (after Jovanović et al.'s watermark stealing, which WN builds on), from token counts of the two
// texts in the student's tokenizer (the teacher's):
//   unconditional  tok is "green" when c_wm(tok) >= min_count and
//                  ((c_wm(tok) + ½)/N_wm) / ((c_ref(tok) + ½)/N_ref) >= ratio
//                  (KGW selfhash takes the minimum hash over the window AND the token itself, so a token whose
//                  own hash is small seeds its own green list: its colour is nearly fixed, and shows up here);
//   after prev     the same on bigram counts (prev, tok) against the counts of prev.
// Neutralized decoding: logits[tok] −= δ' for every stolen-green tok (unconditional, or after the context's
// last token). δ' = 0 is the student unattacked, with the same prompts and seeds.
//
// For each δ' the student answers every prompt (samples × prompts, temperature, seed + s as `retort audit
// radioactivity --mode closed` asks a local suspect) and the answers go through the closed test exactly as
// that command scores them (our tokenizer, dedup, prompt windows skipped), once plainly and once with
// --seen wm_all.jsonl. The cost to the thief: the teacher's NLL per token of the answers (teacher-forced on
// the chat-rendered prompt + answer), their mean length and share of repeated 4-grams.
//
// Prints one JSON object and writes it to --out (default bench/results/watermark_neutralization_<date>.json).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "bench_util.h"
#include "retort/audit/radioactivity.h"
#include "retort/audit/watermark_detect.h"
#include "retort/decode/generate.h"
#include "retort/distill/answer_quality.h"
#include "retort/decode/logits_processor.h"
#include "retort/io/jsonl.h"
#include "retort/model/runtime_model.h"
#include "retort/protect/keys.h"
#include "retort/text/chat_template.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/parallel.h"

using namespace retort;
using OJson = nlohmann::ordered_json;
using retort_bench::clk;
using retort_bench::secs_since;
using retort_bench::utc_date;

namespace {

struct Options {
  std::string runs, student, prompts = "data/prompts/heldout.jsonl", teacher = "smollm2-135m-instruct", out;
  std::vector<double> deltas = {0, 1, 2, 4};
  int samples = 2;
  int64_t max_tokens = 64;
  double temperature = 1.0;
  uint64_t seed = 7;
  int64_t min_count = 3;
  double ratio = 1.5;
  int threads = 2;
};


void parse(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    check(i + 1 < argc, k, ": needs a value");
    const std::string v = argv[++i];
    if (k == "--runs") o.runs = v;
    else if (k == "--student") o.student = v;
    else if (k == "--prompts") o.prompts = v;
    else if (k == "--teacher") o.teacher = v;
    else if (k == "--out") o.out = v;
    else if (k == "--deltas") {
      o.deltas.clear();
      std::stringstream ss(v);
      for (std::string x; std::getline(ss, x, ',');) o.deltas.push_back(std::stod(x));
    } else if (k == "--samples") o.samples = std::stoi(v);
    else if (k == "--max-tokens") o.max_tokens = std::stoll(v);
    else if (k == "--temperature") o.temperature = std::stod(v);
    else if (k == "--seed") o.seed = std::stoull(v);
    else if (k == "--min-count") o.min_count = std::stoll(v);
    else if (k == "--ratio") o.ratio = std::stod(v);
    else if (k == "--threads") o.threads = std::stoi(v);
    else fail("unknown option ", k);
  }
  check(!o.runs.empty(), "--runs DIR (bench/run_radioactivity_fractions.sh's work dir) is required");
  if (o.student.empty()) o.student = o.runs + "/run_f100/final";
  check(!o.deltas.empty() && o.samples >= 1 && o.max_tokens >= 1, "bad options");
}


// A field of every record of a JSONL file.
std::vector<std::string> read_field(const std::string& path, const std::string& field) {
  std::vector<std::string> out;
  for_each_jsonl_object(path, [&](const nlohmann::json& j, int64_t lineno) {
    check(j.contains(field) && j[field].is_string(), path, ":", lineno, ": needs a \"", field, "\" string");
    out.push_back(j[field].get<std::string>());
  });
  check(!out.empty(), path, ": no records");
  return out;
}

uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

// Token and bigram counts of a set of texts (each text's tokens on their own; bigrams do not cross texts).
struct Counts {
  std::unordered_map<int32_t, int64_t> uni;
  std::unordered_map<uint64_t, int64_t> bi;
  int64_t tokens = 0;
  void add(const std::vector<int32_t>& t) {
    for (size_t i = 0; i < t.size(); ++i) {
      ++uni[t[i]], ++tokens;
      if (i > 0) ++bi[pair_key(t[i - 1], t[i])];
    }
  }
  int64_t get(int32_t t) const {
    auto it = uni.find(t);
    return it == uni.end() ? 0 : it->second;
  }
  int64_t get(int32_t a, int32_t b) const {
    auto it = bi.find(pair_key(a, b));
    return it == bi.end() ? 0 : it->second;
  }
};

// The stolen green lists: tokens green everywhere, and tokens green after a given previous token.
struct StolenGreen {
  std::unordered_set<int32_t> always;
  std::unordered_map<int32_t, std::vector<int32_t>> after;
  int64_t bigrams = 0;
};

StolenGreen steal(const Counts& wm, const Counts& ref, int64_t min_count, double ratio) {
  StolenGreen g;
  const double nw = double(std::max<int64_t>(wm.tokens, 1)), nr = double(std::max<int64_t>(ref.tokens, 1));
  for (const auto& [tok, c] : wm.uni)
    if (c >= min_count && ((double(c) + 0.5) / nw) / ((double(ref.get(tok)) + 0.5) / nr) >= ratio) g.always.insert(tok);
  for (const auto& [key, c] : wm.bi) {
    if (c < min_count) continue;
    const int32_t prev = int32_t(key >> 32), tok = int32_t(uint32_t(key));
    const double pw = (double(c) + 0.5) / (double(wm.get(prev)) + 1.0);
    const double pr = (double(ref.get(prev, tok)) + 0.5) / (double(ref.get(prev)) + 1.0);
    if (pw / pr >= ratio) g.after[prev].push_back(tok), ++g.bigrams;
  }
  return g;
}

// Neutralized decoding: −δ' on the stolen-green tokens of this context. Pure function of the context: one
// object may serve every request.
class Neutralizer : public LogitsProcessor {
 public:
  Neutralizer(const StolenGreen& g, double delta) : g_(g), delta_(float(delta)) {}
  void process(std::span<const int32_t> context, float* logits, int64_t n_vocab) override {
    for (int32_t t : g_.always)
      if (t < n_vocab) logits[t] -= delta_;
    if (context.empty()) return;
    auto it = g_.after.find(context.back());
    if (it == g_.after.end()) return;
    for (int32_t t : it->second)
      if (t < n_vocab && !g_.always.count(t)) logits[t] -= delta_;
  }

 private:
  const StolenGreen& g_;
  float delta_;
};

OJson result_row(const RadioactivityResult& r) {
  return {{"scored", r.counts.scored},
          {"green_rate", r.score_rate},
          {"enough_evidence", !r.test.too_short},
          {"p", r.test.too_short ? OJson(nullptr) : OJson(r.test.p_value)},
          {"log10_p", r.test.too_short ? OJson(nullptr) : OJson(r.test.log10_p)},
          {"pairs_needed_for_1e-5", r.pairs_needed < 0 ? OJson(nullptr) : OJson(r.pairs_needed)}};
}

int run(int argc, char** argv) {
  const auto t_start = clk::now();
  Options o;
  parse(argc, argv, o);
  set_num_threads(o.threads);
  std::string command = "build/watermark_neutralization";
  for (int i = 1; i < argc; ++i) command += std::string(" ") + argv[i];
  if (o.out.empty()) o.out = "bench/results/watermark_neutralization_" + utc_date() + ".json";

  const WatermarkKey key = load_key_file(o.runs + "/key");
  RuntimeLoaded teacher = load_runtime_model(o.teacher);
  RuntimeLoaded student = load_runtime_model(o.student);
  check(teacher.tokenizer && student.tokenizer, "both models need a tokenizer");
  const Tokenizer& ours = *teacher.tokenizer;
  check(same_tokenizer(*student.tokenizer, ours), o.student, ": the attack here assumes the student kept the "
        "teacher's tokenizer (a retort student does)");
  check(ChatTemplate::available(student.chat_template, *student.tokenizer), o.student, ": no chat template");
  const ChatTemplate tpl = ChatTemplate::from_jinja(student.chat_template, *student.tokenizer);
  auto enc = [&](const std::string& s) { return ours.encode(s, /*parse_special=*/false, /*add_bos=*/false); };

  // ---- stealing, from the thief's training text against its reference text
  Counts wm, ref;
  for (const std::string& t : read_field(o.runs + "/mix_f100.jsonl", "completion")) wm.add(enc(t));
  for (const std::string& t : read_field(o.runs + "/clean.jsonl", "completion")) ref.add(enc(t));
  const StolenGreen green = steal(wm, ref, o.min_count, o.ratio);
  // How good is the theft? The share of stolen unconditional tokens that really are green is not defined
  // for selfhash (colour depends on the window), so report the stolen sets' sizes only.
  std::fprintf(stderr, "stolen: %zu tokens green everywhere, %lld (prev, tok) pairs, from %lld / %lld tokens\n",
               green.always.size(), (long long)green.bigrams, (long long)wm.tokens, (long long)ref.tokens);

  // ---- the closed test's setting (cmd_audit.cpp): our tokenizer, dedup, prompt windows, optional --seen
  DetectorConfig cfg;
  cfg.scheme = "kgw";
  cfg.dedup = true;
  cfg.min_tokens = 100;
  check_detector_config(cfg);
  const std::vector<std::string> prompts = read_field(o.prompts, "prompt");
  const int w = detector_window(cfg);
  WindowSet prompt_windows(w), seen_windows(w);
  for (const std::string& p : prompts) prompt_windows.add_windows_of(enc(p));
  for (const std::string& t : read_field(o.runs + "/wm_all.jsonl", "completion")) seen_windows.add_windows_of(enc(t));

  OJson rows = OJson::array();
  for (double delta : o.deltas) {
    const auto t0 = clk::now();
    auto proc = delta > 0 ? std::make_shared<Neutralizer>(green, delta) : nullptr;
    std::vector<GenerationRequest> reqs;
    std::vector<std::vector<int32_t>> rendered;
    for (const std::string& p : prompts)
      for (int s = 0; s < o.samples; ++s) {
        GenerationRequest q;
        q.prompt = tpl.encode({{"user", p}}, *student.tokenizer);
        q.sampling.temperature = o.temperature;
        q.sampling.seed = o.seed + uint64_t(s);
        q.max_tokens = o.max_tokens;
        q.processor = proc;
        rendered.push_back(q.prompt);
        reqs.push_back(std::move(q));
      }
    const std::vector<GenerationResult> res = generate(student, reqs);
    RadioactivityTest plain(key, cfg), seen(key, cfg);
    plain.set_prompt_windows(&prompt_windows);
    seen.set_prompt_windows(&prompt_windows);
    seen.set_seen_windows(&seen_windows);
    std::vector<std::vector<int32_t>> seqs;
    std::vector<size_t> answer_start;
    int64_t answer_tokens = 0;
    double rep = 0;
    for (size_t i = 0; i < res.size(); ++i) {
      const std::vector<int32_t> ids = enc(res[i].text);
      plain.add_text(ids);
      seen.add_text(ids);
      rep += repeated_ngram_share(ids, 4);  // as `retort eval --answers` counts it
      std::vector<int32_t> s = rendered[i];
      answer_start.push_back(s.size());
      s.insert(s.end(), ids.begin(), ids.end());
      answer_tokens += int64_t(ids.size());
      seqs.push_back(std::move(s));
    }
    // The teacher's NLL of the answers: −log p_T(answer token t | prompt, answer[..t]), summed in double.
    // Rows run in parallel: each (s, t) writes only its own slot.
    std::vector<std::vector<double>> nll(seqs.size());
    for (size_t i = 0; i < seqs.size(); ++i) nll[i].assign(seqs[i].size(), 0.0);
    for_each_position_logits(*teacher.model, seqs, 128, 16, [&](size_t s, int64_t t, const float* logits) {
      const size_t next = size_t(t) + 1;
      if (next < answer_start[s] || next >= seqs[s].size()) return;
      const int64_t v = teacher.hparams.n_vocab;
      double mx = -INFINITY;
      for (int64_t j = 0; j < v; ++j) mx = std::max(mx, double(logits[j]));
      double z = 0;
      for (int64_t j = 0; j < v; ++j) z += std::exp(double(logits[j]) - mx);
      nll[s][next] = -(double(logits[seqs[s][next]]) - mx - std::log(z));
    });
    double nll_sum = 0;
    for (const auto& v : nll)
      for (double x : v) nll_sum += x;
    const RadioactivityResult rp = plain.result("closed"), rs = seen.result("closed");
    OJson row = {{"delta_prime", delta},
                 {"answers", int64_t(res.size())},
                 {"mean_answer_tokens", double(answer_tokens) / double(std::max<size_t>(res.size(), 1))},
                 {"teacher_nll_per_token", answer_tokens ? nll_sum / double(answer_tokens) : NAN},
                 {"repeated_4gram_share", rep / double(std::max<size_t>(res.size(), 1))},
                 {"closed", result_row(rp)},
                 {"closed_seen", result_row(rs)},
                 {"sample", res.empty() ? "" : res[0].text},
                 {"seconds", secs_since(t0)}};
    std::fprintf(stderr, "δ' %.1f: closed log10 p %s, seen %s; teacher NLL %.3f; %.0f s\n", delta,
                 row["closed"]["log10_p"].dump().c_str(), row["closed_seen"]["log10_p"].dump().c_str(),
                 row["teacher_nll_per_token"].get<double>(), secs_since(t0));
    rows.push_back(std::move(row));
  }

  OJson R;
  R["bench"] = "watermark_neutralization";
  R["command"] = command;
  R["date"] = utc_date();
  R["student"] = o.student;
  R["stealing"] = {{"from", o.runs + "/mix_f100.jsonl"}, {"reference", o.runs + "/clean.jsonl"},
                   {"tokens_watermarked", wm.tokens}, {"tokens_reference", ref.tokens},
                   {"min_count", o.min_count}, {"ratio", o.ratio},
                   {"green_everywhere", int64_t(green.always.size())}, {"green_after_prev", green.bigrams}};
  R["closed_test"] = {{"prompts", o.prompts}, {"samples", o.samples}, {"max_tokens", o.max_tokens},
                      {"temperature", o.temperature}, {"seed", o.seed}, {"seen", o.runs + "/wm_all.jsonl"}};
  R["rows"] = rows;
  R["seconds"] = secs_since(t_start);
  const std::string s = R.dump(2, ' ', false, OJson::error_handler_t::replace);
  std::printf("%s\n", s.c_str());
  std::filesystem::create_directories(std::filesystem::path(o.out).parent_path());
  std::ofstream(o.out) << s << "\n";
  std::fprintf(stderr, "wrote %s\n", o.out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return retort_bench::run_main("watermark_neutralization", run, argc, argv); }
