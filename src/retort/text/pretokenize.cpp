#include "retort/text/pretokenize.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "retort/text/utf8.h"
#include "retort/util/error.h"

namespace retort {

const char* const kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
static const char* const kDigitsPattern = R"(\p{N})";  // HF Digits(individual_digits=true)

namespace {

// PCRE2's UCP \s is Z* plus \t\n\v\f\r; Oniguruma's is White_Space, which also has U+0085.
// Rewrite \s / \S so both engines agree (inside a class: \s -> \s\x{85}).
std::string widen_space(const std::string& p) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char n = p[i + 1];
      ++i;
      if (n == 's') {
        out += in_class ? "\\s\\x{85}" : "[\\s\\x{85}]";
      } else if (n == 'S' && !in_class) {
        out += "[^\\s\\x{85}]";
      } else {
        out += '\\';
        out += n;
      }
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      // A ']' (or '^]') right after '[' is a literal.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

}  // namespace

struct PreTokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() { pcre2_code_free(code); }
};

PreTokenizer::PreTokenizer() : PreTokenizer("gpt2", {kGpt2Pattern}, "built-in pattern") {}

PreTokenizer::PreTokenizer(std::string name, const std::vector<std::string>& patterns, const std::string& what)
    : name_(std::move(name)), patterns_(patterns) {
  for (const auto& p : patterns) {
    const std::string q = widen_space(p);
    int err = 0;
    PCRE2_SIZE off = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(q.data()), q.size(), PCRE2_UTF | PCRE2_UCP, &err,
                                     &off, nullptr);
    if (!code) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof(msg));
      fail(what, ": pre-tokenizer regex does not compile at offset ", off, ": ", reinterpret_cast<char*>(msg),
           " (pattern: ", p, ")");
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is unavailable
    auto r = std::make_shared<Regex>();
    r->code = code;
    regexes_.push_back(std::move(r));
  }
}

PreTokenizer PreTokenizer::named(const std::string& name) {
  if (name == "gpt2") return PreTokenizer("gpt2", {kGpt2Pattern}, "built-in gpt2");
  if (name == "smollm") return PreTokenizer("smollm", {kDigitsPattern, kGpt2Pattern}, "built-in smollm");
  if (name == "llama3") return PreTokenizer("llama3", {kLlama3Pattern}, "built-in llama3");
  if (name == "qwen2") return PreTokenizer("qwen2", {kQwen2Pattern}, "built-in qwen2");
  fail("unknown pre-tokenizer name '", name, "' (known: gpt2, smollm, llama3, qwen2)");
}

void PreTokenizer::split(std::string_view text, std::vector<std::string_view>& out) const {
  // Valid stretches go through the regexes; invalid runs are pieces as they are.
  std::vector<std::string_view> cur, next;
  size_t i = 0;
  while (i < text.size()) {
    size_t j = i;
    while (j < text.size()) {
      size_t len = 0;
      uint32_t cp = 0;
      if (utf8_next(text.substr(j), &len, &cp) != Utf8Status::valid) break;
      j += len;
    }
    if (j > i) {
      cur.assign(1, text.substr(i, j - i));
      for (const auto& re : regexes_) {
        pcre2_match_data* md = pcre2_match_data_create_from_pattern(re->code, nullptr);
        next.clear();
        for (std::string_view piece : cur) {
          const auto* subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
          size_t pos = 0, gap = 0;
          while (pos < piece.size()) {
            const int rc = pcre2_match(re->code, subject, piece.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
            if (rc < 0) break;  // no further match (the patterns used here always match; be safe)
            const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
            size_t s = ov[0], e = ov[1];
            if (e == s) {  // empty match: step over one character
              size_t len = 1;
              uint32_t cp = 0;
              utf8_next(piece.substr(s), &len, &cp);
              pos = s + len;
              continue;
            }
            if (s > gap) next.push_back(piece.substr(gap, s - gap));
            next.push_back(piece.substr(s, e - s));
            gap = pos = e;
          }
          if (gap < piece.size()) next.push_back(piece.substr(gap));
        }
        pcre2_match_data_free(md);
        cur.swap(next);
      }
      out.insert(out.end(), cur.begin(), cur.end());
      i = j;
    }
    // Maximal run of bytes that do not start a well-formed sequence.
    size_t k = i;
    while (k < text.size()) {
      size_t len = 0;
      uint32_t cp = 0;
      const Utf8Status st = utf8_next(text.substr(k), &len, &cp);
      if (st == Utf8Status::valid) break;
      k += len;
    }
    if (k > i) out.push_back(text.substr(i, k - i));
    i = k;
  }
}

}  // namespace retort
