// bench/antidistill_tradeoff.cpp — the teacher's side of issue 16's antidistillation trade-off: one
// sampling setting of the default teacher (plain temperature sampling, or antidistillation at strength λ),
// what it costs the teacher, and the traces a distiller would harvest under it.
//
//   build/antidistill_tradeoff --temperature T [--antidistill DIR --lambda L] [--seed 1]
//       [--teacher smollm2-135m-instruct] [--train-prompts data/prompts/train.jsonl] [--traces-out FILE.jsonl]
//       [--heldout-prompts data/prompts/heldout.jsonl] [--heldout-samples 2] [--tasks data/tasks/tasks.jsonl]
//       [--task-samples 2] [--max-tokens 64] [--batch 32] [--threads 0] [--out FILE.json]
//
// Teacher quality under the setting, each from the teacher's own outputs (chat turns, this sampling):
//   heldout_nll      mean −log p_T(token | context) over every token of its answers to the held-out
//                    prompts (heldout-samples each, at most max-tokens), p_T the PLAIN teacher (raw logits,
//                    temperature 1: GeneratedToken::logprob_raw) — how plausible the teacher itself finds
//                    what this setting makes it say. Plain sampling at τ = 1 gives the teacher's entropy.
//   top1_agreement   share of those tokens that are the plain teacher's argmax ("agreement with plain
//                    sampling": a greedy decoder's choice).
//   task_accuracy    the answer-checkable tasks (distill/tasks.h) answered task-samples times each with this
//                    sampling (seed + i), scored by their exact rules.
// The traces: its answers to the training prompts (one each, seed), written as JSONL {prompt fields...,
// "completion"} — what `retort capture --mode score` turns into a store a student is trained on
// (bench/run_antidistill_tradeoff.sh does that and evaluates the students).
// With --antidistill it also reports the proxies' batch (rows per forward, antidistill_stats).
//
// Prints one JSON object (and writes it to --out when given).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench_util.h"
#include "retort/decode/generate.h"
#include "retort/distill/answer_quality.h"
#include "retort/distill/prompt_file.h"
#include "retort/distill/tasks.h"
#include "retort/io/jsonl.h"
#include "retort/model/runtime_model.h"
#include "retort/protect/antidistill.h"
#include "retort/util/error.h"
#include "retort/util/file.h"
#include "retort/util/parallel.h"

using namespace retort;
using OJson = nlohmann::ordered_json;
using retort_bench::clk;
using retort_bench::secs_since;

namespace {

struct Options {
  std::string teacher = "smollm2-135m-instruct", antidistill, train_prompts = "data/prompts/train.jsonl",
              traces_out, heldout_prompts = "data/prompts/heldout.jsonl", tasks = "data/tasks/tasks.jsonl", out;
  double lambda = 0, temperature = 1.0;
  uint64_t seed = 1;
  int heldout_samples = 2, task_samples = 2, threads = 0;
  int64_t max_tokens = 64, batch = 32;
};


void parse(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    check(i + 1 < argc, k, ": needs a value");
    const std::string v = argv[++i];
    if (k == "--teacher") o.teacher = v;
    else if (k == "--antidistill") o.antidistill = v;
    else if (k == "--lambda") o.lambda = std::stod(v);
    else if (k == "--temperature") o.temperature = std::stod(v);
    else if (k == "--seed") o.seed = std::stoull(v);
    else if (k == "--train-prompts") o.train_prompts = v;
    else if (k == "--traces-out") o.traces_out = v;
    else if (k == "--heldout-prompts") o.heldout_prompts = v;
    else if (k == "--heldout-samples") o.heldout_samples = std::stoi(v);
    else if (k == "--tasks") o.tasks = v;
    else if (k == "--task-samples") o.task_samples = std::stoi(v);
    else if (k == "--max-tokens") o.max_tokens = std::stoll(v);
    else if (k == "--batch") o.batch = std::stoll(v);
    else if (k == "--threads") o.threads = std::stoi(v);
    else if (k == "--out") o.out = v;
    else fail("unknown option ", k, " (see the header of bench/antidistill_tradeoff.cpp)");
  }
  check(o.temperature > 0, "--temperature must be > 0 (the trade-off compares sampled settings)");
  check(o.lambda == 0 || !o.antidistill.empty(), "--lambda needs --antidistill DIR (from `retort antidistill prepare`)");
  check(o.heldout_samples >= 1 && o.task_samples >= 0 && o.max_tokens >= 1 && o.batch >= 1, "bad options");
}

// Requests for every prompt line of `path`, `samples` each (seed + k), chat-formatted by the teacher.
std::vector<GenerationRequest> requests(const RuntimeLoaded& m, const std::string& path, int samples,
                                        const Options& o, const LogitsProcessorFactory* proc,
                                        std::vector<PromptLine>* lines_out = nullptr) {
  CaptureOptions co;
  co.chat = true;
  const std::vector<PromptLine> lines = read_prompt_lines(path, co);
  std::vector<GenerationRequest> reqs;
  for (const PromptLine& p : lines)
    for (int s = 0; s < samples; ++s) {
      GenerationRequest r;
      r.prompt = encode_prompt(m, p, path);
      r.sampling.temperature = o.temperature;
      r.sampling.seed = o.seed + uint64_t(reqs.size());
      r.max_tokens = o.max_tokens;
      r.top_logprobs = 1;  // top_raw[0]: the plain teacher's argmax
      if (proc) r.processor = proc->make(r.sampling);
      reqs.push_back(std::move(r));
    }
  if (lines_out) *lines_out = lines;
  return reqs;
}

