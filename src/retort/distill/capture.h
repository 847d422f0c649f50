// retort/distill/capture.h — record a teacher's signal into a SignalStore.
//
// generate mode: every prompt of a JSONL file (fields "prompt" or "messages", optional
//   "system") is formatted (chat template or raw), then samples_per_prompt completions are
//   generated in batches (decode/generate.h, continuous batching) with top-k raw logprobs
//   kept for every generated token. Sample (p, s) uses seed hash(seed, p, s), so a resumed
//   capture regenerates exactly the samples a straight run would have produced.
// score mode (teacher-forced): every line holds a prompt and a "completion" (text); the
//   teacher runs over prompt+completion once and its top-k at each completion position is
//   stored — the black-box-free way to distill on existing data. A chat-formatted line's
//   completion ends with the template's end-of-turn token (ChatTemplate::end_of_turn), scored
//   like the rest, as a generated completion ends with its stop token.
// Resume: an existing store dir whose manifest matches continues; done samples are skipped.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "retort/decode/sampling.h"

namespace retort {

struct LoadedModel;
class LogitsProcessor;

struct CaptureOptions {
  std::string prompts_path;          // JSONL
  std::string out_dir;               // the store
  std::string mode = "generate";     // "generate" | "score"
  int64_t samples_per_prompt = 1;
  SamplingParams sampling;           // temperature (default 1), top_k/top_p/min_p, seed
  int64_t max_tokens = 256;
  int k = 20;                        // top-k logprobs kept per position (1..256)
  bool chat = true;                  // format prompts with the model's chat template
  std::string system;                // default system message ("" = none / template default)
  int64_t batch = 32;                // sequences decoded together
  int64_t shard_samples = 256;       // samples per shard file
  int64_t limit = 0;                 // use only the first `limit` prompts (0 = all)
  bool progress = true;              // progress bar on stderr
  // Watermark while capturing (e.g. to study radioactivity): a factory making one processor
  // per sequence, and its settings for the manifest (never the key). Both empty = none.
  std::function<std::shared_ptr<LogitsProcessor>()> make_processor;
  nlohmann::json watermark;
};

struct CaptureSummary {
  int64_t prompts = 0, samples_total = 0, samples_skipped = 0, samples_written = 0;
  int64_t tokens_generated = 0;  // completion tokens written in this run
  double seconds = 0;
};

// The seed sample (prompt_index, sample_index) is generated with: rng_u64(rng_u64(seed, p), s).
uint64_t capture_sample_seed(uint64_t seed, int64_t prompt_index, int64_t sample_index);

// Reads and checks the prompts file as capture() will (fields per mode) without a model, so
// the CLI can refuse a bad line before loading the teacher. Returns the number of prompts.
int64_t check_prompts_file(const CaptureOptions& opts);

// teacher_spec is what the user passed (`--teacher`), recorded in the manifest.
// Throws retort::Error for a bad prompts file (naming line and field), a store that does not
// match (another teacher/tokenizer/settings), or bad options.
CaptureSummary capture(LoadedModel& teacher, const std::string& teacher_spec, const CaptureOptions& opts);

}  // namespace retort
