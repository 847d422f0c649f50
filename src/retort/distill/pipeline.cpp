#include "retort/distill/pipeline.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "retort/distill/answer_quality.h"
#include "retort/distill/capture.h"
#include "retort/distill/evaluate.h"
#include "retort/distill/export.h"
#include "retort/distill/pipeline_parts.h"
#include "retort/distill/report.h"
#include "retort/distill/signal_store.h"
#include "retort/distill/student.h"
#include "retort/distill/tasks.h"
#include "retort/model/loader.h"
#include "retort/protect/keys.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

namespace fs = std::filesystem;

namespace retort {

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

namespace {

std::string resolve_input(const std::string& path, const std::string& base_dir) {
  if (path.empty() || fs::exists(path) || base_dir.empty()) return path;
  const fs::path alt = fs::path(base_dir) / path;
  return fs::exists(alt) ? alt.string() : path;
}

template <class T>
void get_opt(const nlohmann::json& j, const char* key, T& out, const std::string& where) {
  if (!j.contains(key)) return;
  try {
    out = j.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    fail(where, ": field \"", key, "\" has the wrong type (", j.at(key).dump(), ")");
  }
}

void reject_unknown(const nlohmann::json& j, std::initializer_list<const char*> keys, const std::string& where) {
  for (const auto& [k, v] : j.items()) {
    bool ok = false;
    for (const char* known : keys) ok = ok || k == known;
    if (!ok) {
      std::string list;
      for (const char* known : keys) list += cat(list.empty() ? "" : ", ", known);
      fail(where, ": unknown field \"", k, "\" (known: ", list, ")");
    }
  }
}

// Complete, or (a --limit capture, never marked complete) holding all the samples asked for.
bool store_done(const SignalStore& s, const PipelineOptions& o, int64_t limit) {
  return s.manifest().complete || (limit > 0 && s.n_samples() >= limit * o.samples_per_prompt);
}

}  // namespace

std::string move_aside(const std::string& dir, const std::string& label, const std::string& why, const char* then) {
  int n = 1;
  while (fs::exists(dir + ".previous-" + std::to_string(n))) ++n;
  const std::string to = dir + ".previous-" + std::to_string(n);
  fs::rename(dir, to);
  std::fprintf(stderr, "[%s] %s %s; moved it to %s and %s\n", label.c_str(), dir.c_str(), why.c_str(), to.c_str(), then);
  return to;
}

void set_aside_run_of_other_settings(const std::string& dir, const TrainerConfig& cfg, const std::string& label) {
  const std::string ckpt = latest_checkpoint(dir);
  if (ckpt.empty()) return;
  std::string have;
  try {
    have = nlohmann::json::parse(read_file(ckpt + "/trainer_state.json")).value("config_hash", "");
  } catch (...) {
    return;
  }
  if (have == cfg.hash()) return;
  move_aside(dir, label, "was trained with other settings", "starting over");
}

namespace {

// What differs between a store's capture settings and the config's ("" when nothing does): the
// teacher, the prompts' content, k, and the generation settings that change the text.
std::string store_settings_differ(const SignalStore& s, const PipelineOptions& o, const std::string& prompts) {
  const StoreManifest& m = s.manifest();
  const nlohmann::json& g = m.generation;
  auto gen = [&](const char* key, const nlohmann::json& want) -> std::string {
    if (!g.is_object() || !g.contains(key) || g[key] != want)
      return cat(key, " ", g.is_object() && g.contains(key) ? g[key].dump() : "unset", " (now ", want.dump(), ")");
    return "";
  };
  for (std::string d : {gen("max_tokens", o.max_tokens), gen("temperature", o.capture_temperature),
                        gen("seed", o.capture_seed), gen("samples_per_prompt", o.samples_per_prompt)})
    if (!d.empty()) return d;
  if (m.k != o.k) return cat("k ", m.k, " (now ", o.k, ")");
  const nlohmann::json& tp = m.teacher;
  if (tp.is_object() && tp.value("spec", std::string()) != o.teacher)
    return cat("teacher ", tp.value("spec", std::string("unset")), " (now ", o.teacher, ")");
  // The prompts by content, so a clone elsewhere still reuses its stores.
  const nlohmann::json& pr = m.prompts;
  if (pr.is_object() && pr.contains("sha256") && fs::exists(prompts)) {
    MappedFile f(prompts);
    if (pr["sha256"] != sha256_hex(f.data(), f.size()))
      return cat("prompts ", pr.value("path", std::string("?")), " had other content than ", prompts, " has now");
  }
  return "";
}

// A store under OUT/data: reused when complete, resumed otherwise. One captured with other settings
// (an older config) is moved aside to DIR.previous-N, never deleted, and captured again; *moved says so.
std::string ensure_store(LoadedModel& teacher, const PipelineOptions& o, const std::string& prompts,
                         const std::string& dir, int64_t limit, const char* what, bool* moved) {
  if (fs::exists(dir + "/manifest.json")) {
    std::string differ;
    try {
      differ = store_settings_differ(SignalStore::open(dir), o, prompts);
    } catch (const Error&) {
      // Incomplete or unreadable: capture() resumes it or explains what is wrong.
    }
    if (!differ.empty()) {
      move_aside(dir, what, "was captured with other settings (" + differ + ")", "capturing again");
      *moved = true;
    }
  }
  if (fs::exists(dir + "/manifest.json")) {
    try {
      auto s = SignalStore::open(dir);
      if (store_done(s, o, limit)) {
        std::fprintf(stderr, "[%s] reusing the complete store %s (%lld samples)\n", what, dir.c_str(),
                     static_cast<long long>(s.n_samples()));
        return dir;
      }
    } catch (const Error&) {
      // Incomplete or mismatching: capture() resumes it or explains the mismatch.
    }
  }
  check(fs::exists(prompts), "distill: prompts file ", prompts, " not found (", what,
        " prompts; set \"", what, "_prompts\" in the config or pass --", what, "-prompts)");
  CaptureOptions co;
  co.prompts_path = prompts;
  co.out_dir = dir;
  co.samples_per_prompt = o.samples_per_prompt;
  co.sampling.temperature = o.capture_temperature;
  co.sampling.seed = o.capture_seed;
  co.max_tokens = o.max_tokens;
  co.k = o.k;
  co.batch = o.capture_batch;
  co.limit = limit;
  co.progress = o.progress;
  std::fprintf(stderr, "[%s] capturing the teacher's signal into %s\n", what, dir.c_str());
  auto sum = capture(teacher, o.teacher, co);
  std::fprintf(stderr, "[%s] %lld samples written (%lld skipped), %lld tokens in %.1f s\n", what,
               static_cast<long long>(sum.samples_written), static_cast<long long>(sum.samples_skipped),
               static_cast<long long>(sum.tokens_generated), sum.seconds);
  return dir;
}

// Calibration rows for pruning: the first samples of the store, cut to a common length.
torch::Tensor calibration_batch(const SignalStore& s, int64_t rows, int64_t len) {
  std::vector<int64_t> ids;
  int64_t taken = 0;
  for (int64_t i = 0; i < s.n_samples() && taken < rows; ++i) {
    auto sm = s.sample(i);
    if (sm.n_tokens < len) continue;
    ids.insert(ids.end(), sm.tokens, sm.tokens + len);
    ++taken;
  }
  if (taken == 0) {  // all short: use the shortest common length of the first samples
    int64_t m = INT64_MAX;
    for (int64_t i = 0; i < std::min<int64_t>(rows, s.n_samples()); ++i) m = std::min(m, s.sample(i).n_tokens);
    return calibration_batch(s, rows, std::max<int64_t>(1, m));
  }
  return torch::tensor(ids, torch::kInt64).view({taken, len});
}

}  // namespace

CausalLM clone_model(CausalLMImpl& src) {
  CausalLM m = make_causal_lm(src.hparams());
  m->to(src.device(), torch::kFloat32);
  torch::NoGradGuard no_grad;
  auto from = src.named_parameters();
  for (auto& p : m->named_parameters()) {
    const auto* s = from.find(p.key());
    TORCH_CHECK(s != nullptr, "clone_model: missing ", p.key());
    p.value().copy_(*s);
  }
  return m;
}

namespace {

nlohmann::json metrics_row(const std::string& name, int64_t params, const EvalMetrics& m) {
  return {{"model", name}, {"params", params}, {"nll", m.nll}, {"ppl", m.ppl}, {"top1_agree", m.top1_agree},
          {"kl", m.kl}, {"positions", m.positions}};
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

}  // namespace

std::string params_str(int64_t n) { return fmt("%.1fM", double(n) / 1e6); }

std::string loss_title(const std::string& loss) {
  return loss == "ce" ? "SFT-only (ce)" : "KD (" + loss + ")";
}

namespace {

// Greedy answers (64 tokens) of the teacher and each trained student to the first 3 held-out prompts:
// {"max_tokens", "columns": [teacher, titles...], "rows": [{"prompt", "answers": [...]}]}.
nlohmann::json report_samples(LoadedModel& teacher, const std::vector<std::pair<std::string, CausalLM>>& students,
                              const SignalStore& heldout) {
  constexpr int64_t kPrompts = 3, kMaxTokens = 64;
  const auto prompts = store_prompts(heldout, kPrompts);
  nlohmann::json cols = nlohmann::json::array({"teacher"}), rows = nlohmann::json::array();
  std::vector<std::vector<std::string>> answers = {greedy_replies(teacher, *teacher.model, prompts, kMaxTokens)};
  for (auto [title, m] : students) {  // a copy of the holder: generation needs a non-const model
    cols.push_back(title);
    answers.push_back(greedy_replies(teacher, *m, prompts, kMaxTokens));
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& col : answers) a.push_back(col[i]);
    rows.push_back({{"prompt", prompt_display(*teacher.tokenizer, prompts[i])}, {"answers", a}});
  }
  return {{"max_tokens", kMaxTokens}, {"columns", cols}, {"rows", rows}};
}

}  // namespace

PipelineOptions PipelineOptions::from_json(const nlohmann::json& j, const std::string& where,
                                           const std::string& base_dir) {
  check(j.is_object(), where, ": the config must be a JSON object");
  reject_unknown(j, {"teacher", "train_prompts", "heldout_prompts", "out", "capture", "student", "losses", "train",
                     "export", "threads", "device", "comment", "tasks", "api"},
                 where);
  PipelineOptions o;
  get_opt(j, "teacher", o.teacher, where);
  get_opt(j, "train_prompts", o.train_prompts, where);
  get_opt(j, "heldout_prompts", o.heldout_prompts, where);
  get_opt(j, "out", o.out, where);
  get_opt(j, "threads", o.threads, where);
  get_opt(j, "device", o.device, where);
  o.train_prompts = resolve_input(o.train_prompts, base_dir);
  o.heldout_prompts = resolve_input(o.heldout_prompts, base_dir);
  get_opt(j, "tasks", o.tasks, where);
  o.tasks = resolve_input(o.tasks, base_dir);
  if (j.contains("capture")) {
    const auto& c = j["capture"];
    const std::string w = where + " capture";
    check(c.is_object(), w, ": must be an object");
    reject_unknown(c, {"max_tokens", "samples_per_prompt", "batch", "train_limit", "heldout_limit", "k", "temperature",
                       "seed"},
                   w);
    get_opt(c, "max_tokens", o.max_tokens, w);
    get_opt(c, "samples_per_prompt", o.samples_per_prompt, w);
    get_opt(c, "batch", o.capture_batch, w);
    get_opt(c, "train_limit", o.train_limit, w);
    get_opt(c, "heldout_limit", o.heldout_limit, w);
    get_opt(c, "k", o.k, w);
    get_opt(c, "temperature", o.capture_temperature, w);
    get_opt(c, "seed", o.capture_seed, w);
  }
  if (j.contains("student")) {
    if (j["student"].is_string())
      o.student = j["student"].get<std::string>();
    else
      o.student = StudentConfig::from_json(j["student"], where + " student").to_json().dump();
  }
  if (j.contains("api")) {
    const auto& a = j["api"];
    const std::string w = where + " api";
    check(a.is_object(), w, ": must be an object");
    reject_unknown(a, {"url", "model", "api_key_env", "concurrency", "rpm", "timeout", "max_retries"}, w);
    get_opt(a, "url", o.api.url, w);
    get_opt(a, "model", o.api.model, w);
    get_opt(a, "api_key_env", o.api.api_key_env, w);
    get_opt(a, "concurrency", o.api.concurrency, w);
    get_opt(a, "rpm", o.api.rpm, w);
    get_opt(a, "timeout", o.api.timeout_s, w);
    get_opt(a, "max_retries", o.api.max_retries, w);
    if (!j.contains("losses")) o.losses = {"ce", "gold"};
    // The student is a pretrained model here, not one cut from the teacher: a fine-tuning rate.
    if (!j.contains("train") || !j["train"].contains("lr")) o.train.lr = kApiStudentLr;
  }
  get_opt(j, "losses", o.losses, where);
  check(!o.losses.empty(), where, ": \"losses\" is empty");
  for (const auto& l : o.losses)
    if (o.api.url.empty() || (l != "uld" && l != "gold")) loss_kind_from_name(l);
  if (j.contains("train")) {
    const auto& t = j["train"];
    const std::string w = where + " train";
    check(t.is_object(), w, ": must be an object");
    reject_unknown(t, {"steps", "batch", "accum", "max_seq", "lr", "min_lr_ratio", "warmup", "weight_decay", "beta1",
                       "beta2", "eps", "clip", "seed", "temperature", "beta", "alpha", "t2_scale", "eval_every",
                       "eval_samples", "save_every", "chunk_rows"},
                   w);
    auto& c = o.train;
    get_opt(t, "steps", c.steps, w);
    get_opt(t, "batch", c.batch, w);
    get_opt(t, "accum", c.accum, w);
    get_opt(t, "max_seq", c.max_seq, w);
    get_opt(t, "lr", c.lr, w);
    get_opt(t, "min_lr_ratio", c.min_lr_ratio, w);
    get_opt(t, "warmup", c.warmup, w);
    get_opt(t, "weight_decay", c.weight_decay, w);
    get_opt(t, "beta1", c.beta1, w);
    get_opt(t, "beta2", c.beta2, w);
    get_opt(t, "eps", c.eps, w);
    get_opt(t, "clip", c.clip, w);
    get_opt(t, "seed", c.seed, w);
    get_opt(t, "temperature", c.loss.temperature, w);
    get_opt(t, "beta", c.loss.beta, w);
    get_opt(t, "alpha", c.loss.alpha, w);
    get_opt(t, "t2_scale", c.loss.t2_scale, w);
    get_opt(t, "eval_every", c.eval_every, w);
    get_opt(t, "eval_samples", c.eval_samples, w);
    get_opt(t, "save_every", c.save_every, w);
    get_opt(t, "chunk_rows", c.chunk_rows, w);
  }
  if (j.contains("export")) {
    const auto& e = j["export"];
    check(e.is_object(), where, " export: must be an object");
    reject_unknown(e, {"gguf"}, where + " export");
    get_opt(e, "gguf", o.gguf_type, where + " export");
  }
  return o;
}

nlohmann::json PipelineOptions::to_json() const {
  return {{"teacher", teacher},
          {"train_prompts", train_prompts},
          {"heldout_prompts", heldout_prompts},
          {"out", out},
          {"capture",
           {{"max_tokens", max_tokens},
            {"samples_per_prompt", samples_per_prompt},
            {"batch", capture_batch},
            {"train_limit", train_limit},
            {"heldout_limit", heldout_limit},
            {"k", k},
            {"temperature", capture_temperature},
            {"seed", capture_seed}}},
          {"student", student},
          {"losses", losses},
          {"train", train.to_json()},
          {"export", {{"gguf", gguf_type}}},
          {"tasks", tasks},
          {"api", api.url.empty() ? nlohmann::json()
                                  : nlohmann::json{{"url", api.url},
                                                   {"model", api.model},
                                                   {"api_key_env", api.api_key_env},
                                                   {"concurrency", api.concurrency},
                                                   {"rpm", api.rpm},
                                                   {"timeout", api.timeout_s},
                                                   {"max_retries", api.max_retries}}}};
}

std::string summary_table(const nlohmann::json& summary) {
  std::ostringstream os;
  os << "| model | params | held-out NLL | ppl | top-1 agreement | KL(teacher‖student) | repeated 4-grams | "
        "teacher NLL of answers |\n";
  os << "|---|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const auto& r : summary.value("table", nlohmann::json::array())) {
    // Own greedy answers (step 8 of run_pipeline): absent for the student before training.
    const nlohmann::json a = r.value("answers", nlohmann::json::object());
    const bool has = a.contains("repeated_4gram"), nll = has && a["teacher_nll"].is_number();
    os << "| " << r.value("model", "") << " | " << params_str(r.value("params", int64_t(0))) << " | "
       << fmt("%.3f", r.value("nll", 0.0)) << " | " << fmt("%.2f", r.value("ppl", 0.0)) << " | "
       << fmt("%.3f", r.value("top1_agree", 0.0)) << " | " << fmt("%.3f", r.value("kl", 0.0)) << " | "
       << (has ? fmt("%.3f", a["repeated_4gram"].get<double>()) : "") << " | "
       << (nll ? fmt("%.3f", a["teacher_nll"].get<double>()) : "") << " |\n";
  }
  return os.str();
}

