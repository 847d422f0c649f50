// retort/distill/text_store.h — reading the text store: what `retort capture --teacher-url` writes when the
// teacher's tokenizer is unknown (remote_capture.h; format in docs/formats.md "Text store"), the data of
// distillation across tokenizers (xtok_data.h) and of SFT on a teacher's text.
//
// STORE/manifest.json lists the shards text-NNNNN.jsonl with their size and sha256; each line is one sample:
//   {"sample_id", "prompt_index", "sample_index", "messages" | "prompt", "completion", "finish_reason",
//    "tokens": [{"bytes": hex, "logprob", "top": [[hex, logprob(, id)], ...](, "id")}, ...], ...}
// "tokens" is there when the capture kept logprobs (--signal logprobs). A token's bytes are hex because a
// token may end inside a UTF-8 character.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "retort/text/chat_template.h"

namespace retort {

inline constexpr const char* kTextStoreFormat = "retort-text-store";
inline constexpr int64_t kTextStoreVersion = 1;

// Lowercase hex of raw bytes, and back (`where` names the field in the error for bad hex).
std::string bytes_to_hex(std::string_view b);
std::string hex_to_bytes(const std::string& h, const std::string& where);

// One token of the teacher's completion as the API returned it.
struct TextToken {
  std::string bytes;                              // raw bytes ("" for a listed stop token)
  float logprob = 0;                              // log p(token) at temperature 1
  std::vector<std::pair<std::string, float>> top; // the top_logprobs: (bytes, logprob), best first
};

struct TextSample {
  int64_t sample_id = 0, prompt_index = 0, sample_index = 0;
  bool chat = false;
  std::vector<ChatMessage> messages;  // chat prompts (the system message included, as sent)
  std::string prompt;                 // raw prompts
  std::string completion;             // the completion text (UTF-8)
  std::string finish_reason;          // "stop" | "length" | ...
  bool has_tokens = false;
  std::vector<TextToken> tokens;      // with has_tokens; a listed stop token (no bytes) is dropped
  std::string where;                  // "STORE/text-00000.jsonl:LINE", for messages
};

// open() checks the manifest (format, version), every shard's size and sha256 and every record's fields,
// and throws retort::Error naming the file, line and field: a damaged or foreign store never reaches
// training. Samples are kept in shard order.
class TextStore {
 public:
  static TextStore open(const std::string& dir);
  // Whether DIR holds a text store (its manifest says so), without checking it.
  static bool is_text_store(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const nlohmann::json& manifest() const { return manifest_; }
  int64_t k() const { return k_; }                 // top_logprobs per token; 0 for a text-only capture
  bool has_logprobs() const { return k_ > 0; }
  const std::vector<TextSample>& samples() const { return samples_; }
  std::string identity() const;                    // FNV-1a over the shards' sha256 (the trainer's resume check)

 private:
  std::string dir_;
  nlohmann::json manifest_;
  int64_t k_ = 0;
  std::vector<TextSample> samples_;
};

}  // namespace retort
