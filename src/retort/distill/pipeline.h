// retort/distill/pipeline.h — the main job: teacher → captured signal → student → KD and an
// SFT-only baseline → evaluation → export → one table. `retort distill` with no --data (or
// with --config configs/quickstart.json) runs this.
//
//   OUT/data/train, OUT/data/heldout   signal stores (capture.h; resumed, reused when complete)
//   OUT/train-<loss>/                  one trainer run per loss (trainer.h; resumed when re-run)
//   OUT/student-<loss>-<type>.gguf     the KD student (first non-ce loss) as GGUF
//   OUT/summary.json, OUT/report.html  the table, task accuracy, sizes, timings, curves, answers
//
// With a teacher behind an API (`retort distill --teacher-url`, PipelineOptions::api), the same job from
// what the API returns (api_pipeline.cpp): text stores with the top-k logprobs (remote_capture.h; resumed, and
// reused when complete, with no request made), a student that is a model with its own tokenizer (xtok_data.h),
// trained once per loss (ce | uld | gold) from the same start, evaluated per byte of held-out teacher text,
// the KD student exported, one table.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "retort/distill/trainer.h"

namespace retort {

struct PipelineOptions {
  std::string teacher = "smollm2-135m-instruct";
  // A teacher behind an OpenAI-compatible API instead of `teacher` (config key "api"); url "" = local.
  struct Api {
    std::string url, model, api_key_env;  // base URL (…/v1), the "model" sent, env var holding the key
    int concurrency = 4;
    double rpm = 0, timeout_s = 300;
    int max_retries = 8;
  } api;
  std::string train_prompts = "data/prompts/train.jsonl";
  std::string heldout_prompts = "data/prompts/heldout.jsonl";
  std::string out;  // "" = $RETORT_HOME/runs/quickstart
  // capture
  int64_t max_tokens = 128, samples_per_prompt = 1, capture_batch = 32;
  int64_t train_limit = 0, heldout_limit = 0;  // first N prompts (0 = all)
  int k = 20;
  double capture_temperature = 1.0;
  uint64_t capture_seed = 0;
  // student and training
  std::string student = "layers=8,hidden=256,heads=4,kv_heads=2,ffn=768,init=prune";
  std::vector<std::string> losses = {"ce", "fkl"};  // "ce" = the SFT-only baseline
  TrainerConfig train;
  std::string gguf_type = "q8_0";  // "" = no GGUF
  // Answer-checkable tasks (distill/tasks.h), run on the teacher and the KD student after training;
  // "" = none. Config key "tasks", e.g. "data/tasks/tasks.jsonl".
  std::string tasks;
  int threads = 0;
  std::string device = "cpu";
  bool progress = true;

  // The JSON config file (see configs/quickstart.json). Relative prompt paths are resolved
  // against `base_dir` when they do not exist relative to the working directory.
  static PipelineOptions from_json(const nlohmann::json& j, const std::string& where, const std::string& base_dir);
  nlohmann::json to_json() const;
};

// The learning rate of the job from an API when none is set: its student is a pretrained model (measured on
// Gemma 3 270M learning from SmolLM2: 1e-3, the local job's rate for a student cut from the teacher, drives the
// held-out NLL per byte from 0.91 to 3.3 in 2 steps).
inline constexpr double kApiStudentLr = 1e-5;

// Runs everything, prints the final table on stdout, returns OUT/summary.json's content.
nlohmann::json run_pipeline(const PipelineOptions& opts);
// The job from a teacher behind an API (run_pipeline calls it when opts.api.url is set).
nlohmann::json run_api_pipeline(const PipelineOptions& opts);

// The markdown table of a summary ("model | params | held-out NLL | ppl | top-1 agreement | KL").
std::string summary_table(const nlohmann::json& summary);

}  // namespace retort
