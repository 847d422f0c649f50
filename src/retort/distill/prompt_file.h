// retort/distill/prompt_file.h — the prompts file of `retort capture` (JSONL), read the same way by the
// local capture and by the capture from an API.
//
// One JSON object per line: "prompt" (text) or "messages" ([{role, content}, ...]), optional "system"
// (a default system message for this line), and in score mode "completion" (text). A "prompt" line is
// chat-formatted when CaptureOptions::chat; a "messages" line always is.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "retort/distill/capture.h"
#include "retort/text/chat_template.h"

namespace retort {

struct CheckpointInfo;

struct PromptLine {
  std::vector<ChatMessage> messages;  // chat formatting (the system message first, when one applies)
  std::string raw;                    // raw prompt (no chat)
  bool chat = false;
  std::string completion;             // score mode
  int64_t line = 0;                   // 1-based line number in the file
};

// Every line, checked (retort::Error naming the file, line and field); at least one.
std::vector<PromptLine> read_prompt_lines(const std::string& path, const CaptureOptions& o);

// The prompt's token ids as the model's tokenizer and chat template encode it (raw lines: BOS + text, special
// text parsed; chat: message text stays text, as `retort serve` encodes a chat). `path` names the file in errors.
std::vector<int32_t> encode_prompt(const CheckpointInfo& m, const PromptLine& p, const std::string& path);

// The token a model generates to end its answer to p: the chat template's end-of-turn for a chat line, the EOS
// for a raw one. retort::Error naming m.path when the model has none (or it is not one token).
int32_t answer_stop_token(const CheckpointInfo& m, const PromptLine& p);

}  // namespace retort
