// retort/text/pretokenize.h — split text into pre-tokens (the words BPE runs on).
//
// A pre-tokenizer is a list of regex "Isolated" splits applied in turn (HF tokenizers'
// Sequence of Digits / Split / ByteLevel(use_regex=true)): every match and every gap
// between matches becomes a piece, and the next regex splits each piece again.
// Regexes run on PCRE2 (UTF + UCP, JIT when available) with \s widened to Unicode
// White_Space (adds U+0085) so it agrees with the Oniguruma engine HF uses.
//
// Invalid UTF-8 cuts the text: each maximal run of bytes that do not form a well-formed
// sequence is one pre-token of its own, and the valid stretches between are split as usual.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace retort {

// Patterns of the pre-tokenizers retort knows (HF / llama.cpp spellings).
extern const char* const kGpt2Pattern;    // GPT-2 ByteLevel(use_regex=true)
extern const char* const kLlama3Pattern;  // Llama-3 Split
extern const char* const kQwen2Pattern;   // Qwen2 Split (single digits)

class PreTokenizer {
 public:
  PreTokenizer();
  // name: "gpt2", "smollm" (digits split first, then GPT-2), "llama3", "qwen2", or "custom".
  // patterns: applied in order. Throws retort::Error (with `what` in the message) if one does not compile.
  PreTokenizer(std::string name, const std::vector<std::string>& patterns, const std::string& what);
  static PreTokenizer named(const std::string& name);  // the four known names; throws otherwise

  const std::string& name() const { return name_; }
  const std::vector<std::string>& patterns() const { return patterns_; }

  // Appends the pieces of `text` (views into it) to `out`.
  void split(std::string_view text, std::vector<std::string_view>& out) const;

 private:
  struct Regex;
  std::string name_;
  std::vector<std::string> patterns_;
  std::vector<std::shared_ptr<const Regex>> regexes_;
};

}  // namespace retort