nlohmann::json run_pipeline(const PipelineOptions& o) {
  if (!o.api.url.empty()) return run_api_pipeline(o);
  const auto t_start = std::chrono::steady_clock::now();
  const std::string out = o.out.empty() ? (fs::path(model_cache_dir()).parent_path() / "runs" / "quickstart").string()
                                        : o.out;
  fs::create_directories(out);
  nlohmann::json timings = nlohmann::json::object();

  // 1. The teacher (float32 weights on CPU: dequantized once, fast to run; bf16 on CUDA).
  auto t = std::chrono::steady_clock::now();
  LoadOptions lo;
  lo.device = torch::Device(o.device);
  lo.dtype = lo.device.is_cuda() ? torch::kBFloat16 : torch::kFloat32;
  LoadedModel teacher = load_model(o.teacher, lo);
  check(teacher.tokenizer != nullptr, "distill: the teacher ", o.teacher, " has no tokenizer");
  const std::string tok_hash = teacher.tokenizer->hash();
  std::fprintf(stderr, "[teacher] %s: %s parameters, loaded in %.1f s\n", teacher.path.c_str(),
               params_str(teacher.hparams.n_params()).c_str(), teacher.load_seconds);

  // The student's sizes, checked before the long capture (an impossible size or init fails here).
  StudentConfig scfg = (!o.student.empty() && o.student.front() == '{')
                           ? StudentConfig::from_json(nlohmann::json::parse(o.student), "student")
                           : StudentConfig::parse(o.student);
  const ModelHParams shp = student_hparams(teacher.hparams, scfg);
  std::vector<Task> tasks;  // read now: a bad task file fails before the long capture
  if (!o.tasks.empty()) tasks = load_tasks(o.tasks);

  // 2. The teacher's signal on the train and held-out prompts.
  t = std::chrono::steady_clock::now();
  bool train_recaptured = false, heldout_recaptured = false;
  const std::string train_dir =
      ensure_store(teacher, o, o.train_prompts, out + "/data/train", o.train_limit, "train", &train_recaptured);
  const std::string heldout_dir =
      ensure_store(teacher, o, o.heldout_prompts, out + "/data/heldout", o.heldout_limit, "heldout", &heldout_recaptured);
  // Runs trained on a store that was just captured again are not this config's runs either (a
  // finished one would otherwise be reused as it is; held-out metrics are recomputed anyway).
  if (train_recaptured)
    for (const auto& loss : o.losses)
      if (fs::exists(out + "/train-" + loss))
        move_aside(out + "/train-" + loss, "train " + loss, "was trained on the earlier store", "starting over");
  timings["capture_s"] = seconds_since(t);
  auto train_store = SignalStore::open(train_dir);
  auto heldout_store = SignalStore::open(heldout_dir);
  check(store_done(train_store, o, o.train_limit) && store_done(heldout_store, o, o.heldout_limit),
        "distill: a capture did not complete; run again to resume it");

  // 3. The student.
  t = std::chrono::steady_clock::now();
  CausalLM base;
  if (scfg.init == "prune") {
    torch::NoGradGuard no_grad;
    base = prune_from_teacher(teacher, shp, calibration_batch(train_store, 16, 64), scfg.keep);
  } else {
    base = make_random_student(shp, scfg.seed);
  }
  base->to(lo.device, torch::kFloat32);
  timings["student_s"] = seconds_since(t);
  const int64_t t_params = teacher.hparams.n_params(), s_params = shp.n_params();
  std::fprintf(stderr, "[student] %s: %s parameters (%.1f× fewer than the teacher's %s)\n",
               scfg.to_json().dump().c_str(), params_str(s_params).c_str(), double(t_params) / double(s_params),
               params_str(t_params).c_str());

  // 4. Evaluate teacher and student before training on the held-out store.
  t = std::chrono::steady_clock::now();
  nlohmann::json table = nlohmann::json::array();
  EvalMetrics teacher_m, before_m;
  {
    torch::NoGradGuard no_grad;
    teacher_m = evaluate_on_store(*teacher.model, heldout_store, tok_hash, o.train.eval_samples);
    before_m = evaluate_on_store(*base, heldout_store, tok_hash, o.train.eval_samples);
  }
  table.push_back(metrics_row("teacher", t_params, teacher_m));
  table.push_back(metrics_row("student before", s_params, before_m));
  timings["eval_before_s"] = seconds_since(t);

  // 5. One training run per loss, each from the same initial student.
  ExportInfo info;
  info.chat_template = teacher.chat_template;
  info.eos_ids = teacher.eos_ids;
  info.generation_defaults = teacher.generation_defaults;
  nlohmann::json runs = nlohmann::json::object();
  std::string kd_dir, kd_loss;
  CausalLM kd_model;
  std::vector<std::pair<std::string, CausalLM>> trained;  // (title, model) for the answers side by side
  for (const auto& loss : o.losses) {
    t = std::chrono::steady_clock::now();
    TrainerConfig cfg = o.train;
    cfg.loss.kind = loss_kind_from_name(loss);
    cfg.resume = true;  // a re-run continues (or just re-evaluates) instead of starting over
    cfg.save_every = cfg.save_every > 0 ? cfg.save_every : cfg.steps;
    cfg.keep_checkpoints = 1;
    cfg.progress = o.progress;
    cfg.label = "train " + loss;
    TrainerInputs in;
    in.student = clone_model(*base);
    in.tokenizer = teacher.tokenizer.get();
    in.export_info = info;
    in.export_info.provenance = {{"teacher", o.teacher}, {"loss", loss}, {"student", scfg.to_json()},
                                 {"steps", cfg.steps}};
    in.data = &train_store;
    in.eval_data = &heldout_store;
    in.teacher = &teacher;
    in.provenance = in.export_info.provenance;
    const std::string dir = out + "/train-" + loss;
    set_aside_run_of_other_settings(dir, cfg, cfg.label);
    std::fprintf(stderr, "[train %s] %lld steps × %lld sequences → %s\n", loss.c_str(),
                 static_cast<long long>(cfg.steps), static_cast<long long>(cfg.batch * cfg.accum), dir.c_str());
    auto r = train(in, cfg, dir);
    check(r.eval.has_value(), "distill: no evaluation after training ", loss);
    table.push_back(metrics_row(loss_title(loss), s_params, *r.eval));
    runs[loss] = {{"dir", dir},
                  {"steps", r.steps},
                  {"tokens", r.tokens},
                  {"scored", r.scored},
                  {"seconds", seconds_since(t)},
                  {"tokens_per_s", r.tokens_per_s},
                  {"last_loss", r.last_loss},
                  {"title", loss_title(loss)}};
    trained.emplace_back(loss_title(loss), in.student);
    if (kd_dir.empty() && loss != "ce") {
      kd_dir = dir;
      kd_loss = loss;
      kd_model = in.student;
    }
  }

  // 6. Export the KD student (HF dir is OUT/train-<loss>/final) as GGUF.
  nlohmann::json exports = nlohmann::json::object();
  if (kd_model) {
    exports["hf"] = kd_dir + "/final";
    if (!o.gguf_type.empty()) {
      t = std::chrono::steady_clock::now();
      const std::string gguf = out + "/student-" + kd_loss + "-" + o.gguf_type + ".gguf";
      ExportInfo gi = info;
      gi.provenance = {{"teacher", o.teacher}, {"loss", kd_loss}, {"student", scfg.to_json()}};
      export_gguf(*kd_model, *teacher.tokenizer, gi, gguf, o.gguf_type);
      exports["gguf"] = gguf;
      timings["export_s"] = seconds_since(t);
    }
  }
  // 7. The teacher's and each student's greedy answers to the first held-out prompts, and the
  // task accuracy of the teacher and the KD student.
  t = std::chrono::steady_clock::now();
  nlohmann::json samples = report_samples(teacher, trained, heldout_store);
  timings["answers_s"] = seconds_since(t);

  // 8. Every model's own greedy answers to all held-out prompts: how repetitive they are and how
  // plausible the teacher finds them (answer_quality.h), next to the teacher's own; at most the capture's
  // max_tokens each, the length of the teacher text the held-out metrics score.
  t = std::chrono::steady_clock::now();
  {
    const auto prompts = store_prompts(heldout_store, heldout_store.n_samples());
    auto add = [&](const std::string& title, CausalLMImpl& m) {
      AnswerQuality q = answer_quality(teacher, m, prompts, o.max_tokens, teacher.model.get());
      std::fprintf(stderr, "[answers] %s: %lld answers, %.1f tokens each, %.0f%% ended, repeated 4-grams %.3f, "
                   "teacher NLL %.3f\n", title.c_str(), static_cast<long long>(q.answers), q.mean_tokens,
                   100 * q.stopped, q.repeated_4gram, q.teacher_nll);
      for (auto& row : table)
        if (row["model"] == title) row["answers"] = q.to_json();
    };
    std::fprintf(stderr, "[answers] greedy answers (at most %lld tokens) to %zu held-out prompts\n",
                 static_cast<long long>(o.max_tokens), prompts.size());
    add("teacher", *teacher.model);
    for (auto& [title, m] : trained) add(title, *m);
  }
  timings["answer_quality_s"] = seconds_since(t);
  t = std::chrono::steady_clock::now();
  nlohmann::json task_cmp;
  if (!tasks.empty()) {
    std::fprintf(stderr, "[tasks] %zu tasks from %s: teacher, then %s\n", tasks.size(), o.tasks.c_str(),
                 kd_model ? loss_title(kd_loss).c_str() : "the last student");
    CausalLMImpl& student = kd_model ? *kd_model : *trained.back().second;
    TaskRun tr = run_tasks(teacher, *teacher.model, tasks);
    TaskRun sr = run_tasks(teacher, student, tasks);  // the student shares the teacher's tokenizer and template
    task_cmp = compare_task_runs(tasks, tr, sr);
    std::fprintf(stderr, "[tasks] teacher %lld/%zu right (%.0f s), student %lld/%zu (%.0f s)\n",
                 static_cast<long long>(task_cmp["overall"]["teacher_correct"].get<int64_t>()), tasks.size(),
                 tr.seconds, static_cast<long long>(task_cmp["overall"]["student_correct"].get<int64_t>()),
                 tasks.size(), sr.seconds);
    task_cmp["file"] = o.tasks;
    task_cmp["student_name"] = kd_model ? loss_title(kd_loss) : trained.back().first;
    for (auto& row : table) {
      if (row["model"] == "teacher") row["task_accuracy"] = task_cmp["overall"]["teacher"];
      if (row["model"] == task_cmp["student_name"]) row["task_accuracy"] = task_cmp["overall"]["student"];
    }
  }
  timings["tasks_s"] = seconds_since(t);
  timings["total_s"] = seconds_since(t_start);

  nlohmann::json summary = {{"out", out},
                            {"teacher", {{"spec", o.teacher}, {"path", teacher.path}, {"params", t_params}}},
                            {"student", {{"config", scfg.to_json()}, {"params", s_params},
                                         {"ratio", double(t_params) / double(s_params)}}},
                            {"data", {{"train", {{"dir", train_dir}, {"samples", train_store.n_samples()},
                                                 {"scored", train_store.n_scored()}}},
                                      {"heldout", {{"dir", heldout_dir}, {"samples", heldout_store.n_samples()},
                                                   {"scored", heldout_store.n_scored()}}}}},
                            {"table", table},
                            {"runs", runs},
                            {"exports", exports},
                            {"timings", timings},
                            {"threads", torch::get_num_threads()},
                            {"options", o.to_json()},
                            {"samples", samples}};
  if (!task_cmp.is_null()) summary["tasks"] = task_cmp;
  write_file_atomic(out + "/summary.json", summary.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
  write_file_atomic(out + "/report.html", distill_report_html(summary));

  std::printf("\n%s\n", summary_table(summary).c_str());
  if (!task_cmp.is_null()) {
    std::printf("tasks (%s): teacher vs %s\n%s", o.tasks.c_str(), task_cmp["student_name"].get<std::string>().c_str(),
                task_table_text(task_cmp).c_str());
    if (task_cmp["overall"]["kept"].is_number())
      std::printf("%s keeps %.1f%% of the teacher's task accuracy\n\n",
                  task_cmp["student_name"].get<std::string>().c_str(), 100 * task_cmp["overall"]["kept"].get<double>());
  }
  std::printf("student: %s params (%.1f× fewer than the teacher); KD student: %s/final (HF)%s\n",
              params_str(s_params).c_str(), double(t_params) / double(s_params), kd_dir.c_str(),
              exports.contains("gguf") ? cat(", ", exports["gguf"].get<std::string>(), " (GGUF)").c_str() : "");
  std::printf("report: %s/report.html   total %.0f s\n", out.c_str(), timings["total_s"].get<double>());
  std::fflush(stdout);
  return summary;
}

}  // namespace retort
