// retort/text/chat_template.h — the chat formats retort renders, recognised from their Jinja source.
//
// retort does not run Jinja. It recognises the structure of a template and renders that
// structure natively:
//   chatml : <|im_start|>{role}\n{content}<|im_end|>\n per message, optionally preceded by a
//            default system message when the conversation does not start with one (SmolLM2,
//            Qwen2/2.5); generation prompt <|im_start|>assistant\n.
//   llama3 : {bos}<|start_header_id|>{role}<|end_header_id|>\n\n{content|trim}<|eot_id|> ...;
//            generation prompt <|start_header_id|>assistant<|end_header_id|>\n\n.
//   gemma  : {bos}<start_of_turn>{role}\n{content|trim}<end_of_turn>\n per message, role "assistant"
//            written "model"; generation prompt <start_of_turn>model\n. Gemma 3's template prepends a
//            system message (untrimmed, + "\n\n") to the first turn's content and requires the roles to
//            alternate user/assistant from there; Gemma 1/2's refuses a system message. A model without a
//            template whose vocabulary has <start_of_turn> and <end_of_turn> (the Gemma 3 base GGUFs)
//            gets the Gemma 3 format.
// Anything else is rejected with an error rather than rendered wrongly.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace retort {

class Tokenizer;

struct ChatMessage {
  std::string role;
  std::string content;
};

// The Jinja source an export writes for a model: `source` when it has one; for a Gemma vocabulary
// without one (the Gemma 3 base GGUFs, which retort renders in Gemma 3's format), Gemma 3's own
// template (google/gemma-3-*-it tokenizer_config.json) so other tools render the same turns; else "".
std::string export_chat_template(const std::string& source, const Tokenizer& tok);

class ChatTemplate {
 public:
  static ChatTemplate from_jinja(const std::string& jinja_source, const Tokenizer& tok);
  // Whether from_jinja gives a format: the source is not empty, or the vocabulary is Gemma's (see above).
  static bool available(const std::string& jinja_source, const Tokenizer& tok);

  std::string name() const { return name_; }  // "chatml", "llama3", "gemma"
  // The default system prompt a ChatML template inserts, if any.
  const std::optional<std::string>& default_system() const { return default_system_; }
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt = true) const;
  // The same text as parts: the template's markup (trusted) and the messages' content (untrusted), for
  // Tokenizer::encode_parts, so special-token text inside a message stays text (no injected turns).
  struct Part {
    std::string text;
    bool trusted = false;
  };
  std::vector<Part> render_parts(const std::vector<ChatMessage>& messages, bool add_generation_prompt = true) const;
  // Token ids of the rendered conversation, special-token text in the messages kept as text.
  std::vector<int32_t> encode(const std::vector<ChatMessage>& messages, const Tokenizer& tok,
                              bool add_generation_prompt = true) const;
  // The special token that closes an assistant turn — what a model generates to stop:
  // "<|im_end|>" (chatml), "<|eot_id|>" (llama3) or "<end_of_turn>" (gemma). Teacher-forced data
  // appends it to a completion.
  std::string end_of_turn() const {
    return name_ == "llama3" ? "<|eot_id|>" : name_ == "gemma" ? "<end_of_turn>" : "<|im_end|>";
  }

 private:
  std::string name_;
  std::optional<std::string> default_system_;
  bool default_system_in_loop_ = false;  // inserted only when there is at least one message (SmolLM2)
  bool trim_content_ = false;            // Jinja `| trim` on message content (Python str.strip)
  bool reject_tool_role_ = false;        // template renders role "tool" its own way
  std::string bos_;                      // prepended by llama3 and gemma templates that use bos_token
  // gemma: a leading system message goes before the first turn's content, followed by this
  // (Gemma 3: "\n\n"); nullopt: a leading system message is an error (Gemma 1/2).
  std::optional<std::string> system_joiner_;
  bool alternate_roles_ = false;  // gemma 3: user, assistant, user, ... (after the system message)
};

}  // namespace retort
