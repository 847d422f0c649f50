// `retort eval`: a student against its teacher on held-out teacher text (a signal store):
// NLL/perplexity, top-1 agreement, KL(teacher‖student), size, speed, generations side by side;
// and/or on answer-checkable tasks (--tasks, distill/tasks.h): accuracy per category and the share
// of the teacher's the student keeps.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/torch_common.h"
#include "retort/decode/generate.h"
#include "retort/distill/answer_quality.h"
#include "retort/distill/evaluate.h"
#include "retort/distill/signal_store.h"
#include "retort/distill/tasks.h"
#include "retort/distill/text_store.h"
#include "retort/distill/xtok_data.h"
#include "retort/model/runtime_model.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"

namespace retort::cli {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

struct EvalArgs {
  ModelOptions student, teacher;
  std::string data;
  std::string tasks;
  int64_t max_samples = 0;
  int64_t generations = 3;
  int64_t max_tokens = 64;
  int64_t answers = 0, answer_tokens = 128;
  int64_t batch_tokens = 4096;
  int64_t speed_prompt = 128, speed_tokens = 32;
  bool json_out = false;
  bool dense_kl = false;
};

// Every regular file of a checkpoint (a .gguf file, or a directory walked recursively) with its size.
json files_on_disk(const std::string& path) {
  json files = json::array();
  if (fs::is_directory(path)) {
    std::vector<fs::path> paths;
    for (const auto& e : fs::recursive_directory_iterator(path))
      if (e.is_regular_file()) paths.push_back(e.path());
    std::sort(paths.begin(), paths.end());
    for (const auto& p : paths)
      files.push_back({{"file", fs::relative(p, path).string()}, {"bytes", int64_t(fs::file_size(p))}});
  } else {
    files.push_back({{"file", fs::path(path).filename().string()}, {"bytes", int64_t(fs::file_size(path))}});
  }
  return files;
}

// Prefill tok/s (prompt tokens / time to the first generated token) and batch-1 greedy decode
// tok/s (the remaining tokens / their time), from one generate() call after a short warm-up.
json measure_speed(LoadedModel& m, std::vector<int32_t> prompt, int64_t n_prompt, int64_t n_decode) {
  if (m.hparams.max_position > 0) n_prompt = std::min(n_prompt, m.hparams.max_position - n_decode - 1);
  n_prompt = std::max<int64_t>(n_prompt, 1);
  std::vector<int32_t> p;
  while (int64_t(p.size()) < n_prompt)
    p.push_back(prompt[p.size() % prompt.size()]);  // the store's first sample, repeated to length
  GenerationRequest warm;
  warm.prompt.assign(p.begin(), p.begin() + std::min<size_t>(8, p.size()));
  warm.sampling.temperature = 0;
  warm.max_tokens = 4;
  warm.ignore_eos = true;
  generate(m, {warm});

  GenerationRequest r;
  r.prompt = p;
  r.sampling.temperature = 0;
  r.max_tokens = n_decode;
  r.ignore_eos = true;
  GenerateOptions o;
  Clock::time_point first, last;
  int64_t n = 0;
  o.on_token = [&](size_t, const GeneratedToken&, const std::string&) {
    last = Clock::now();
    if (n++ == 0) first = last;
  };
  const Clock::time_point t0 = Clock::now();
  generate(m, {r}, o);
  const double prefill_s = std::chrono::duration<double>(first - t0).count();
  const double decode_s = std::chrono::duration<double>(last - first).count();
  return {{"prompt_tokens", n_prompt},
          {"decode_tokens", n},
          {"prefill_tok_s", prefill_s > 0 ? n_prompt / prefill_s : 0.0},
          {"decode_tok_s", decode_s > 0 && n > 1 ? (n - 1) / decode_s : 0.0}};
}

// Split UTF-8 text into lines of at most `width` code points (breaking at spaces when possible);
// newlines are kept as line breaks.
std::vector<std::string> wrap(const std::string& text, size_t width) {
  std::vector<std::string> lines;
  std::string line, word;
  size_t line_cp = 0, word_cp = 0;
  auto flush_word = [&] {
    if (word.empty()) return;
    if (line_cp > 0 && line_cp + 1 + word_cp > width) {
      lines.push_back(line);
      line.clear(), line_cp = 0;
    }
    if (line_cp > 0) line += ' ', ++line_cp;
    line += word, line_cp += word_cp;
    word.clear(), word_cp = 0;
  };
  for (size_t i = 0; i < text.size(); ++i) {
    unsigned char c = text[i];
    if (c == '\n') {
      flush_word();
      lines.push_back(line);
      line.clear(), line_cp = 0;
    } else if (c == ' ' || c == '\t' || c == '\r') {
      flush_word();
    } else {
      if ((c & 0xC0) != 0x80) {
        if (word_cp == width) flush_word();  // a word longer than the line: hard break
        ++word_cp;
      }
      word += char(c);
    }
  }
  flush_word();
  if (!line.empty() || lines.empty()) lines.push_back(line);
  // A run of blank lines (a degenerate model can emit dozens of newlines) becomes one marker
  // line instead of a screenful of empty rows; trailing blank lines are dropped.
  std::vector<std::string> out;
  for (size_t i = 0; i < lines.size();) {
    size_t j = i;
    while (j < lines.size() && lines[j].empty()) ++j;
    if (j == i) {
      out.push_back(lines[i++]);
      continue;
    }
    if (j == lines.size()) break;
    out.push_back(j - i == 1 ? std::string() : "[" + std::to_string(j - i) + " blank lines]");
    i = j;
  }
  if (out.empty()) out.push_back("");
  return out;
}

size_t code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string pad(const std::string& s, size_t width) {
  size_t n = code_points(s);
  return n >= width ? s : s + std::string(width - n, ' ');
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB"};
  int u = 0;
  while (b >= 1024 && u < 3) b /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.1f %s" : "%.0f %s", b, units[u]);
  return buf;
}

json evaluate_model(const std::string& role, const ModelOptions& mo, LoadedModel& m, const SignalStore& store,
                    const EvalArgs& a, CausalLMImpl* dense_teacher = nullptr) {
  check(m.tokenizer != nullptr, role, " ", m.path,
        ": the checkpoint has no tokenizer, so its tokenizer cannot be matched with the store's");
  int64_t params = 0;
  for (const auto& p : m.model->parameters()) params += p.numel();
  json files = files_on_disk(m.path);
  int64_t bytes = 0;
  for (const auto& f : files) bytes += f["bytes"].get<int64_t>();

  const Clock::time_point t0 = Clock::now();
  EvalMetrics metrics =
      evaluate_on_store(*m.model, store, m.tokenizer->hash(), a.max_samples, a.batch_tokens, dense_teacher);
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  std::fprintf(stderr, "[%s: %lld positions scored in %.1f s]\n", role.c_str(), (long long)metrics.positions, secs);

  json speed = json::object();
  if (store.n_samples() > 0 && a.speed_tokens > 0) {
    SignalSample s0 = store.sample(0);
    std::vector<int32_t> prompt(s0.tokens, s0.tokens + s0.n_tokens);
    speed = measure_speed(m, prompt, a.speed_prompt, a.speed_tokens);
  }
  return {{"spec", mo.model},     {"path", m.path},   {"format", m.format},  {"parameters", params},
          {"bytes", bytes},       {"files", files},   {"metrics", metrics.to_json()},
          {"eval_seconds", secs}, {"speed", speed}};
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

void print_table(const json& out) {
  const json& s = out["student"];
  const json& t = out["teacher"];
  const json& sm = s["metrics"];
  const json& tm = t["metrics"];
  std::printf("held-out teacher text: %s (%lld samples, %lld scored positions)\n\n",
              out["data"]["dir"].get<std::string>().c_str(), (long long)sm["samples"].get<int64_t>(),
              (long long)sm["positions"].get<int64_t>());
  auto row = [](const std::string& name, const std::string& a, const std::string& b) {
    std::printf("  %s %14s %14s\n", pad(name, 30).c_str(), a.c_str(), b.c_str());
  };
  row("", "student", "teacher");
  row("parameters", fmt("%.2fM", s["parameters"].get<double>() / 1e6), fmt("%.2fM", t["parameters"].get<double>() / 1e6));
  row("size on disk", human_bytes(s["bytes"].get<double>()), human_bytes(t["bytes"].get<double>()));
  row("NLL (nats/token)", fmt("%.4f", sm["nll"].get<double>()), fmt("%.4f", tm["nll"].get<double>()));
  row("perplexity", fmt("%.3f", sm["ppl"].get<double>()), fmt("%.3f", tm["ppl"].get<double>()));
  row("top-1 agreement with teacher", fmt("%.2f%%", 100 * sm["top1_agree"].get<double>()),
      fmt("%.2f%%", 100 * tm["top1_agree"].get<double>()));
  row("KL(teacher‖model), top-k+tail", fmt("%.4f", sm["kl"].get<double>()), fmt("%.4f", tm["kl"].get<double>()));
  if (sm.contains("kl_dense"))
    row("KL(teacher‖model), dense", fmt("%.4f", sm["kl_dense"].get<double>()),
        tm.contains("kl_dense") ? fmt("%.4f", tm["kl_dense"].get<double>()) : std::string("-"));
  row("mass outside teacher's top-k", fmt("%.4f", sm["student_tail"].get<double>()),
      fmt("%.4f", tm["student_tail"].get<double>()));
  auto speed = [](const json& m, const char* key) {
    return m["speed"].contains(key) ? fmt("%.1f", m["speed"][key].get<double>()) : std::string("-");
  };
  row("prefill tok/s", speed(s, "prefill_tok_s"), speed(t, "prefill_tok_s"));
  row("decode tok/s (batch 1, greedy)", speed(s, "decode_tok_s"), speed(t, "decode_tok_s"));
  std::printf("\n  teacher NLL: %.4f from this forward pass, %.4f as stored at capture (difference %+.2e)\n",
              tm["nll"].get<double>(), tm["teacher_nll"].get<double>(),
              tm["nll"].get<double>() - tm["teacher_nll"].get<double>());

  const json& gens = out["generations"];
  if (gens.empty()) return;
  const size_t col = 48;
  std::printf("\ngreedy generations (max %lld tokens)\n", (long long)out["max_tokens"].get<int64_t>());
  for (size_t i = 0; i < gens.size(); ++i) {
    std::printf("\n── %zu. %s\n", i + 1, gens[i]["prompt"].get<std::string>().c_str());
    std::vector<std::string> a = wrap(gens[i]["student"].get<std::string>(), col);
    std::vector<std::string> b = wrap(gens[i]["teacher"].get<std::string>(), col);
    std::printf("   %s │ %s\n", pad("student", col).c_str(), "teacher");
    std::printf("   %s─┼─%s\n", [&] { std::string d; for (size_t k = 0; k < col; ++k) d += "─"; return d; }().c_str(),
                [&] { std::string d; for (size_t k = 0; k < col; ++k) d += "─"; return d; }().c_str());
    for (size_t l = 0; l < std::max(a.size(), b.size()); ++l)
      std::printf("   %s │ %s\n", pad(l < a.size() ? a[l] : "", col).c_str(), l < b.size() ? b[l].c_str() : "");
  }
}

void print_tasks(const json& out) {
  const json& t = out["tasks"];
  const json& o = t["overall"];
  std::printf("tasks: %s (%lld tasks; greedy replies to chat turns, exact rules)\n\n%s\n", t["file"].get<std::string>().c_str(),
              (long long)o["n"].get<int64_t>(), task_table_text(t).c_str());
  if (o["kept"].is_number())
    std::printf("the student keeps %.1f%% of the teacher's task accuracy (%.1f%% vs %.1f%%)\n",
                100 * o["kept"].get<double>(), 100 * o["student"].get<double>(), 100 * o["teacher"].get<double>());
  else
    std::printf("the teacher got no task right, so there is no share to keep\n");
}

// A model's part of the task comparison: generation only, so the load keeps a GGUF's blocks.
TaskRun task_run(const std::string& role, LoadedModel& m, const std::vector<Task>& tasks) {
  check(m.tokenizer != nullptr, role, " ", m.path, ": the checkpoint has no tokenizer, so task prompts cannot be encoded");
  TaskRun r = run_tasks(m, *m.model, tasks);
  std::fprintf(stderr, "[%s: %zu tasks, %lld tokens in %.1f s]\n", role.c_str(), tasks.size(), (long long)r.tokens,
               r.seconds);
  return r;
}

// A text store (a teacher behind an API whose tokenizer is unknown): the model's NLL of the teacher's text on its
// own tokenization, per byte, beside the teacher's own (xtok_data.h) — comparable across tokenizers.
// Also a signal store captured with another tokenizer than the model's (xtok_data.h reads it as text).
void run_text_store(const EvalArgs& a, bool text_store) {
  check(a.tasks.empty() && a.answers == 0, "retort eval: --tasks and --answers work with a signal store in the ",
        "model's tokenizer; ", a.data, " is ", text_store ? "a text store" : "in another tokenizer",
        " (per-byte NLL only)");
  check(!a.dense_kl, "retort eval: --dense-kl compares two models' distributions over one vocabulary; ", a.data, " is ",
        text_store ? "a text store" : "in another tokenizer than the model's",
        ", so only the per-byte NLL is measured (drop --dense-kl)");
  LoadedModel m = load_for_cli(a.student, true, false);
  const XTokData d = text_store ? make_xtok_data(TextStore::open(a.data), m) : make_xtok_data(SignalStore::open(a.data), m);
  const auto t0 = Clock::now();
  const XTokEval e = evaluate_xtok(*m.model, d, a.max_samples);
  std::fprintf(stderr, "[%s: %lld samples, %lld bytes scored in %.1f s]\n", m.path.c_str(), (long long)e.samples,
               (long long)e.bytes, std::chrono::duration<double>(Clock::now() - t0).count());
  json out = {{"data", d.summary()},
              {"model", {{"spec", a.student.model}, {"path", m.path}, {"format", m.format}}},
              {"metrics", e.to_json()}};
  if (a.json_out) {
    std::printf("%s\n", out.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
    return;
  }
  auto num = [](const json& v) { return v.is_number() ? v.get<double>() : NAN; };
  const json& j = out["metrics"];
  std::printf("held-out teacher text: %s (%lld samples, %lld bytes; %zu skipped)\n", d.dir.c_str(), (long long)e.samples,
              (long long)e.bytes, d.skipped.size());
  std::printf("  model NLL per byte (its own tokens)   %.4f nats  %.4f bits\n", num(j["nll_per_byte"]),
              num(j["bits_per_byte"]));
  std::printf("  teacher NLL per byte (its samples)    %.4f nats\n", num(j["teacher_nll_per_byte"]));
  std::printf("  top-1 agreement (one-token spans)     %.4f over %lld positions\n", num(j["top1_agree"]),
              (long long)e.agree_positions);
}

void run(const EvalArgs& a) {
  check(!a.student.model.empty(), "retort eval: --model STUDENT is required");
  if (!a.data.empty() && TextStore::is_text_store(a.data)) return run_text_store(a, true);
  if (!a.data.empty() && fs::exists(a.data + "/manifest.json")) {
    // A signal store in another tokenizer than the model's: per byte, across tokenizers.
    const CheckpointInfo si = read_checkpoint_info(a.student.model, /*load_tokenizer=*/true);
    if (si.tokenizer && si.tokenizer->hash() != SignalStore::open(a.data).manifest().tokenizer_hash)
      return run_text_store(a, false);
  }
  check(!a.data.empty() || !a.tasks.empty(),
        "retort eval: give --data STORE (held-out teacher text), --tasks FILE (answer-checkable tasks, e.g. "
        "data/tasks/tasks.jsonl), or both");
  check(a.max_samples >= 0, "--max-samples must be >= 0 (0 = all)");
  check(a.generations >= 0, "--generations must be >= 0");
  check(a.max_tokens >= 1, "--max-tokens must be >= 1");
  check(a.answers >= 0, "--answers must be >= 0 (0 = off)");
  check(a.answer_tokens >= 1, "--answer-tokens must be >= 1");
  check(a.answers == 0 || !a.data.empty(), "--answers N needs --data STORE (its prompts are the ones answered)");
  std::vector<Task> tasks;
  if (!a.tasks.empty()) tasks = load_tasks(a.tasks);  // a bad file fails before any model loads
  std::optional<SignalStore> store;
  if (!a.data.empty()) {
    store.emplace(SignalStore::open(a.data));
    check(store->n_samples() > 0, "signal store ", a.data, " holds no samples; run `retort capture` first");
  }

  json out;
  if (store)
    out["data"] = {{"dir", store->dir()},
                   {"samples_in_store", store->n_samples()},
                   {"teacher_at_capture", store->manifest().teacher},
                   {"k", store->manifest().k}};
  out["max_tokens"] = a.max_tokens;
  std::vector<std::vector<int32_t>> prompts;
  if (store) prompts = store_prompts(*store, a.generations);
  std::vector<std::string> student_text, teacher_text, prompt_text;
  TaskRun student_tasks, teacher_tasks;
  // --answers N: both models' own greedy answers to the store's first N prompts (answer_quality.h).
  std::vector<std::vector<int32_t>> answer_prompts;
  if (store && a.answers > 0) answer_prompts = store_prompts(*store, a.answers);
  AnswerQuality student_answers, teacher_answers;
  const bool inference_only = !store;  // tasks only: generation, no teacher-forced pass
  check(!a.dense_kl || store, "--dense-kl needs --data STORE (the held-out text both models read)");
  // --dense-kl: the teacher stays loaded beside the student (both in memory), otherwise one at a time.
  std::optional<LoadedModel> teacher_kept;
  if (a.dense_kl) teacher_kept.emplace(load_for_cli(a.teacher, true, false));
  {
    LoadedModel student = load_for_cli(a.student, true, inference_only);
    out["student"] = store ? evaluate_model("student", a.student, student, *store, a,
                                            teacher_kept ? teacher_kept->model.get() : nullptr)
                           : json{{"spec", a.student.model}, {"path", student.path}, {"format", student.format}};
    if (!prompts.empty()) student_text = greedy_replies(student, *student.model, prompts, a.max_tokens);
    if (!answer_prompts.empty())
      student_answers = answer_quality(student, *student.model, answer_prompts, a.answer_tokens, nullptr);
    if (!tasks.empty()) student_tasks = task_run("student", student, tasks);
  }  // one model in memory at a time
  {
    LoadedModel teacher = teacher_kept ? std::move(*teacher_kept) : load_for_cli(a.teacher, true, inference_only);
    teacher_kept.reset();
    out["teacher"] = store ? evaluate_model("teacher", a.teacher, teacher, *store, a)
                           : json{{"spec", a.teacher.model}, {"path", teacher.path}, {"format", teacher.format}};
    if (!prompts.empty()) teacher_text = greedy_replies(teacher, *teacher.model, prompts, a.max_tokens);
    if (!answer_prompts.empty()) {
      teacher_answers = answer_quality(teacher, *teacher.model, answer_prompts, a.answer_tokens, teacher.model.get());
      score_answers(student_answers, answer_prompts, *teacher.model);
      out["answers"] = {{"prompts", answer_prompts.size()}, {"max_tokens", a.answer_tokens},
                        {"student", student_answers.to_json()}, {"teacher", teacher_answers.to_json()}};
    }
    for (const auto& p : prompts) prompt_text.push_back(prompt_display(*teacher.tokenizer, p));
    if (!tasks.empty()) teacher_tasks = task_run("teacher", teacher, tasks);
  }
  if (store) {
    const json& tm = out["teacher"]["metrics"];
    out["teacher_nll_forward_minus_store"] = tm["nll"].get<double>() - tm["teacher_nll"].get<double>();
    out["generations"] = json::array();
    for (size_t i = 0; i < prompts.size(); ++i)
      out["generations"].push_back(
          {{"prompt", prompt_text[i]}, {"student", student_text[i]}, {"teacher", teacher_text[i]}});
  }
  if (!tasks.empty()) {
    out["tasks"] = compare_task_runs(tasks, teacher_tasks, student_tasks);
    out["tasks"]["file"] = a.tasks;
  }

  if (a.json_out) {
    std::printf("%s\n", out.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
  } else {
    if (store) print_table(out);
    if (out.contains("answers")) {
      const json& an = out["answers"];
      std::printf("\nown greedy answers to %lld held-out prompts (at most %lld tokens)\n", (long long)an["prompts"].get<int64_t>(),
                  (long long)an["max_tokens"].get<int64_t>());
      std::printf("  %-24s %12s %12s\n", "", "student", "teacher");
      for (const char* k : {"repeated_4gram", "teacher_nll", "mean_tokens", "stopped"})
        std::printf("  %-24s %12.3f %12.3f\n", k, an["student"][k].is_number() ? an["student"][k].get<double>() : NAN,
                    an["teacher"][k].is_number() ? an["teacher"][k].get<double>() : NAN);
    }
    if (store && !tasks.empty()) std::printf("\n");
    if (!tasks.empty()) print_tasks(out);
  }
  std::fflush(stdout);
}

}  // namespace

void register_eval(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  a->student.model.clear();
  CLI::App* sub = app.add_subcommand(
      "eval", "compare a student with its teacher on held-out teacher text (NLL, agreement, KL, size, speed, samples) "
              "and/or answer-checkable tasks (accuracy, share of the teacher's kept)");
  add_model_options(*sub, a->student);
  sub->get_option("--model")->description("the student: a .gguf file, a Hugging Face directory, or a cached name")->required();
  sub->add_option("--teacher", a->teacher.model, "the teacher (same forms as --model)")->capture_default_str();
  sub->add_option("--data", a->data,
                  "held-out teacher text from `retort capture`: a signal store, or a text store (a teacher behind an "
                  "API with another tokenizer: NLL per byte on the model's own tokens)");
  sub->add_option("--tasks", a->tasks,
                  "answer-checkable tasks (JSONL, e.g. data/tasks/tasks.jsonl): greedy replies of both models, scored "
                  "by exact rules, accuracy per category and the share of the teacher's the student keeps");
  sub->add_option("--max-samples", a->max_samples, "score only the first N samples (0 = all)")->capture_default_str();
  sub->add_option("--generations", a->generations, "greedy generations to show side by side")->capture_default_str();
  sub->add_option("--answers", a->answers,
                  "score both models' own greedy answers to the store's first N prompts: share of repeated "
                  "4-grams, the teacher's NLL of them, length, share ended (0 = off)")
      ->capture_default_str();
  sub->add_option("--answer-tokens", a->answer_tokens, "most tokens per --answers answer")->capture_default_str();
  sub->add_option("-n,--max-tokens", a->max_tokens, "most tokens per generation")->capture_default_str();
  sub->add_option("--batch-tokens", a->batch_tokens, "tokens per scoring batch (bounds memory)")->capture_default_str();
  sub->add_option("--speed-prompt", a->speed_prompt, "prompt tokens of the prefill speed measurement")
      ->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--speed-tokens", a->speed_tokens, "tokens of the batch-1 decode speed measurement (0 = skip speed)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  sub->add_flag("--json", a->json_out, "print everything as one JSON object");
  sub->add_flag("--dense-kl", a->dense_kl,
                "also KL(teacher‖student) over the whole vocabulary from the teacher's own forward pass (both "
                "models in memory): its excess over the top-k+tail KL is what the student gets wrong inside the "
                "tail bucket");
  sub->callback([a] {
    a->teacher.threads = a->student.threads;
    a->teacher.device = a->student.device;
    a->teacher.dtype = a->student.dtype;
    run(*a);
  });
}

}  // namespace retort::cli
