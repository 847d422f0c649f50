// retort/distill/xtok_align.h — aligning two tokenizations of the same bytes, for distillation
// across tokenizers (the cross-tokenizer losses are in losses.h: xtok_loss_spans).
//
// Teacher and student tokenize the same completion differently. Both tokenizations are given as
// the raw bytes of each token (Tokenizer::token_bytes; a token may end inside a UTF-8
// character). Let T_i be the cumulative byte offset after teacher token i and S_j after
// student token j. A span is a pair of token ranges [t0, t1) and [s0, s1) covering exactly the
// same bytes, closed at every offset present in both {T_i} and {S_j}: the finest segmentation
// whose boundaries both tokenizers share. GOLD (TRL) builds the same groups from byte offsets
// (ULDLoss._align_by_byte_offsets).
//
//   teacher  | Hug | ging | ␣Face |        student  | Hugging | ␣F | ace |
//   spans    [Hug ging ↔ Hugging]  [␣Face ↔ ␣F ace]
//
// Zero-width tokens (a BOS or EOS whose text is empty) join the span that follows them, or the
// last span when none follows; where both sides have one at the same offset they form a span of
// zero bytes of their own (e.g. both completions end with an empty EOS).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace retort {

struct TokenSpan {
  int64_t t0 = 0, t1 = 0;  // teacher tokens [t0, t1), t1 > t0
  int64_t s0 = 0, s1 = 0;  // student tokens [s0, s1), s1 > s0
  bool operator==(const TokenSpan&) const = default;
};

// Spans in order; together they cover every token of both sides. Either side empty (no tokens)
// gives no spans. Throws retort::Error when the two concatenations differ, naming the first
// differing byte offset and the bytes around it.
std::vector<TokenSpan> align_token_spans(const std::vector<std::string>& teacher_tokens,
                                         const std::vector<std::string>& student_tokens);

// For every token id of `from` (its bytes, by id), the id in `to` whose bytes are identical, or
// −1. Where several ids of `to` share those bytes (a SentencePiece byte-fallback <0x41> and the
// piece "A"), the lowest id. Matching is on bytes, so "Ġhello" (GPT-2) and "▁hello"
// (SentencePiece) match; TRL's hybrid ULD matches vocabulary strings, where they do not. A token
// with no bytes (a special token without text) matches nothing.
// The fraction of entries ≥ 0 is TRL's adaptive hybrid weight (matched tokens / teacher vocab).
std::vector<int64_t> map_vocab_by_bytes(const std::vector<std::string>& from, const std::vector<std::string>& to);

}  // namespace retort
