// retort/text/tokenizer.h — BPE tokenizers, no torch: byte-level BPE (GPT-2 family: SmolLM2, Llama-3,
// Qwen2) and SentencePiece BPE with byte fallback (Gemma 3: GGUF model "llama", or Hugging Face's
// tokenizer.json form of it — BPE with byte_fallback, normalizer Replace " " -> "▁").
//
// encode(text), byte-level BPE ("gpt2"):
//   1. added tokens (special or not) are cut out first, leftmost-longest; with
//      parse_special=false the special ones are left in as plain text (HF encode_special_tokens);
//   2. each stretch between them is split into pre-tokens (see pretokenize.h);
//   3. each pre-token's bytes are mapped to the GPT-2 byte->unicode alphabet and BPE-merged:
//      repeatedly merge the adjacent pair with the lowest merge rank (leftmost on ties).
// Invalid UTF-8 is not rejected: each maximal run of invalid bytes is a pre-token of its own
// and encodes as its bytes, so decode(encode(b)) == b for any bytes b -- except bytes whose
// one-byte token is missing from the vocabulary (SmolLM2 lacks 21, e.g. 0xC0, 0xFF, 0x04):
// those are dropped, exactly as HF tokenizers drops them (no unk token in these vocabularies);
// encode() counts them in *n_dropped.
// The word cache makes encode() fast (~6-10 MB/s on one core); it is guarded by a mutex, so
// one Tokenizer may be shared across threads.
//
// encode(text), SentencePiece BPE ("spm"; SentencePiece itself, llama.cpp llm_tokenizer_spm):
//   1. control tokens (GGUF token_type 3, and 2 = unknown) are cut out of the raw text as above;
//   2. each stretch has every space replaced by U+2581 "▁" (no prefix space: add_space_prefix false);
//   3. user-defined tokens (type 4: Gemma's runs of newlines, tabs and spaces, HTML tags) are cut out of
//      that, leftmost-longest, their own spaces read as "▁" too -- SentencePiece matches them in the
//      normalized text, so 40 spaces are 31 + 9 spaces, as SentencePiece and llama.cpp give (transformers'
//      GGUF conversion merges them as BPE pieces instead and gives 16 + 24);
//   4. the rest is BPE-merged from its UTF-8 characters: repeatedly merge the adjacent pair whose
//      concatenation is a vocabulary piece of the highest score (leftmost on ties). No merge can cross
//      a "▁" unless some piece has the byte before it followed by an inner "▁" (Gemma: only ">▁</"),
//      so the text is cut into words there and each word goes through the word cache (~3-12 MB/s);
//   5. a final symbol that is no piece falls back to one <0xXX> token per byte (the unk token if one of
//      those is missing). Each byte of invalid UTF-8 is a symbol of its own, so it becomes its <0xXX>.
// From a tokenizer.json the scores are not stored: a piece's score is minus the rank of the first merge that
// makes it, which orders the pieces as the scores the merges were derived from did (see merges()).
// decode: a piece gives its text with "▁" as a space, a <0xXX> token its byte. decode(encode(b)) == b
// for any bytes b, except that a literal "▁" in the input comes back as a space (as with SentencePiece,
// HF and llama.cpp: the vocabulary cannot tell the two apart).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace retort {

class GgufFile;

class Tokenizer {
 public:
  // From GGUF metadata (tokenizer.ggml.*). Model "gpt2" (byte-level BPE) with pre names gpt2/gpt-2,
  // smollm/starcoder/refact/codeshell (digits split first), llama-bpe/llama3, qwen2/deepseek-r1-qwen;
  // or model "llama" (SentencePiece BPE with scores and byte tokens) without a prefix space (Gemma).
  static Tokenizer from_gguf(const GgufFile& gguf);
  // From a Hugging Face tokenizer.json (+ tokenizer_config.json for bos/eos/pad/add_bos_token/chat_template):
  // byte-level BPE, or SentencePiece BPE shaped like Gemma's (model.byte_fallback, normalizer Replace " " ->
  // "▁", pre_tokenizer null or a Split on " "; added tokens as written, so a user-defined piece marked
  // normalized is matched in the "▁" text as SentencePiece does).
  static Tokenizer from_hf_json(const std::string& tokenizer_json_path, const std::string& tokenizer_config_path = "");

