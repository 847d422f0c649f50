// retort/distill/signal_store.h — the teacher-signal store: what `retort capture` writes and
// `retort distill` / `retort eval` read.
//
// A store is a directory:
//   manifest.json            written atomically after every shard (see StoreManifest)
//   shard-00000.safetensors  one file per flush; readable with Python's `safetensors`
//   ...
// Each shard holds S samples and C = Σ completion lengths scored positions:
//   tokens          I32 [T]      prompt + completion ids of every sample, concatenated
//   sample_offsets  I64 [S + 1]  sample s is tokens[sample_offsets[s] .. sample_offsets[s+1])
//   prompt_lengths  I32 [S]      leading prompt tokens of each sample (no loss on them)
//   sample_ids      I64 [S]      prompt_index * samples_per_prompt + sample_index (resume key)
//   token_logprob   F32 [C]      teacher log p(token) at temperature 1, before any processing
//   topk_ids        I32 [C, k]   the teacher's k most likely next tokens (raw), by logprob desc
//   topk_logprobs   F32 [C, k]   their log-probs (raw, temperature 1)
//   tail_mass       F32 [C]      1 - Σ exp(topk_logprobs): the probability outside the top k
// Scored position c of sample s is the prediction of tokens[off + prompt_len + j] from the
// tokens before it (j = 0 .. completion_len - 1, c runs over samples in order).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace retort {

// manifest.json — everything needed to know where a signal came from.
struct StoreManifest {
  std::string mode = "generate";  // "generate" (teacher sampled) | "score" (teacher-forced pairs)
  nlohmann::json teacher;         // {"spec","path","format","sha256","hparams"}
  std::string tokenizer_hash;     // Tokenizer::hash() of the teacher's tokenizer
  int64_t n_vocab = 0;
  int64_t k = 20;                 // top-k kept per position
  nlohmann::json generation;      // {"temperature","top_k","top_p","min_p","max_tokens","samples_per_prompt","seed","chat","system"}
  nlohmann::json watermark;       // null, or the scheme's settings (never the key; its commitment)
  nlohmann::json prompts;         // {"path","sha256","count"}
  // null for a local capture; a capture from an API: {"kind":"api","endpoint","model","signal",
  // "teacher_tokenizer","stop_signal","usage":{...},"servers":[{"model","system_fingerprint","samples"}]}
  // (remote_capture.h). Each shard of such a store also carries, in its safetensors metadata "provenance",
  // a JSON array with one {"sample_id","model","system_fingerprint","response_id","created","time"} per sample.
  nlohmann::json source;
  struct Shard {
    std::string file;             // relative to the store dir
    int64_t samples = 0, tokens = 0, scored = 0;
    int64_t bytes = 0;            // file size (a shorter file is reported as truncated)
    std::string sha256;           // of the shard file
  };
  std::vector<Shard> shards;
  bool complete = false;          // capture ran to the end

  nlohmann::json to_json() const;
  // Throws retort::Error naming `path` and the bad field.
  static StoreManifest from_json(const nlohmann::json& j, const std::string& path);
};

// One sample, pointing into a memory-mapped shard (valid while the SignalStore lives).
struct SignalSample {
  int64_t id = 0;                       // sample_ids entry
  const int32_t* tokens = nullptr;      // [n_tokens]
  int64_t n_tokens = 0, prompt_len = 0; // completion_len = n_tokens - prompt_len
  const float* token_logprob = nullptr; // [completion_len]
  const int32_t* topk_ids = nullptr;    // [completion_len, k]
  const float* topk_logprobs = nullptr; // [completion_len, k]
  const float* tail_mass = nullptr;     // [completion_len]
  int64_t completion_len() const { return n_tokens - prompt_len; }
};

// Read side. open() validates the manifest and every shard (dtypes, shapes agree, offsets
// monotone, ids < n_vocab, k as in the manifest, sha256 matches) and throws retort::Error
// naming the file and the problem — a corrupt or foreign store never reaches training.
class SignalStore {
 public:
  static SignalStore open(const std::string& dir);
  const StoreManifest& manifest() const;
  const std::string& dir() const;
  int64_t n_samples() const;
  int64_t n_scored() const;  // Σ completion lengths
  SignalSample sample(int64_t i) const;  // 0 <= i < n_samples(), in shard order

  SignalStore(SignalStore&&) noexcept;
  SignalStore& operator=(SignalStore&&) noexcept;
  ~SignalStore();

 private:
  SignalStore();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Write side: append samples, flush() writes one shard atomically and then the manifest
// atomically, so a crash at any point leaves a store whose manifest lists only whole shards.
// Opening an existing dir resumes it: the manifest must match (same teacher sha256,
// tokenizer, k, generation settings and prompts) or retort::Error explains the mismatch;
// done_ids() then tells the capture what to skip. Shard files not in the manifest (a crash
// between shard and manifest) are overwritten.
class SignalStoreWriter {
 public:
  // `manifest` carries everything except shards/complete. A new dir is created.
  SignalStoreWriter(const std::string& dir, StoreManifest manifest);
  const std::vector<int64_t>& done_ids() const;  // sample ids already stored, sorted

  // prompt_len tokens of prompt, then the completion; per completion token: its logprob,
  // k top ids/logprobs, tail mass. Shapes are checked (retort::Error on disagreement).
  void add(int64_t sample_id, const std::vector<int32_t>& tokens, int64_t prompt_len,
           const std::vector<float>& token_logprob, const std::vector<int32_t>& topk_ids,
           const std::vector<float>& topk_logprobs, const std::vector<float>& tail_mass,
           const nlohmann::json& provenance = nullptr);  // per-sample provenance (shard metadata), or null
  int64_t pending_samples() const;
  void flush();                  // no-op when nothing is pending
  void finish();                 // flush + mark complete
  // Replaces the manifest's "source" (usage counters of an API capture); written with the next flush/finish,
  // or now with write_manifest_now().
  void set_source(nlohmann::json source);
  void write_manifest_now();
  const StoreManifest& manifest() const;

 private:
  std::string dir_;
  StoreManifest manifest_;
  std::vector<int64_t> done_;
  struct Pending;
  std::shared_ptr<Pending> pending_;
};

}  // namespace retort
