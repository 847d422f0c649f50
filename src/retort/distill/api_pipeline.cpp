// retort/distill/api_pipeline.cpp — the main job from a teacher behind an API (`retort distill
// --teacher-url`; pipeline.h): capture → student → one run per loss → per-byte evaluation → export → table.
//
//   OUT/data/train, OUT/data/heldout   text stores with the top-k logprobs (remote_capture.h): resumed after a
//                                      kill, reused when complete — a finished capture asks the API nothing
//   OUT/train-<loss>/                  one trainer run per loss, each from the same student (resumed when re-run;
//                                      moved aside when its settings changed)
//   OUT/student-<loss>-<type>.gguf     the KD student (first loss that is not ce)
//   OUT/summary.json, OUT/report.html  the table: the teacher (its NLL per byte of its own samples, from the
//                                      API's logprobs), the student before, each run; answers side by side;
//                                      task accuracy of the teacher (through the API) and the KD student
//
// The student is a model (HF dir, checkpoint, GGUF or a model-cache name) with its own tokenizer, which may or
// may not be the teacher's: the data go through xtok_data.h either way, so students with any tokenizer compare
// on the same held-out bytes.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <thread>

#include "retort/decode/generate.h"
#include "retort/distill/evaluate.h"
#include "retort/distill/export.h"
#include "retort/distill/pipeline.h"
#include "retort/distill/pipeline_parts.h"
#include "retort/distill/remote_capture.h"
#include "retort/distill/tasks.h"
#include "retort/distill/text_store.h"
#include "retort/distill/xtok_data.h"
#include "retort/model/loader.h"
#include "retort/model/runtime_model.h"
#include "retort/serve/openai_client.h"
#include "retort/serve/openai_schema.h"
#include "retort/util/error.h"
#include "retort/util/file.h"
#include "retort/util/html_report.h"

namespace fs = std::filesystem;