int run(int argc, char** argv) {
  const auto t_start = clk::now();
  Options o;
  parse(argc, argv, o);
  set_num_threads(o.threads);
  std::string command = "build/antidistill_tradeoff";
  for (int i = 1; i < argc; ++i) command += std::string(" ") + argv[i];

  RuntimeLoaded teacher = load_runtime_model(o.teacher);
  std::shared_ptr<AntidistillFactory> ad;
  if (!o.antidistill.empty()) ad = load_antidistill(o.antidistill, o.lambda, teacher);
  GenerateOptions go;
  go.max_batch = o.batch;

  OJson R;
  R["bench"] = "antidistill_tradeoff";
  R["command"] = command;
  R["teacher"] = teacher.path;
  R["setting"] = {{"temperature", o.temperature}, {"lambda", o.lambda}, {"seed", o.seed}};
  if (ad) R["setting"]["antidistill"] = ad->describe();

  // ---- held-out answers: the teacher's quality under this setting
  auto t0 = clk::now();
  const std::vector<GenerationResult> held =
      generate(teacher, requests(teacher, o.heldout_prompts, o.heldout_samples, o, ad.get()), go);
  int64_t tokens = 0, top1 = 0;
  double nll = 0, rep = 0;
  for (const GenerationResult& g : held) {
    std::vector<int32_t> ids;
    for (const GeneratedToken& t : g.tokens) {
      nll -= double(t.logprob_raw);
      top1 += !t.top_raw.empty() && t.top_raw[0].token == t.token;
      ids.push_back(t.token);
      ++tokens;
    }
    rep += repeated_ngram_share(ids, 4);
  }
  const double held_s = secs_since(t0);
  R["teacher"] = {{"model", teacher.path},
                  {"heldout_answers", int64_t(held.size())},
                  {"heldout_tokens", tokens},
                  {"heldout_nll", tokens ? nll / double(tokens) : NAN},
                  {"top1_agreement", tokens ? double(top1) / double(tokens) : NAN},
                  {"repeated_4gram", held.empty() ? NAN : rep / double(held.size())},
                  {"heldout_tok_s", double(tokens) / held_s},
                  {"sample", held.empty() ? "" : held[0].text}};
  std::fprintf(stderr, "held-out: %lld tokens, NLL %.3f, top-1 agreement %.3f, %.1f tok/s\n", (long long)tokens,
               tokens ? nll / double(tokens) : NAN, tokens ? double(top1) / double(tokens) : NAN,
               double(tokens) / held_s);

  // ---- tasks under this setting
  if (o.task_samples > 0 && !o.tasks.empty()) {
    t0 = clk::now();
    const std::vector<Task> once = load_tasks(o.tasks);
    std::vector<Task> tasks;
    for (int s = 0; s < o.task_samples; ++s) tasks.insert(tasks.end(), once.begin(), once.end());
    TaskDecoding dec;
    dec.sampling.temperature = o.temperature;
    dec.sampling.seed = o.seed + 1000003;
    dec.processors = ad.get();
    const TaskRun tr = run_tasks(teacher, *teacher.model, tasks, o.batch, dec);
    R["teacher"]["tasks"] = task_accuracy(tasks, tr);
    R["teacher"]["tasks"]["samples_per_task"] = o.task_samples;
    std::fprintf(stderr, "tasks: accuracy %.3f over %zu replies, %.0f s\n",
                 R["teacher"]["tasks"]["overall"]["accuracy"].get<double>(), tasks.size(), secs_since(t0));
  }

  // ---- the traces a distiller harvests
  if (!o.traces_out.empty()) {
    t0 = clk::now();
    std::vector<PromptLine> lines;
    const std::vector<GenerationResult> tr =
        generate(teacher, requests(teacher, o.train_prompts, 1, o, ad.get(), &lines), go);
    // The prompt records as they are in the file (id, category, messages...), plus the completion.
    std::vector<nlohmann::json> records;
    for_each_jsonl_object(o.train_prompts, [&](const nlohmann::json& j, int64_t) { records.push_back(j); });
    check(records.size() == tr.size(), o.train_prompts, ": ", records.size(), " records but ", tr.size(), " answers");
    std::string text;
    int64_t n_tok = 0;
    for (size_t i = 0; i < tr.size(); ++i) {
      nlohmann::json r = records[i];
      r.erase("completion");
      r["completion"] = tr[i].text;
      text += r.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
      n_tok += int64_t(tr[i].tokens.size());
    }
    write_file_atomic(o.traces_out, text);
    const double s = secs_since(t0);
    R["traces"] = {{"path", o.traces_out}, {"answers", int64_t(tr.size())}, {"tokens", n_tok}, {"tok_s", double(n_tok) / s}};
    std::fprintf(stderr, "traces: %zu answers, %lld tokens, %.1f tok/s -> %s\n", tr.size(), (long long)n_tok,
                 double(n_tok) / s, o.traces_out.c_str());
  }
  if (ad) {
    const AntidistillStats st = antidistill_stats(ad->proxy());
    R["proxy_batch"] = {{"forwards", st.forwards}, {"rows", st.rows},
                        {"rows_per_forward", st.forwards ? double(st.rows) / double(st.forwards) : 0.0}};
  }
  R["seconds"] = secs_since(t_start);
  const std::string s = R.dump(2, ' ', false, OJson::error_handler_t::replace);
  std::printf("%s\n", s.c_str());
  if (!o.out.empty()) write_file_atomic(o.out, s + "\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return retort_bench::run_main("antidistill_tradeoff", run, argc, argv); }
