// retort/distill/xtok_align.cpp — span alignment of two tokenizations; see xtok_align.h.
#include "retort/distill/xtok_align.h"

#include <algorithm>
#include <cstdio>
#include <unordered_map>

#include "retort/util/error.h"

namespace retort {

namespace {

// Up to `n` bytes of s from `at`, printable ASCII as is, everything else as \xNN, in quotes.
std::string excerpt(const std::string& s, size_t at, size_t n) {
  std::string out = "\"";
  for (size_t i = at; i < s.size() && i < at + n; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
      out += char(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  if (at + n < s.size()) out += "…";
  return out + "\"";
}

std::string concat(const std::vector<std::string>& tokens) {
  std::string s;
  for (const auto& t : tokens) s += t;
  return s;
}

}  // namespace

std::vector<TokenSpan> align_token_spans(const std::vector<std::string>& teacher_tokens,
                                         const std::vector<std::string>& student_tokens) {
  const std::string tb = concat(teacher_tokens), sb = concat(student_tokens);
  if (tb != sb) {
    const size_t n = std::min(tb.size(), sb.size());
    size_t at = 0;
    while (at < n && tb[at] == sb[at]) ++at;
    const size_t from = at >= 8 ? at - 8 : 0;
    fail("cross-tokenizer alignment: the teacher's tokens (", teacher_tokens.size(), " tokens, ", tb.size(),
         " bytes) and the student's (", student_tokens.size(), " tokens, ", sb.size(),
         " bytes) spell different bytes; first difference at byte ", at, ": teacher ", excerpt(tb, from, 24),
         ", student ", excerpt(sb, from, 24), " (from byte ", from,
         "). Tokenize the teacher's completion bytes with the student's tokenizer, with no normalization, "
         "added prefix space or special tokens");
  }
  std::vector<TokenSpan> spans;
  const int64_t nt = int64_t(teacher_tokens.size()), ns = int64_t(student_tokens.size());
  if (nt == 0 || ns == 0) return spans;

  // Walk both sides by end offset, advancing the side whose current token ends first; equal ends
  // are a shared boundary and close a span. The loop cannot end without a span: the side that
  // runs out last advanced on an equal end (its total equals the other side's).
  int64_t i = 0, j = 0, t0 = 0, s0 = 0;
  size_t te = teacher_tokens[0].size(), se = student_tokens[0].size();  // end offsets of tokens i, j
  while (i < nt && j < ns) {
    if (te < se) {
      if (++i < nt) te += teacher_tokens[size_t(i)].size();
    } else if (se < te) {
      if (++j < ns) se += student_tokens[size_t(j)].size();
    } else {
      spans.push_back({t0, ++i, s0, ++j});
      t0 = i, s0 = j;
      if (i < nt) te += teacher_tokens[size_t(i)].size();
      if (j < ns) se += student_tokens[size_t(j)].size();
    }
  }
  check(!spans.empty(), "cross-tokenizer alignment: internal error, no span closed");
  // Trailing zero-width tokens on one side join the last span.
  spans.back().t1 = nt;
  spans.back().s1 = ns;
  return spans;
}

std::vector<int64_t> map_vocab_by_bytes(const std::vector<std::string>& from, const std::vector<std::string>& to) {
  std::unordered_map<std::string, int64_t> index;
  index.reserve(to.size());
  for (size_t id = 0; id < to.size(); ++id)
    if (!to[id].empty()) index.emplace(to[id], int64_t(id));  // emplace keeps the first (lowest) id
  std::vector<int64_t> out(from.size(), -1);
  for (size_t id = 0; id < from.size(); ++id) {
    if (from[id].empty()) continue;  // no text, nothing to match by
    auto it = index.find(from[id]);
    if (it != index.end()) out[id] = it->second;
  }
  return out;
}

}  // namespace retort
