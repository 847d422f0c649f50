// retort/distill/prompt_file.cpp — see prompt_file.h.
#include "retort/distill/prompt_file.h"

#include <algorithm>

#include "retort/io/jsonl.h"
#include "retort/model/runtime_model.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"

namespace retort {

using nlohmann::json;

std::vector<PromptLine> read_prompt_lines(const std::string& path, const CaptureOptions& o) {
  const bool score = o.mode == "score";
  std::vector<PromptLine> out;
  for_each_jsonl_object(path, [&](const json& j, int64_t lineno) {
    PromptLine x;
    x.line = lineno;
    std::string system = o.system;
    if (j.contains("system")) {
      check(j["system"].is_string(), path, ":", lineno, ": field \"system\" must be a string");
      system = j["system"].get<std::string>();
    }
    if (j.contains("messages")) {
      const json& ms = j["messages"];
      check(ms.is_array() && !ms.empty(), path, ":", lineno, ": field \"messages\" must be a non-empty array");
      bool has_system = false;
      for (const auto& msg : ms) {
        check(msg.is_object() && msg.contains("role") && msg["role"].is_string() && msg.contains("content") &&
                  msg["content"].is_string(),
              path, ":", lineno, ": field \"messages\": each message needs string fields \"role\" and \"content\"");
        has_system = has_system || msg["role"] == "system";
      }
      if (!system.empty() && !has_system) x.messages.push_back({"system", system});
      for (const auto& msg : ms) x.messages.push_back({msg["role"].get<std::string>(), msg["content"].get<std::string>()});
      x.chat = true;
    } else if (j.contains("prompt")) {
      check(j["prompt"].is_string(), path, ":", lineno, ": field \"prompt\" must be a string");
      x.raw = j["prompt"].get<std::string>();
      x.chat = o.chat;
      if (o.chat) {
        if (!system.empty()) x.messages.push_back({"system", system});
        x.messages.push_back({"user", x.raw});
      }
    } else {
      fail(path, ":", lineno, ": needs a field \"prompt\" (string) or \"messages\" (array of {role, content})");
    }
    if (score) {
      check(j.contains("completion"), path, ":", lineno, ": score mode needs a field \"completion\" (string)");
      check(j["completion"].is_string(), path, ":", lineno, ": field \"completion\" must be a string");
      x.completion = j["completion"].get<std::string>();
      check(!x.completion.empty(), path, ":", lineno, ": field \"completion\" is empty (nothing to score)");
    }
    out.push_back(std::move(x));
  });
  check(!out.empty(), path, ": no prompts in the file");
  return out;
}

std::vector<int32_t> encode_prompt(const CheckpointInfo& m, const PromptLine& p, const std::string& path) {
  if (!p.chat) return m.tokenizer->encode(p.raw, /*parse_special=*/true, /*add_bos=*/true);
  check(ChatTemplate::available(m.chat_template, *m.tokenizer), path, ":", p.line, ": ", m.path,
        " has no chat template; use --no-chat with \"prompt\" lines (\"messages\" need a template)");
  ChatTemplate tpl = ChatTemplate::from_jinja(m.chat_template, *m.tokenizer);
  return tpl.encode(p.messages, *m.tokenizer);  // as `retort serve` encodes a chat: message text stays text
}

int32_t answer_stop_token(const CheckpointInfo& m, const PromptLine& p) {
  if (p.chat) {
    const std::string eot = ChatTemplate::from_jinja(m.chat_template, *m.tokenizer).end_of_turn();
    const std::vector<int32_t> e = m.tokenizer->encode(eot, /*parse_special=*/true, /*add_bos=*/false);
    check(e.size() == 1, m.path, ": the chat template's end-of-turn ", eot, " is not one token");
    return e[0];
  }
  const auto eos = m.tokenizer->eos_id();
  check(eos.has_value() || !m.eos_ids.empty(), m.path, ": the tokenizer has no EOS token");
  return eos ? *eos : m.eos_ids.front();
}

}  // namespace retort