namespace retort {

namespace {

using json = nlohmann::json;

std::string api_key(const PipelineOptions::Api& a) {
  if (a.api_key_env.empty()) return "";
  const char* key = std::getenv(a.api_key_env.c_str());
  check(key != nullptr && *key != '\0', "--api-key-env ", a.api_key_env,
        ": the environment variable is not set (export it with the API key, or leave --api-key-env out for an "
        "endpoint without keys)");
  return key;
}

// Captures (or resumes, or reuses) one text store; errors when samples are still missing.
json capture_store(const PipelineOptions& o, const std::string& prompts, const std::string& dir, int64_t limit,
                   const std::string& label) {
  RemoteTeacher t;
  t.url = o.api.url;
  t.model = o.api.model;
  t.api_key = api_key(o.api);
  t.signal = "logprobs";
  t.concurrency = o.api.concurrency;
  t.requests_per_minute = o.api.rpm;
  t.timeout_s = o.api.timeout_s;
  t.max_retries = o.api.max_retries;
  CaptureOptions c;
  c.prompts_path = prompts;
  c.out_dir = dir;
  c.samples_per_prompt = o.samples_per_prompt;
  c.sampling.temperature = o.capture_temperature;
  c.sampling.seed = o.capture_seed;
  c.max_tokens = o.max_tokens;
  c.k = o.k;
  c.chat = true;
  c.limit = limit;
  c.progress = o.progress;
  const RemoteCaptureSummary s = capture_remote(t, c);
  check(!s.interrupted, "distill: the capture of ", dir, " was interrupted; run the same command again to resume it");
  check(s.failed == 0, "distill: ", s.failed, " samples of ", dir, " failed after their retries (the API is down or "
        "overloaded?); run the same command again to ask for them");
  std::fprintf(stderr, "[capture %s] %s: %lld new samples (%lld requests, %lld retries, %lld refused)\n", label.c_str(),
               dir.c_str(), static_cast<long long>(s.capture.samples_written), static_cast<long long>(s.requests),
               static_cast<long long>(s.retries), static_cast<long long>(s.refused));
  return {{"dir", dir},          {"new_samples", s.capture.samples_written}, {"requests", s.requests},
          {"retries", s.retries}, {"refused", s.refused},                   {"unmappable", s.unmappable}};
}

// Greedy replies of the teacher behind the API to every task (temperature 0, the task's max_tokens), scored
// by the same rules as a local model's; `concurrency` requests at a time.
TaskRun api_task_run(const PipelineOptions& o, const std::vector<Task>& tasks) {
  TaskRun run;
  run.outcomes.resize(tasks.size());
  const auto t0 = std::chrono::steady_clock::now();
  std::atomic<size_t> next{0};
  std::mutex mu;
  std::string error;
  auto worker = [&] {
    OpenAIClientOptions co;
    co.base_url = o.api.url;
    co.api_key = api_key(o.api);
    co.timeout_s = o.api.timeout_s;
    co.max_retries = o.api.max_retries;
    OpenAIClient client(co);
    for (size_t i = next++; i < tasks.size(); i = next++) {
      ApiRequest r;
      r.kind = Endpoint::chat;
      r.model = o.api.model;
      r.messages = {{"user", tasks[i].prompt}};
      r.max_tokens = tasks[i].max_tokens;
      r.sampling.temperature = 0;
      r.seed = 0;
      try {
        const ParsedCompletion c = client.chat(r);
        check(!c.choices.empty(), "the answer has no choices");
        TaskOutcome& out = run.outcomes[i];
        out.reply = c.choices.front().text;
        out.finish_reason = c.choices.front().finish_reason;
        out.tokens = c.usage.completion_tokens;
        out.score = score_task(tasks[i], out.reply);
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(mu);
        if (error.empty()) error = cat("task ", tasks[i].id, ": ", e.what());
        next = tasks.size();
      }
    }
  };
  std::vector<std::thread> threads;
  for (int w = 0; w < std::max(1, o.api.concurrency); ++w) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  check(error.empty(), "distill: asking the teacher's API the tasks: ", error);
  for (const auto& out : run.outcomes) run.tokens += out.tokens;
  run.seconds = seconds_since(t0);
  return run;
}

json eval_row(const std::string& model, int64_t params, const json& e) {
  json r = e;
  r["model"] = model;
  r["params"] = params;
  return r;
}

std::string num_text(const json& v, const char* f) {
  if (!v.is_number()) return "";
  char buf[32];
  std::snprintf(buf, sizeof buf, f, v.get<double>());
  return buf;
}

}  // namespace

json run_api_pipeline(const PipelineOptions& o) {
  const auto t_start = std::chrono::steady_clock::now();
  check(!o.api.model.empty(), "distill --teacher-url: --teacher-model NAME is required (the model the API serves)");
  const std::string out = o.out.empty() ? (fs::path(model_cache_dir()).parent_path() / "runs" / "api").string() : o.out;
  for (const auto& l : o.losses)
    check(l == "ce" || l == "uld" || l == "gold", "distill --teacher-url: loss \"", l, "\" needs the teacher's ",
          "logits in the student's vocabulary; from an API the losses are ce (SFT on its text), uld and gold");
  const bool student_is_config = o.student.find('=') != std::string::npos || (!o.student.empty() && o.student[0] == '{');
  check(!student_is_config, "distill --teacher-url: the student must be a model with its own tokenizer (an HF dir, "
        "a checkpoint, a GGUF or a model-cache name such as gemma3-270m), not a config (", o.student,
        "): a student cut from the teacher needs the teacher's weights");
  fs::create_directories(out);
  json timings = json::object();

  // 1. The student (before the capture, so that a bad one fails first); float32 master weights.
  auto t = std::chrono::steady_clock::now();
  LoadOptions lo;
  lo.device = torch::Device(o.device);
  lo.dtype = torch::kFloat32;
  LoadedModel student = load_model(o.student, lo);
  check(student.tokenizer != nullptr, "distill: the student ", o.student, " has no tokenizer");
  const int64_t s_params = student.hparams.n_params();
  std::fprintf(stderr, "[student] %s: %s parameters, loaded in %.1f s\n", student.path.c_str(),
               params_str(s_params).c_str(), student.load_seconds);
  std::vector<Task> tasks;
  if (!o.tasks.empty()) tasks = load_tasks(o.tasks);  // a bad file fails before the capture

  // 2. The teacher's text and logprobs through the API.
  t = std::chrono::steady_clock::now();
  const std::string train_dir = out + "/data/train", heldout_dir = out + "/data/heldout";
  json captures = {{"train", capture_store(o, o.train_prompts, train_dir, o.train_limit, "train")},
                   {"heldout", capture_store(o, o.heldout_prompts, heldout_dir, o.heldout_limit, "heldout")}};
  timings["capture_s"] = seconds_since(t);
  const TextStore train_store = TextStore::open(train_dir), heldout_store = TextStore::open(heldout_dir);
  const XTokData train_d = make_xtok_data(train_store, student), heldout_d = make_xtok_data(heldout_store, student);
  for (const XTokData* d : {&train_d, &heldout_d})
    std::fprintf(stderr, "[data] %s: %zu samples for the student's tokenizer, %zu skipped; %.1f%% of the teacher's "
                 "top-%lld tokens are student tokens\n", d->dir.c_str(), d->examples.size(), d->skipped.size(),
                 100 * d->matched_share, static_cast<long long>(d->k));

  // 3. The student before training, on the held-out text.
  t = std::chrono::steady_clock::now();
  json table = json::array();
  XTokEval before;
  {
    torch::NoGradGuard no_grad;
    before = evaluate_xtok(*student.model, heldout_d, o.train.eval_samples, o.train.max_seq);
  }
  json teacher_row = {{"model", "teacher (API)"}, {"params", nullptr},
                      {"nll_per_byte", before.to_json()["teacher_nll_per_byte"]}, {"bits_per_byte", nullptr},
                      {"top1_agree", nullptr}, {"samples", before.samples}, {"bytes", before.bytes}};
  if (std::isfinite(before.teacher_nll_per_byte)) teacher_row["bits_per_byte"] = before.teacher_nll_per_byte / std::log(2.0);
  table.push_back(teacher_row);
  table.push_back(eval_row("student before", s_params, before.to_json()));
  timings["eval_before_s"] = seconds_since(t);

  // 4. One run per loss from the same start.
  ExportInfo info;
  info.chat_template = student.chat_template;
  info.eos_ids = student.eos_ids;
  info.generation_defaults = student.generation_defaults;
  const json teacher_json = {{"url", o.api.url}, {"model", o.api.model}};
  json runs = json::object();
  std::string kd_dir, kd_loss;
  CausalLM kd_model;
  std::vector<std::pair<std::string, CausalLM>> trained;
  for (const auto& loss : o.losses) {
    t = std::chrono::steady_clock::now();
    TrainerConfig cfg = o.train;
    cfg.cross_tokenizer = true;
    cfg.loss.kind = LossKind::CE;
    if (loss != "ce") {
      cfg.xtok_loss = loss;
      cfg.xtok.student_temperature = cfg.xtok.teacher_temperature = o.train.loss.temperature;
      cfg.xtok.beta = o.train.loss.beta;
      if (loss == "gold") {  // resolved here as the trainer would, so the run's config hash is known now
        cfg.xtok.hybrid = true;
        if (cfg.xtok.matched_weight < 0) cfg.xtok.matched_weight = train_d.matched_share;
        if (cfg.xtok.unmatched_weight < 0) cfg.xtok.unmatched_weight = 1.0 - cfg.xtok.matched_weight;
      }
    }
    cfg.resume = true;
    cfg.save_every = cfg.save_every > 0 ? cfg.save_every : cfg.steps;
    cfg.keep_checkpoints = 1;
    cfg.progress = o.progress;
    cfg.label = "train " + loss;
    TrainerInputs in;
    in.student = clone_model(*student.model);
    in.tokenizer = student.tokenizer.get();
    in.export_info = info;
    in.export_info.provenance = {{"teacher", teacher_json}, {"loss", loss}, {"student", student.path},
                                 {"steps", cfg.steps}};
    in.xtok_data = &train_d;
    in.xtok_eval = &heldout_d;
    in.provenance = in.export_info.provenance;
    in.provenance["cross_tokenizer"] = train_d.summary();
    const std::string dir = out + "/train-" + loss;
    set_aside_run_of_other_settings(dir, cfg, cfg.label);
    std::fprintf(stderr, "[train %s] %lld steps × %lld sequences → %s\n", loss.c_str(), static_cast<long long>(cfg.steps),
                 static_cast<long long>(cfg.batch * cfg.accum), dir.c_str());
    const TrainResult r = train(in, cfg, dir);
    check(!r.xtok_eval.is_null(), "distill: no evaluation after training ", loss);
    table.push_back(eval_row(loss_title(loss), s_params, r.xtok_eval));
    runs[loss] = {{"dir", dir},         {"steps", r.steps},         {"tokens", r.tokens},
                  {"scored", r.scored}, {"seconds", seconds_since(t)}, {"tokens_per_s", r.tokens_per_s},
                  {"last_loss", r.last_loss}, {"title", loss_title(loss)}};
    trained.emplace_back(loss_title(loss), in.student);
    if (kd_dir.empty() && loss != "ce") {
      kd_dir = dir;
      kd_loss = loss;
      kd_model = in.student;
    }
  }

  // 5. The KD student as GGUF (its HF dir is OUT/train-<loss>/final).
  json exports = json::object();
  if (kd_model) {
    exports["hf"] = kd_dir + "/final";
    if (!o.gguf_type.empty()) {
      t = std::chrono::steady_clock::now();
      const std::string gguf = out + "/student-" + kd_loss + "-" + o.gguf_type + ".gguf";
      ExportInfo gi = info;
      gi.provenance = {{"teacher", teacher_json}, {"loss", kd_loss}, {"student", student.path}};
      export_gguf(*kd_model, *student.tokenizer, gi, gguf, o.gguf_type);
      exports["gguf"] = gguf;
      timings["export_s"] = seconds_since(t);
    }
  }

  // 6. Answers side by side: the teacher's sampled answer from the held-out store, each student's greedy one.
  t = std::chrono::steady_clock::now();
  json samples = json::array();
  {
    constexpr size_t kPrompts = 3;
    constexpr int64_t kMaxTokens = 64;
    std::vector<std::vector<int32_t>> prompts;
    std::vector<std::string> teacher_text;
    for (size_t i = 0; i < heldout_d.examples.size() && prompts.size() < kPrompts; ++i) {
      const XTokExample& e = heldout_d.examples[i];
      prompts.emplace_back(e.ids.begin(), e.ids.begin() + e.prompt_len);
      for (const TextSample& s : heldout_store.samples())
        if (s.sample_id == e.sample_id) teacher_text.push_back(s.completion);
    }
    std::vector<std::vector<std::string>> answers;
    for (auto [title, m] : trained) answers.push_back(greedy_replies(student, *m, prompts, kMaxTokens));
    for (size_t i = 0; i < prompts.size(); ++i) {
      json a = json::array({teacher_text[i]});
      for (const auto& col : answers) a.push_back(col[i]);
      samples.push_back({{"prompt", prompt_display(*student.tokenizer, prompts[i])}, {"answers", a}});
    }
  }
  timings["answers_s"] = seconds_since(t);

  // 7. Tasks: the teacher through its API, the KD student here.
  json task_cmp;
  if (!tasks.empty()) {
    t = std::chrono::steady_clock::now();
    CausalLMImpl& s = kd_model ? *kd_model : *trained.back().second;
    const std::string who = kd_model ? loss_title(kd_loss) : trained.back().first;
    std::fprintf(stderr, "[tasks] %zu tasks from %s: the teacher through its API, then %s\n", tasks.size(),
                 o.tasks.c_str(), who.c_str());
    const TaskRun tr = api_task_run(o, tasks);
    const TaskRun sr = run_tasks(student, s, tasks);
    task_cmp = compare_task_runs(tasks, tr, sr);
    task_cmp["file"] = o.tasks;
    task_cmp["student_name"] = who;
    for (auto& row : table) {
      if (row["model"] == "teacher (API)") row["task_accuracy"] = task_cmp["overall"]["teacher"];
      if (row["model"] == who) row["task_accuracy"] = task_cmp["overall"]["student"];
    }
    timings["tasks_s"] = seconds_since(t);
  }
  timings["total_s"] = seconds_since(t_start);

  json summary = {{"out", out},
                  {"teacher", teacher_json},
                  {"student", {{"spec", o.student}, {"path", student.path}, {"params", s_params}}},
                  {"data", {{"train", train_d.summary()}, {"heldout", heldout_d.summary()}, {"captures", captures}}},
                  {"table", table},
                  {"runs", runs},
                  {"exports", exports},
                  {"timings", timings},
                  {"threads", torch::get_num_threads()},
                  {"options", o.to_json()},
                  {"samples", samples}};
  if (!task_cmp.is_null()) summary["tasks"] = task_cmp;
  write_file_atomic(out + "/summary.json", summary.dump(2, ' ', false, json::error_handler_t::replace) + "\n");

  // The table, printed and as the page's summary.
  std::string text = "| model | params | held-out NLL per byte | bits per byte | top-1 agreement |" +
                     std::string(task_cmp.is_null() ? "" : " tasks right |") + "\n|---|---:|---:|---:|---:|" +
                     (task_cmp.is_null() ? "" : "---:|") + "\n";
  json page_rows = json::array();
  for (const auto& r : table) {
    const std::string params = r["params"].is_number() ? params_str(r["params"].get<int64_t>()) : "";
    text += "| " + r["model"].get<std::string>() + " | " + params + " | " + num_text(r["nll_per_byte"], "%.4f") + " | " +
            num_text(r["bits_per_byte"], "%.4f") + " | " + num_text(r["top1_agree"], "%.3f") + " |" +
            (task_cmp.is_null() ? "" : " " + num_text(r.value("task_accuracy", json()), "%.3f") + " |") + "\n";
    page_rows.push_back({{"model", r["model"]}, {"params", params}, {"NLL per byte", num_text(r["nll_per_byte"], "%.4f")},
                         {"bits per byte", num_text(r["bits_per_byte"], "%.4f")},
                         {"top-1 agreement", num_text(r["top1_agree"], "%.3f")}});
  }
  std::vector<std::pair<std::string, std::string>> sections;
  std::string side = "<table><tr><th>prompt</th><th>teacher (API, sampled)</th>";
  for (const auto& [title, m] : trained) side += "<th>" + html_escape(title) + " (greedy)</th>";
  side += "</tr>";
  for (const auto& s : samples) {
    side += "<tr><td>" + html_escape(s["prompt"].get<std::string>()) + "</td>";
    for (const auto& a : s["answers"]) side += "<td>" + html_escape(a.get<std::string>()) + "</td>";
    side += "</tr>";
  }
  sections.emplace_back("Answers to held-out prompts", side + "</table>");
  if (!task_cmp.is_null()) sections.emplace_back("Tasks", "<pre>" + html_escape(task_table_text(task_cmp)) + "</pre>");
  sections.emplace_back("Runs (each has its own report.html)", "<pre>" + html_escape(runs.dump(2)) + "</pre>");
  sections.emplace_back("Data", "<pre>" + html_escape(summary["data"].dump(2)) + "</pre>");
  sections.emplace_back("Settings", "<pre>" + html_escape(o.to_json().dump(2)) + "</pre>");
  write_html_report(out + "/report.html", "retort distill — from " + o.api.model + " behind " + o.api.url, page_rows, {},
                    sections);

  std::printf("\nheld-out: the teacher's answers to %lld prompts (%lld bytes), each model on its own tokens\n\n%s\n",
              static_cast<long long>(before.samples), static_cast<long long>(before.bytes), text.c_str());
  if (!task_cmp.is_null()) {
    std::printf("tasks (%s): teacher (API) vs %s\n%s", o.tasks.c_str(), task_cmp["student_name"].get<std::string>().c_str(),
                task_table_text(task_cmp).c_str());
  }
  std::printf("KD student: %s%s\nreport: %s/report.html   total %.0f s\n",
              kd_dir.empty() ? "(none: every loss was ce)" : (kd_dir + "/final (HF)").c_str(),
              exports.contains("gguf") ? (", " + exports["gguf"].get<std::string>() + " (GGUF)").c_str() : "", out.c_str(),
              timings["total_s"].get<double>());
  std::fflush(stdout);
  return summary;
}

}  // namespace retort