  // n_dropped (optional): += the number of input bytes that got no token (see above; 0 for Gemma).
  std::vector<int32_t> encode(std::string_view text, bool parse_special = true, bool add_bos = false,
                              size_t* n_dropped = nullptr) const;
  // Text made of trusted parts (a chat template's own markup: special-token text there becomes the special
  // token) and untrusted ones (what a user wrote: special-token text there is plain text, so a message
  // cannot inject control tokens). Plain text runs across part boundaries are encoded as one, so the ids
  // equal encode(concatenation) whenever the untrusted parts hold no special-token text.
  struct TextPart {
    std::string_view text;
    bool trusted = false;
  };
  std::vector<int32_t> encode_parts(const std::vector<TextPart>& parts, bool add_bos = false) const;
  // Concatenated token bytes (may be invalid UTF-8 when ids end mid-character). Throws on an id out of range.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;
  std::string token_bytes(int32_t id) const;  // raw bytes of a token; added tokens: their text
  std::string token_text(int32_t id) const;   // vocab string as stored ("Ġhello", "▁hello", "<0x0A>")
  std::optional<int32_t> token_id(std::string_view vocab_string) const;
  int32_t n_vocab() const;
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  std::optional<int32_t> pad_id() const;
  std::optional<int32_t> unk_id() const;  // SentencePiece: for a character whose byte tokens are missing
  bool add_bos_token() const;       // whether encode(add_bos=true) prepends BOS
  std::vector<int32_t> eog_ids() const;  // eos plus <|im_end|>, <|eot_id|>, <end_of_turn>, ... when special
  bool is_special(int32_t id) const;     // special added token (GGUF: control)
  bool is_added(int32_t id) const;       // any added token (special or not)
  std::string model_type() const;          // "gpt2" (byte-level BPE) or "spm" (SentencePiece BPE)
  std::string pre_tokenizer_name() const;  // "gpt2", "smollm", "llama3", "qwen2", "custom"; "spm" for SentencePiece
  const std::string& chat_template() const;  // "" when the source had none
  // FNV-1a 64 (hex, 16 digits) over: pre-tokenizer name, every token text in id order, every merge
  // "a b" in rank order (SentencePiece: the merges(), derived from the scores), and (id, special?) of every
  // added token; SentencePiece adds the byte tokens and unk. Equal for the GGUF and the tokenizer.json of
  // the same tokenizer (byte-level, and SentencePiece when the tokenizer.json holds the derived merges, as
  // retort's export writes them).
  std::string hash() const;

  // For writers (`retort export`): everything needed to write the tokenizer back out.
  struct AddedTokenInfo {
    int32_t id;
    std::string content;
    bool special, lstrip, rstrip, normalized;
  };
  // Rank order, (left, right) vocab strings. SentencePiece from GGUF: derived from the scores as Hugging
  // Face's SentencePieceExtractor does (every split of a normal piece into two normal pieces, the higher
  // score first, then the longer left part), once, on first use (~0.6 s for Gemma's 262k pieces).
  std::vector<std::pair<std::string, std::string>> merges() const;
  std::vector<AddedTokenInfo> added_tokens() const;                  // ascending id
  std::vector<std::string> pre_tokenizer_patterns() const;           // the regex splits, in order
  bool normalizes_nfc() const;                                       // NFC before pre-tokenization
  bool ignores_merges() const;                                       // a pre-token found whole in the vocab is one token
  bool is_hole(int32_t id) const;                                    // an id no token uses (tokenizer.json gaps)
  // SentencePiece only: whether a token is a byte-fallback token <0xXX>, and its merge score (the GGUF's;
  // from a tokenizer.json minus the rank of the first merge that makes it, -inf when none does).
  bool is_byte(int32_t id) const;
  float score(int32_t id) const;

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;  // immutable after construction except the thread-safe word cache
};

// Streaming decode: push ids one at a time and get back only complete UTF-8. A partial
// multi-byte sequence is held until it completes; bytes that can never complete become U+FFFD
// (one per maximal ill-formed subpart, as Python/Rust lossy decoding does). flush() returns what is held.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, bool skip_special = false);
  std::string push(int32_t id);
  std::string flush();

 private:
  const Tokenizer* tok_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace retort
