#include "retort/text/tokenizer.h"

#include <algorithm>
#include <array>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>

#include "retort/io/gguf.h"
#include "retort/text/normalize.h"
#include "retort/text/pretokenize.h"
#include "retort/text/utf8.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

namespace retort {

namespace {

// GPT-2 byte -> code point table: printable bytes (! .. ~, ¡ .. ¬, ® .. ÿ) map to themselves,
// the other 68 bytes to U+0100.. in byte order, so every byte is a visible character.
std::array<uint32_t, 256> make_byte_to_cp() {
  std::array<uint32_t, 256> t{};
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    t[b] = printable ? static_cast<uint32_t>(b) : next++;
  }
  return t;
}
const std::array<uint32_t, 256> kByteToCp = make_byte_to_cp();

int cp_to_byte(uint32_t cp) {
  if (cp < 256) {
    const bool printable = (cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 255);
    return printable ? static_cast<int>(cp) : -1;
  }
  if (cp < 256 + 68) {
    for (int b = 0; b < 256; ++b)
      if (kByteToCp[b] == cp) return b;
  }
  return -1;
}

// Byte-level string ("Ġhello") -> raw bytes (" hello"). A string with a character outside the
// table is returned as its own UTF-8 bytes (what HF's ByteLevel decoder does).
std::string byte_level_decode(const std::string& s) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    size_t len = 0;
    uint32_t cp = 0;
    if (utf8_next(std::string_view(s).substr(i), &len, &cp) != Utf8Status::valid) return s;
    const int b = cp_to_byte(cp);
    if (b < 0) return s;
    out += static_cast<char>(b);
    i += len;
  }
  return out;
}

std::string byte_level_encode(std::string_view bytes) {
  std::string out;
  for (unsigned char b : bytes) utf8_append(out, kByteToCp[b]);
  return out;
}

// kByte: a SentencePiece byte-fallback token "<0xXX>" (GGUF token_type 6).
enum : uint8_t { kNormal = 0, kAddedText = 1, kSpecial = 2, kHole = 3, kByte = 4 };

// SentencePiece's whitespace: U+2581 LOWER ONE EIGHTH BLOCK.
constexpr std::string_view kSpmSpace = "\xE2\x96\x81";

std::string spm_escape(std::string_view s) {  // every ' ' -> "▁"
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == ' ') out += kSpmSpace;
    else out += c;
  }
  return out;
}

std::string spm_unescape(std::string_view s) {  // every "▁" -> ' '
  std::string out;
  for (size_t i = 0; i < s.size();) {
    if (s.compare(i, kSpmSpace.size(), kSpmSpace) == 0) {
      out += ' ';
      i += kSpmSpace.size();
    } else {
      out += s[i++];
    }
  }
  return out;
}

// "<0xAB>" -> 0xAB; -1 if `s` is not of that form.
int parse_byte_token(std::string_view s) {
  auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1; };
  if (s.size() != 6 || s.substr(0, 3) != "<0x" || s[5] != '>' || hex(s[3]) < 0 || hex(s[4]) < 0) return -1;
  return hex(s[3]) * 16 + hex(s[4]);
}

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false, lstrip = false, rstrip = false;
  bool normalized = false;  // HF: matched in the normalized text (after the non-normalized ones are cut out)
  std::string match;        // what is searched for: content, or NFC(content) for a normalized token under NFC
};

using AddedTable = std::array<std::vector<int32_t>, 256>;  // first byte of match -> indices into added, longest first

struct Merge {
  int32_t rank;
  int32_t id;
};

uint64_t pair_key(int32_t a, int32_t b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }

constexpr size_t kCacheMaxEntries = 1 << 17;

}  // namespace

struct Tokenizer::Impl {
  std::string what;                 // "gguf <path>" / "tokenizer.json <path>", for messages
  std::vector<std::string> texts;   // [n_vocab] vocab strings
  std::vector<std::string> bytes;   // [n_vocab] raw bytes of each token
  std::vector<uint8_t> kind;        // [n_vocab] kNormal / kAddedText / kSpecial / kHole / kByte
  std::unordered_map<std::string, int32_t> text_to_id;
  std::vector<std::pair<int32_t, int32_t>> merge_list;  // rank order, as (left id, right id)
  std::unordered_map<uint64_t, Merge> merges;           // (left, right) -> rank, merged id
  std::array<int32_t, 256> byte_id{};                    // byte -> id of its one-character token (SentencePiece:
                                                         // its <0xXX> token), -1 if none
  bool ignore_merges = false;                            // a pre-token found whole in the vocab is one token
  std::vector<AddedToken> added;
  AddedTable added_raw;   // tokens with normalized=false: cut out of the raw text first
  AddedTable added_norm;  // tokens with normalized=true: cut out of each normalized stretch
  bool nfc = false;       // normalizer NFC (tokenizer.json), applied to the text between raw added tokens
  PreTokenizer pre;
  std::optional<int32_t> bos, eos, pad, unk;

  // SentencePiece BPE (GGUF model "llama", or a tokenizer.json BPE with byte_fallback); its normalizer is
  // ' ' -> "▁".
  bool spm = false;
  // [n_vocab] merge priority: the higher merges first; -inf: never the result of a merge (a tokenizer.json
  // piece no merge makes).
  std::vector<float> scores;
  std::unordered_map<std::string_view, int32_t> pieces;  // normal token text -> id (views into texts)
  size_t max_piece = 0;                                  // longest piece, in bytes
  std::array<bool, 256> joins_space{};                   // bytes that precede an inner "▁" in some piece
  bool spm_drops = false;                                // a byte has no <0xXX> token and there is no unk
  // A GGUF SentencePiece vocabulary has scores but no merge list: merge_pairs() derives one on first use.
  bool derive_merges = false;
  mutable std::once_flag derive_once;
  mutable std::vector<std::pair<int32_t, int32_t>> derived_merges;
  bool add_bos = false;
  std::string chat_template;

  mutable std::mutex cache_mu;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;  // pre-token bytes -> ids

  void finish(const std::vector<std::pair<std::string, std::string>>& merge_strings);
  void index_spm_pieces(const std::vector<int64_t>& gguf_types = {});
  const std::vector<std::pair<int32_t, int32_t>>& merge_pairs() const;
  void bpe(std::string_view word, std::vector<int32_t>& out) const;
  void spm_bpe(std::string_view text, std::vector<int32_t>& out, size_t* n_dropped) const;
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
  void encode_text(std::string_view text, std::vector<int32_t>& out, size_t* n_dropped) const;
  bool normalizes() const { return nfc || spm; }
  std::string normalize(std::string_view s) const {
    return spm ? spm_escape(s) : nfc ? retort::nfc(s) : std::string(s);
  }
  template <class F>
  void split_added(std::string_view text, const AddedTable& table, bool parse_special, std::vector<int32_t>& out,
                   F&& stretch) const;
  std::optional<int32_t> id_of(const std::string& s) const {
    auto it = text_to_id.find(s);
    if (it == text_to_id.end()) return std::nullopt;
    return it->second;
  }
};

// Called once texts/kind/added/pre are set: builds the lookup tables and checks the merges.
void Tokenizer::Impl::finish(const std::vector<std::pair<std::string, std::string>>& merge_strings) {
  const auto n = static_cast<int32_t>(texts.size());
  check(n > 0, what, ": the vocabulary is empty");
  text_to_id.reserve(n * 2);
  bytes.resize(n);
  for (int32_t i = 0; i < n; ++i) {
    if (kind[i] == kHole) continue;
    text_to_id.emplace(texts[i], i);  // first id wins on duplicates
    if (kind[i] == kByte) bytes[i] = std::string(1, static_cast<char>(parse_byte_token(texts[i])));
    else if (kind[i] != kNormal) bytes[i] = texts[i];
    else bytes[i] = spm ? spm_unescape(texts[i]) : byte_level_decode(texts[i]);
  }
  for (auto& a : added) {
    check(!a.content.empty(), what, ": added token ", a.id, " has empty content");
    text_to_id[a.content] = a.id;
  }
  byte_id.fill(-1);
  for (int32_t i = n - 1; spm && i >= 0; --i)  // descending, so the first id wins
    if (kind[i] == kByte) byte_id[parse_byte_token(texts[i])] = i;
  for (int b = 0; b < 256 && !spm; ++b) {
    std::string s;
    utf8_append(s, kByteToCp[b]);
    auto it = text_to_id.find(s);
    byte_id[b] = (it != text_to_id.end() && kind[it->second] == kNormal) ? it->second : -1;
  }
  merges.reserve(merge_strings.size() * 2);
  merge_list.reserve(merge_strings.size());
  for (size_t r = 0; r < merge_strings.size(); ++r) {
    const auto& [a, b] = merge_strings[r];
    auto ia = text_to_id.find(a), ib = text_to_id.find(b), im = text_to_id.find(a + b);
    check(ia != text_to_id.end() && ib != text_to_id.end(), what, ": merge ", r, " \"", a, " ", b,
          "\" uses a token that is not in the vocabulary");
    check(im != text_to_id.end(), what, ": merge ", r, " \"", a, " ", b, "\" makes \"", a + b,
          "\", which is not in the vocabulary");
    merge_list.emplace_back(ia->second, ib->second);
    merges.emplace(pair_key(ia->second, ib->second), Merge{static_cast<int32_t>(r), im->second});  // first rank wins
  }
  for (auto& a : added) a.match = a.normalized ? normalize(a.content) : a.content;
  std::sort(added.begin(), added.end(), [](const AddedToken& x, const AddedToken& y) {
    return x.match.size() != y.match.size() ? x.match.size() > y.match.size() : x.id < y.id;
  });
  for (size_t k = 0; k < added.size(); ++k) {
    AddedTable& t = added[k].normalized ? added_norm : added_raw;
    t[static_cast<unsigned char>(added[k].match[0])].push_back(static_cast<int32_t>(k));
  }
}

// SentencePiece: the pieces merges make are the normal tokens (GGUF: token_type 1, not 5 "unused").
// Call after finish(), with unk set.
void Tokenizer::Impl::index_spm_pieces(const std::vector<int64_t>& gguf_types) {
  for (size_t i = 0; i < texts.size(); ++i) {
    if (kind[i] != kNormal || (!gguf_types.empty() && gguf_types[i] != 1)) continue;
    const std::string& t = texts[i];
    pieces.emplace(t, static_cast<int32_t>(i));  // first id wins on duplicates
    max_piece = std::max(max_piece, t.size());
    for (size_t at = t.find(kSpmSpace, 1); at != std::string::npos; at = t.find(kSpmSpace, at + 1))
      joins_space[static_cast<unsigned char>(t[at - 1])] = true;
  }
  spm_drops = !unk && std::find(byte_id.begin(), byte_id.end(), -1) != byte_id.end();
}

// A SentencePiece vocabulary's merges as Hugging Face derives them (transformers
// tokenization_utils_base.generate_merges, as SentencePieceExtractor does): every split of a normal
// piece into two normal pieces, ranked by the piece's score (higher first), then by the left part's
// length in characters (longer first), then the right part's; ties keep piece order, and within a
// piece (left id, right id) order. HF BPE with these merges (lowest rank first) then merges what
// SentencePiece does (highest score first): the ranks of one piece's splits are contiguous and in
// score order, and only normal pieces are ever symbols of a word.
const std::vector<std::pair<int32_t, int32_t>>& Tokenizer::Impl::merge_pairs() const {
  if (!derive_merges) return merge_list;
  std::call_once(derive_once, [this] {
    struct Cand {
      float score;
      int32_t len_l, len_r;  // in characters (code points)
      int32_t l, r;
    };
    auto chars = [](std::string_view s) {
      int32_t n = 0;
      for (unsigned char c : s) n += (c & 0xC0) != 0x80;
      return n;
    };
    std::vector<Cand> cands;
    for (size_t i = 0; i < texts.size(); ++i) {
      const std::string_view t = texts[i];
      if (auto self = pieces.find(t); self == pieces.end() || self->second != int32_t(i)) continue;  // no piece
      const size_t first = cands.size();
      for (size_t k = 1; k < t.size(); ++k) {
        if ((static_cast<unsigned char>(t[k]) & 0xC0) == 0x80) continue;  // inside a character
        auto l = pieces.find(t.substr(0, k)), r = pieces.find(t.substr(k));
        if (l != pieces.end() && r != pieces.end())
          cands.push_back({scores[i], chars(t.substr(0, k)), chars(t.substr(k)), l->second, r->second});
      }
      std::sort(cands.begin() + int64_t(first), cands.end(),
                [](const Cand& a, const Cand& b) { return a.l != b.l ? a.l < b.l : a.r < b.r; });
    }
    std::stable_sort(cands.begin(), cands.end(), [](const Cand& a, const Cand& b) {
      if (a.score != b.score) return a.score > b.score;
      if (a.len_l != b.len_l) return a.len_l > b.len_l;
      return a.len_r > b.len_r;
    });
    derived_merges.reserve(cands.size());
    for (const Cand& c : cands) derived_merges.emplace_back(c.l, c.r);
  });
  return derived_merges;
}

// BPE over one pre-token. Symbols form a linked list; a min-heap holds candidate pairs keyed by
// (rank, position of the left symbol), so the lowest rank merges first and ties go leftmost.
void Tokenizer::Impl::bpe(std::string_view word, std::vector<int32_t>& out) const {
  if (ignore_merges) {
    if (auto id = id_of(byte_level_encode(word)); id && kind[*id] == kNormal) {
      out.push_back(*id);
      return;
    }
  }
  struct Sym {
    int32_t id, prev, next;
  };
  std::vector<Sym> syms;
  syms.reserve(word.size());
  for (unsigned char c : word) {
    if (byte_id[c] < 0) continue;  // no token for this byte: dropped (as HF does without an unk token)
    const auto k = static_cast<int32_t>(syms.size());
    syms.push_back({byte_id[c], k - 1, -1});
    if (k > 0) syms[k - 1].next = k;
  }
  if (syms.size() > 1) {
    struct Cand {
      int32_t rank, pos, left, right;
      bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto consider = [&](int32_t pos) {
      if (pos < 0 || syms[pos].next < 0) return;
      const int32_t r = syms[pos].next;
      auto it = merges.find(pair_key(syms[pos].id, syms[r].id));
      if (it != merges.end()) heap.push({it->second.rank, pos, syms[pos].id, syms[r].id});
    };
    for (int32_t k = 0; k + 1 < static_cast<int32_t>(syms.size()); ++k) consider(k);
    std::vector<bool> dead(syms.size(), false);
    while (!heap.empty()) {
      const Cand c = heap.top();
      heap.pop();
      Sym& s = syms[c.pos];
      if (dead[c.pos] || s.id != c.left || s.next < 0 || syms[s.next].id != c.right) continue;  // stale
      const int32_t r = s.next;
      s.id = merges.find(pair_key(c.left, c.right))->second.id;
      dead[r] = true;
      s.next = syms[r].next;
      if (s.next >= 0) syms[s.next].prev = c.pos;
      consider(s.prev);
      consider(c.pos);
    }
    for (int32_t k = 0; k >= 0; k = syms[k].next) out.push_back(syms[k].id);
  } else if (syms.size() == 1) {
    out.push_back(syms[0].id);
  }
}

// SentencePiece BPE over one normalized stretch (spaces already "▁"). Symbols are spans of `text`, so
// a pair's concatenation is a substring and is looked up without copying. A max-heap holds candidate
// pairs keyed by (score of the merged piece, -position of the left symbol): highest score first,
// leftmost on ties. An entry is stale unless its left symbol is alive and still spans, with its right
// neighbour, the same bytes -- then it is the same piece at the same place, so still valid.
void Tokenizer::Impl::spm_bpe(std::string_view text, std::vector<int32_t>& out, size_t* n_dropped) const {
  struct Sym {
    uint32_t start, len;  // len 0: merged into its left neighbour
    int32_t prev, next;
  };
  check(text.size() < (1ull << 31), "encode: ", text.size(), " bytes between special tokens are too many for one "
        "SentencePiece stretch (the limit is 2 GiB)");
  std::vector<Sym> syms;
  syms.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    size_t len = 0;
    uint32_t cp = 0;
    if (utf8_next(text.substr(i), &len, &cp) != Utf8Status::valid) len = 1;  // an invalid byte stands alone
    const auto k = static_cast<int32_t>(syms.size());
    syms.push_back({static_cast<uint32_t>(i), static_cast<uint32_t>(len), k - 1, -1});
    if (k > 0) syms[k - 1].next = k;
    i += len;
  }
  struct Cand {
    float score;
    int32_t left;
    uint32_t len;  // bytes of the merged piece
    bool operator<(const Cand& o) const { return score != o.score ? score < o.score : left > o.left; }
  };
  std::priority_queue<Cand> heap;
  auto consider = [&](int32_t l) {
    if (l < 0 || syms[l].next < 0) return;
    const uint32_t len = syms[l].len + syms[syms[l].next].len;
    if (len > max_piece) return;
    auto it = pieces.find(text.substr(syms[l].start, len));
    if (it != pieces.end() && scores[it->second] != -std::numeric_limits<float>::infinity())
      heap.push({scores[it->second], l, len});
  };
  for (int32_t k = 0; k + 1 < static_cast<int32_t>(syms.size()); ++k) consider(k);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    Sym& s = syms[c.left];
    if (s.len == 0 || s.next < 0 || s.len + syms[s.next].len != c.len) continue;  // stale
    const int32_t r = s.next;
    s.len = c.len;
    syms[r].len = 0;
    s.next = syms[r].next;
    if (s.next >= 0) syms[s.next].prev = c.left;
    consider(s.prev);
    consider(c.left);
  }
  for (int32_t k = syms.empty() ? -1 : 0; k >= 0; k = syms[k].next) {
    const std::string_view sym = text.substr(syms[k].start, syms[k].len);
    if (auto it = pieces.find(sym); it != pieces.end()) {
      out.push_back(it->second);
      continue;
    }
    // Byte fallback; without a token for every byte, the whole character is unk (HF's byte_fallback).
    bool all = true;
    for (unsigned char b : sym) all = all && byte_id[b] >= 0;
    if (all) {
      for (unsigned char b : sym) out.push_back(byte_id[b]);
    } else if (unk) {
      out.push_back(*unk);
    } else if (n_dropped) {
      *n_dropped += sym.size();
    }
  }
}

// One word through the cache: byte-level BPE of a pre-token, or SentencePiece BPE of a word.
void Tokenizer::Impl::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  std::string key(word);
  {
    std::lock_guard<std::mutex> lock(cache_mu);
    auto it = cache.find(key);
    if (it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  if (spm) spm_bpe(word, ids, nullptr);
  else bpe(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  std::lock_guard<std::mutex> lock(cache_mu);
  if (cache.size() >= kCacheMaxEntries) cache.clear();
  cache.emplace(std::move(key), std::move(ids));
}

void Tokenizer::Impl::encode_text(std::string_view text, std::vector<int32_t>& out, size_t* n_dropped) const {
  if (text.empty()) return;
  if (spm) {
    if (n_dropped && spm_drops) {  // the cache keeps no count of dropped bytes
      spm_bpe(text, out, n_dropped);
      return;
    }
    // SentencePiece merges over the whole stretch, but no merge crosses a "▁" at p whose preceding
    // byte text[p-1] never precedes an inner "▁" in a piece (a piece across p would hold that pair),
    // so the stretch is cut there into words, each BPE-merged alone and cached.
    size_t start = 0;
    for (size_t p = 1; p < text.size(); ++p) {
      if (text[p] == kSpmSpace[0] && text.compare(p, kSpmSpace.size(), kSpmSpace) == 0 &&
          !joins_space[static_cast<unsigned char>(text[p - 1])]) {
        encode_word(text.substr(start, p - start), out);
        start = p;
      }
    }
    encode_word(text.substr(start), out);
    return;
  }
  std::vector<std::string_view> words;
  pre.split(text, words);
  for (std::string_view p : words) {
    if (n_dropped) {
      for (unsigned char c : p) *n_dropped += byte_id[c] < 0;  // exactly the bytes bpe() skips
    }
    encode_word(p, out);
  }
}

// Added tokens of `table`: leftmost-longest scan. A special token skipped because !parse_special
// still consumes its span (it is then encoded as text), as HF's encode_special_tokens does.
// The text between hits goes to stretch(string_view); hits are appended to out.
template <class F>
void Tokenizer::Impl::split_added(std::string_view text, const AddedTable& table, bool parse_special,
                                  std::vector<int32_t>& out, F&& stretch) const {
  size_t seg = 0, i = 0;
  while (i < text.size()) {
    const auto& cands = table[static_cast<unsigned char>(text[i])];
    const AddedToken* hit = nullptr;
    for (int32_t k : cands) {
      const auto& a = added[k];
      if (text.compare(i, a.match.size(), a.match) == 0) {
        hit = &a;
        break;
      }
    }
    if (!hit) {
      ++i;
      continue;
    }
    size_t start = i, stop = i + hit->match.size();
    if (hit->special && !parse_special) {
      i = stop;
      continue;
    }
    if (hit->lstrip) {  // take the whitespace before it (not past the previous token)
      while (start > seg) {
        size_t back = start - 1;
        while (back > seg && (static_cast<unsigned char>(text[back]) & 0xC0) == 0x80) --back;
        size_t len = 0;
        uint32_t cp = 0;
        if (utf8_next(text.substr(back, start - back), &len, &cp) != Utf8Status::valid || len != start - back ||
            !is_unicode_white_space(cp))
          break;
        start = back;
      }
    }
    if (hit->rstrip) {
      while (stop < text.size()) {
        size_t len = 0;
        uint32_t cp = 0;
        if (utf8_next(text.substr(stop), &len, &cp) != Utf8Status::valid || !is_unicode_white_space(cp)) break;
        stop += len;
      }
    }
    stretch(text.substr(seg, start - seg));
    out.push_back(hit->id);
    seg = i = stop;
  }
  stretch(text.substr(seg));
}

// HF order: cut out the non-normalized added tokens from the raw text; normalize each stretch
// between them; cut out the normalized added tokens; pre-tokenize and BPE what is left.
// (SentencePiece: control tokens are the non-normalized ones, user-defined the normalized ones.)
std::vector<int32_t> Tokenizer::encode(std::string_view text, bool parse_special, bool add_bos,
                                      size_t* n_dropped) const {
  const Impl& m = *impl_;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_bos && m.add_bos && m.bos) out.push_back(*m.bos);
  auto plain = [&](std::string_view s) { m.encode_text(s, out, n_dropped); };
  m.split_added(text, m.added_raw, parse_special, out, [&](std::string_view s) {
    if (s.empty()) return;
    if (m.normalizes()) {
      const std::string n = m.normalize(s);
      m.split_added(n, m.added_norm, parse_special, out, plain);
    } else {
      m.split_added(s, m.added_norm, parse_special, out, plain);
    }
  });
  return out;
}

std::vector<int32_t> Tokenizer::encode_parts(const std::vector<TextPart>& parts, bool add_bos) const {
  const Impl& m = *impl_;
  std::vector<int32_t> out;
  if (add_bos && m.add_bos && m.bos) out.push_back(*m.bos);
  std::string run;  // plain text not yet encoded (may span parts)
  auto flush_run = [&] {
    if (run.empty()) return;
    const std::vector<int32_t> ids = encode(run, /*parse_special=*/false);
    out.insert(out.end(), ids.begin(), ids.end());
    run.clear();
  };
  for (const TextPart& part : parts) {
    if (!part.trusted) {
      run += part.text;
      continue;
    }
    // split_added pushes each added token's id into `specials` and hands the plain text between them to
    // the callback, in order: the ids pushed since the last callback come before its text.
    std::vector<int32_t> specials;
    size_t taken = 0;
    auto take_specials = [&] {
      if (taken == specials.size()) return;
      flush_run();
      out.insert(out.end(), specials.begin() + std::ptrdiff_t(taken), specials.end());
      taken = specials.size();
    };
    m.split_added(part.text, m.added_raw, /*parse_special=*/true, specials, [&](std::string_view plain) {
      take_specials();
      run += plain;
    });
    take_specials();
  }
  flush_run();
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string out;
  for (int32_t id : ids) {
    check(id >= 0 && id < n_vocab(), "decode: token id ", id, " is outside the vocabulary [0, ", n_vocab(), ")");
    if (skip_special && impl_->kind[id] == kSpecial) continue;
    out += impl_->bytes[id];
  }
  return out;
}

std::string Tokenizer::token_bytes(int32_t id) const {
  check(id >= 0 && id < n_vocab(), "token id ", id, " is outside the vocabulary [0, ", n_vocab(), ")");
  return impl_->bytes[id];
}

std::string Tokenizer::token_text(int32_t id) const {
  check(id >= 0 && id < n_vocab(), "token id ", id, " is outside the vocabulary [0, ", n_vocab(), ")");
  return impl_->texts[id];
}

std::optional<int32_t> Tokenizer::token_id(std::string_view vocab_string) const {
  return impl_->id_of(std::string(vocab_string));
}

int32_t Tokenizer::n_vocab() const { return static_cast<int32_t>(impl_->texts.size()); }
std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos; }
std::optional<int32_t> Tokenizer::pad_id() const { return impl_->pad; }
std::optional<int32_t> Tokenizer::unk_id() const { return impl_->unk; }
bool Tokenizer::add_bos_token() const { return impl_->add_bos && impl_->bos.has_value(); }
bool Tokenizer::is_special(int32_t id) const { return id >= 0 && id < n_vocab() && impl_->kind[id] == kSpecial; }
bool Tokenizer::is_added(int32_t id) const {
  return id >= 0 && id < n_vocab() && (impl_->kind[id] == kSpecial || impl_->kind[id] == kAddedText);
}
std::string Tokenizer::model_type() const { return impl_->spm ? "spm" : "gpt2"; }
std::string Tokenizer::pre_tokenizer_name() const { return impl_->spm ? "spm" : impl_->pre.name(); }
const std::string& Tokenizer::chat_template() const { return impl_->chat_template; }

std::vector<int32_t> Tokenizer::eog_ids() const {
  std::vector<int32_t> out;
  if (impl_->eos) out.push_back(*impl_->eos);
  for (const char* s : {"<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>", "<|eom_id|>", "<|end|>",
                        "<end_of_turn>", "</s>"}) {
    auto id = impl_->id_of(s);
    if (id && is_special(*id) && std::find(out.begin(), out.end(), *id) == out.end()) out.push_back(*id);
  }
  return out;
}

std::string Tokenizer::hash() const {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a 64 offset basis
  auto feed = [&h](std::string_view s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= 0x100000001b3ull;  // FNV prime
    }
  };
  const Impl& m = *impl_;
  feed("pre:");
  feed(pre_tokenizer_name());
  feed("\n");
  if (m.nfc) feed("normalizer:nfc\n");  // absent otherwise, so hashes of unnormalized tokenizers are unchanged
  for (size_t i = 0; i < m.texts.size(); ++i) {
    feed(m.texts[i]);
    feed(std::string_view("\0", 1));
  }
  if (m.spm) {  // absent otherwise, so hashes of byte-level tokenizers are unchanged
    // The scores enter through the merges derived from them (below), so a GGUF and a tokenizer.json of
    // one SentencePiece vocabulary hash alike.
    feed("bytes\n");
    for (size_t i = 0; i < m.kind.size(); ++i)
      if (m.kind[i] == kByte) feed(cat(i, "\n"));
    if (m.unk) feed(cat("unk ", *m.unk, "\n"));
  }
  feed("merges\n");
  for (const auto& [a, b] : m.merge_pairs()) {
    feed(m.texts[a]);
    feed(" ");
    feed(m.texts[b]);
    feed("\n");
  }
  std::vector<std::pair<int32_t, bool>> added;
  for (const auto& a : m.added) added.emplace_back(a.id, a.special);
  std::sort(added.begin(), added.end());
  for (const auto& [id, special] : added) feed(cat("added ", id, special ? " special\n" : "\n"));
  static const char* hex = "0123456789abcdef";
  std::string out(16, '0');
  for (int k = 15; k >= 0; --k, h >>= 4) out[k] = hex[h & 15];
  return out;
}

std::vector<std::pair<std::string, std::string>> Tokenizer::merges() const {
  std::vector<std::pair<std::string, std::string>> out;
  const auto& pairs = impl_->merge_pairs();
  out.reserve(pairs.size());
  for (const auto& [a, b] : pairs) out.emplace_back(impl_->texts[a], impl_->texts[b]);
  return out;
}

std::vector<Tokenizer::AddedTokenInfo> Tokenizer::added_tokens() const {
  std::vector<AddedTokenInfo> out;
  for (const auto& a : impl_->added) out.push_back({a.id, a.content, a.special, a.lstrip, a.rstrip, a.normalized});
  std::sort(out.begin(), out.end(), [](const AddedTokenInfo& x, const AddedTokenInfo& y) { return x.id < y.id; });
  return out;
}

std::vector<std::string> Tokenizer::pre_tokenizer_patterns() const { return impl_->pre.patterns(); }
bool Tokenizer::normalizes_nfc() const { return impl_->nfc; }
bool Tokenizer::ignores_merges() const { return impl_->ignore_merges; }
bool Tokenizer::is_hole(int32_t id) const { return id >= 0 && id < n_vocab() && impl_->kind[id] == kHole; }
bool Tokenizer::is_byte(int32_t id) const { return id >= 0 && id < n_vocab() && impl_->kind[id] == kByte; }
float Tokenizer::score(int32_t id) const {
  check(id >= 0 && id < n_vocab(), "token id ", id, " is outside the vocabulary [0, ", n_vocab(), ")");
  return impl_->spm ? impl_->scores[size_t(id)] : 0.0f;
}

// ---------------------------------------------------------------------------------------------
// GGUF

Tokenizer Tokenizer::from_gguf(const GgufFile& gguf) {
  auto m = std::make_shared<Impl>();
  m->what = "gguf " + gguf.path();
  const auto model = gguf.find_string("tokenizer.ggml.model");
  check(model.has_value(), m->what, ": no tokenizer.ggml.model; this file carries no tokenizer");
  check(*model == "gpt2" || *model == "llama", m->what, ": tokenizer.ggml.model is \"", *model,
        "\"; retort supports byte-level BPE (\"gpt2\") and SentencePiece BPE (\"llama\"), not WordPiece or "
        "Unigram tokenizers");
  m->spm = *model == "llama";
  if (m->spm) {
    // tokenizer.ggml.pre ("default") means nothing for SentencePiece; llama.cpp ignores it too.
    check(gguf.find("tokenizer.ggml.scores"), m->what, ": tokenizer.ggml.model is \"llama\" (SentencePiece BPE) but "
          "tokenizer.ggml.scores is missing, so the merge order is unknown; re-convert the model with llama.cpp's "
          "convert_hf_to_gguf.py");
    check(gguf.find("tokenizer.ggml.token_type"), m->what, ": tokenizer.ggml.model is \"llama\" (SentencePiece BPE) "
          "but tokenizer.ggml.token_type is missing, so the byte and control tokens are unknown");
    // llama.cpp prepends a space when the key is absent.
    const auto prefix = gguf.find_bool("tokenizer.ggml.add_space_prefix");
    check(prefix.has_value() && !*prefix, m->what, ": tokenizer.ggml.add_space_prefix is ",
          prefix ? "true" : "absent (llama.cpp then prepends a space)",
          "; retort supports SentencePiece BPE (\"llama\") without a prefix space only, as Gemma uses");
  } else {
    const auto pre = gguf.find_string("tokenizer.ggml.pre");
    check(pre.has_value(), m->what, ": no tokenizer.ggml.pre, so the pre-tokenizer is unknown; re-convert the model "
          "with a recent llama.cpp convert_hf_to_gguf.py");
    std::string pre_name;
    if (*pre == "gpt2" || *pre == "gpt-2") pre_name = "gpt2";
    else if (*pre == "smollm" || *pre == "starcoder" || *pre == "refact" || *pre == "codeshell") pre_name = "smollm";
    else if (*pre == "llama-bpe" || *pre == "llama3") pre_name = "llama3";
    else if (*pre == "qwen2" || *pre == "deepseek-r1-qwen") pre_name = "qwen2";
    else fail(m->what, ": tokenizer.ggml.pre \"", *pre,
              "\" is not supported (known: smollm, starcoder, gpt2, llama-bpe, qwen2)");
    m->pre = PreTokenizer::named(pre_name);
    m->ignore_merges = pre_name == "llama3";
    // GGUF has no normalizer field; Qwen2's tokenizer.json (the source of pre "qwen2") has NFC, and HF applies it.
    m->nfc = *pre == "qwen2";
  }

  const GgufValue* tokens = gguf.find("tokenizer.ggml.tokens");
  check(tokens && tokens->is_array() && tokens->array_type() == GgufValueType::STRING, m->what,
        ": tokenizer.ggml.tokens is missing or not an array of strings");
  const size_t n = tokens->array_size();
  check(n > 0 && n < (1u << 31), m->what, ": tokenizer.ggml.tokens has ", n, " entries");
  std::vector<int64_t> types;
  if (gguf.find("tokenizer.ggml.token_type")) {
    types = gguf.get_int_array("tokenizer.ggml.token_type");
    check(types.size() == n, m->what, ": tokenizer.ggml.token_type has ", types.size(), " entries but there are ", n,
          " tokens");
  }
  m->texts.resize(n);
  m->kind.assign(n, kNormal);
  // llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
  for (size_t i = 0; i < n; ++i) {
    m->texts[i] = std::string(tokens->string_at(i));
    int64_t t = types.empty() ? 1 : types[i];
    if (m->spm && t == 2) t = 3;  // <unk>: special, and cut out of the text like control tokens (llama.cpp)
    if (t == 3 || t == 4) {  // control / user-defined: matched in the text before pre-tokenization
      m->kind[i] = t == 3 ? kSpecial : kAddedText;
      check(!m->texts[i].empty(), m->what, ": token ", i, " (type ", t, ") is empty");
      // SentencePiece matches user-defined pieces in the normalized text (spaces as "▁").
      m->added.push_back({m->texts[i], static_cast<int32_t>(i), t == 3, false, false, /*normalized=*/m->spm && t == 4,
                          ""});
    } else if (m->spm && t == 6) {
      check(parse_byte_token(m->texts[i]) >= 0, m->what, ": token ", i, " \"", m->texts[i],
            "\" has token_type 6 (byte) but is not of the form <0xXX>");
      m->kind[i] = kByte;
    }
  }
  if (m->spm) {
    const std::vector<double> scores = gguf.get_float_array("tokenizer.ggml.scores");
    check(scores.size() == n, m->what, ": tokenizer.ggml.scores has ", scores.size(), " entries but there are ", n,
          " tokens");
    m->scores.assign(scores.begin(), scores.end());
    m->derive_merges = true;
  }
  std::vector<std::pair<std::string, std::string>> merges;
  if (!m->spm && gguf.find("tokenizer.ggml.merges")) {  // SentencePiece merges by score, never by a merge list
    const GgufValue& mv = gguf.get("tokenizer.ggml.merges");
    check(mv.is_array() && mv.array_type() == GgufValueType::STRING, m->what,
          ": tokenizer.ggml.merges is not an array of strings");
    merges.reserve(mv.array_size());
    for (size_t r = 0; r < mv.array_size(); ++r) {
      std::string_view s = mv.string_at(r);
      const size_t sp = s.find(' ', 1);
      check(sp != std::string_view::npos && sp + 1 < s.size(), m->what, ": tokenizer.ggml.merges[", r, "] \"", s,
            "\" is not \"left right\"");
      merges.emplace_back(std::string(s.substr(0, sp)), std::string(s.substr(sp + 1)));
    }
  }
  auto opt_id = [&](const char* key) -> std::optional<int32_t> {
    auto v = gguf.find_int(key);
    if (!v || *v < 0 || *v >= static_cast<int64_t>(n)) return std::nullopt;  // llama.cpp writes -1 / out of range for "none"
    return static_cast<int32_t>(*v);
  };
  m->bos = opt_id("tokenizer.ggml.bos_token_id");
  m->eos = opt_id("tokenizer.ggml.eos_token_id");
  m->pad = opt_id("tokenizer.ggml.padding_token_id");
  if (m->spm) m->unk = opt_id("tokenizer.ggml.unknown_token_id");
  m->add_bos = gguf.find_bool("tokenizer.ggml.add_bos_token").value_or(false);
  m->chat_template = gguf.find_string("tokenizer.chat_template").value_or("");
  m->finish(merges);
  // Merge results: normal pieces only (SentencePiece never merges into control, byte or unused pieces).
  if (m->spm) m->index_spm_pieces(types);
  return Tokenizer(std::move(m));
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json

namespace {

using nlohmann::json;

std::string jtype(const json& j) { return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : ""; }

// Collect the regex splits of an HF pre_tokenizer; sets *byte_level when a ByteLevel step is seen.
void collect_pre(const json& j, const std::string& what, const std::string& field, std::vector<std::string>& patterns,
                 bool* byte_level) {
  const std::string t = jtype(j);
  if (t == "Sequence") {
    check(j.contains("pretokenizers") && j["pretokenizers"].is_array(), what, ": ", field, ".pretokenizers is missing");
    for (size_t k = 0; k < j["pretokenizers"].size(); ++k)
      collect_pre(j["pretokenizers"][k], what, cat(field, ".pretokenizers[", k, "]"), patterns, byte_level);
  } else if (t == "ByteLevel") {
    check(!j.value("add_prefix_space", false), what, ": ", field,
          ".add_prefix_space is true; retort supports byte-level pre-tokenizers without a prefix space only");
    if (j.value("use_regex", true)) patterns.push_back(kGpt2Pattern);
    *byte_level = true;
  } else if (t == "Digits") {
    patterns.push_back(j.value("individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)");
  } else if (t == "Split") {
    check(j.value("behavior", std::string()) == "Isolated", what, ": ", field, ".behavior is \"",
          j.value("behavior", std::string()), "\"; only \"Isolated\" is supported");
    check(!j.value("invert", false), what, ": ", field, ".invert is true; not supported");
    check(j.contains("pattern") && j["pattern"].is_object(), what, ": ", field, ".pattern is missing");
    const json& p = j["pattern"];
    if (p.contains("Regex") && p["Regex"].is_string()) {
      patterns.push_back(p["Regex"].get<std::string>());
    } else if (p.contains("String") && p["String"].is_string()) {
      patterns.push_back("\\Q" + p["String"].get<std::string>() + "\\E");
    } else {
      fail(what, ": ", field, ".pattern has neither Regex nor String");
    }
  } else {
    fail(what, ": ", field, ".type is \"", t, "\"; supported pre-tokenizers are ByteLevel, Digits, Split and Sequence");
  }
}

std::optional<std::string> config_token(const json& cfg, const char* key) {
  if (!cfg.contains(key)) return std::nullopt;
  const json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

// HF normalizer: null, NFC, or a Sequence of those (NFC twice is NFC once).
void collect_normalizer(const json& j, const std::string& what, const std::string& field, bool* nfc) {
  if (j.is_null()) return;
  const std::string t = jtype(j);
  if (t == "NFC") {
    *nfc = true;
  } else if (t == "Sequence") {
    check(j.contains("normalizers") && j["normalizers"].is_array(), what, ": ", field, ".normalizers is missing");
    for (size_t k = 0; k < j["normalizers"].size(); ++k)
      collect_normalizer(j["normalizers"][k], what, cat(field, ".normalizers[", k, "]"), nfc);
  } else {
    fail(what, ": ", field, ".type is \"", t, "\"; retort supports normalizer null, NFC, or a Sequence of NFC "
         "(byte-level BPE tokenizers such as SmolLM2, Llama-3 and Qwen2 use no other)");
  }
}

// Leading SpecialToken of a TemplateProcessing "single" template = BOS added by the post-processor.
std::optional<std::string> post_processor_bos(const json& pp) {
  const std::string t = jtype(pp);
  if (t == "Sequence" && pp.contains("processors") && pp["processors"].is_array()) {
    for (const auto& p : pp["processors"])
      if (auto b = post_processor_bos(p)) return b;
  }
  if (t == "TemplateProcessing" && pp.contains("single") && pp["single"].is_array() && !pp["single"].empty()) {
    const json& first = pp["single"][0];
    if (first.is_object() && first.contains("SpecialToken") && first["SpecialToken"].contains("id") &&
        first["SpecialToken"]["id"].is_string())
      return first["SpecialToken"]["id"].get<std::string>();
  }
  return std::nullopt;
}

}  // namespace

namespace {

bool is_string_pattern(const json& j, const char* value) {
  return j.is_object() && j.contains("pattern") && j["pattern"].is_object() && j["pattern"].contains("String") &&
         j["pattern"]["String"] == value;
}

// The SentencePiece pipeline retort reads: Gemma's (transformers GemmaTokenizer). Normalizer
// Replace(" " -> "▁") alone (a Sequence of just it is fine); pre_tokenizer null or Split on " " (a no-op
// once the spaces are "▁"); decoder null or a Sequence of Replace / ByteFallback / Fuse. Llama-2-style
// files (a Prepend normalizer or Metaspace, a Strip decoder: a prefix space) are refused by name.
void check_spm_pipeline(const json& j, const std::string& what) {
  const std::string hint = "; retort reads SentencePiece-style BPE tokenizer.json files shaped like Gemma's "
                           "(normalizer Replace \" \" -> \"\u2581\", no prefix space)";
  const json* norm = j.contains("normalizer") ? &j["normalizer"] : nullptr;
  if (norm && jtype(*norm) == "Sequence" && norm->contains("normalizers") && (*norm)["normalizers"].is_array() &&
      (*norm)["normalizers"].size() == 1)
    norm = &(*norm)["normalizers"][0];
  check(norm && jtype(*norm) == "Replace" && is_string_pattern(*norm, " ") && norm->value("content", "") == "\u2581",
        what, ": model.byte_fallback is true, but field normalizer is ", norm ? norm->dump().substr(0, 200) : "missing",
        hint);
  if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null()) {
    const json& pre = j["pre_tokenizer"];
    check(jtype(pre) == "Split" && is_string_pattern(pre, " ") && !pre.value("invert", false), what,
          ": field pre_tokenizer is ", pre.dump().substr(0, 200), " (expected null or a Split on \" \")", hint);
  }
  if (j.contains("decoder") && !j["decoder"].is_null()) {
    const json& d = j["decoder"];
    std::vector<json> steps;
    if (jtype(d) == "Sequence" && d.contains("decoders") && d["decoders"].is_array()) steps = d["decoders"].get<std::vector<json>>();
    else steps = {d};
    for (const json& step : steps) {
      const std::string t = jtype(step);
      check(t == "Replace" || t == "ByteFallback" || t == "Fuse", what, ": field decoder has a \"", t,
            "\" step (retort decodes with Replace \"\u2581\" -> \" \", ByteFallback and Fuse only)", hint);
    }
  }
  check(!j["model"].value("ignore_merges", false), what,
        ": field model.ignore_merges is true, which SentencePiece BPE does not do", hint);
}

json parse_json_file(const std::string& path, const std::string& what) {
  try {
    return json::parse(read_file(path));
  } catch (const json::exception& e) {
    fail(what, ": not valid JSON (", e.what(), ")");
  }
}

}  // namespace

// Byte-level BPE (GPT-2 family), or SentencePiece BPE with byte fallback (model.byte_fallback: Gemma).
Tokenizer Tokenizer::from_hf_json(const std::string& tokenizer_json_path, const std::string& tokenizer_config_path) {
  auto m = std::make_shared<Impl>();
  const std::string what = "tokenizer.json " + tokenizer_json_path;
  m->what = what;
  const json j = parse_json_file(tokenizer_json_path, what);
  check(j.is_object(), what, ": the top level is not a JSON object");
  check(j.contains("model") && j["model"].is_object(), what, ": field model is missing");
  const json& model = j["model"];
  const std::string mtype = model.contains("type") ? jtype(model) : "BPE";
  check(mtype == "BPE", what, ": field model.type is \"", mtype,
        "\"; retort supports BPE only (byte-level, or SentencePiece-style with byte_fallback)");
  check(model.contains("vocab") && model["vocab"].is_object(), what, ": field model.vocab is missing or not an object");
  check(model.contains("merges") && model["merges"].is_array(), what, ": field model.merges is missing or not an array");
  m->spm = model.value("byte_fallback", false);
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    check(!model.contains(k) || model[k].is_null() || (model[k].is_string() && model[k].get<std::string>().empty()),
          what, ": field model.", k, " is set; not supported");
  }
  check(!model.contains("dropout") || model["dropout"].is_null() || model["dropout"] == 0.0, what,
        ": field model.dropout is set; retort encodes deterministically (remove it)");

  if (m->spm) {
    check_spm_pipeline(j, what);
  } else {
    m->ignore_merges = model.value("ignore_merges", false);
    if (j.contains("normalizer")) collect_normalizer(j["normalizer"], what, "normalizer", &m->nfc);
    check(j.contains("pre_tokenizer") && j["pre_tokenizer"].is_object(), what,
          ": field pre_tokenizer is missing; a byte-level BPE needs a ByteLevel pre-tokenizer");
    std::vector<std::string> patterns;
    bool byte_level = false;
    collect_pre(j["pre_tokenizer"], what, "pre_tokenizer", patterns, &byte_level);
    check(byte_level, what, ": field pre_tokenizer has no ByteLevel step; retort supports byte-level BPE, or "
          "SentencePiece-style BPE with model.byte_fallback");
    if (j.contains("decoder") && !j["decoder"].is_null()) {
      check(jtype(j["decoder"]) == "ByteLevel", what, ": field decoder.type is \"", jtype(j["decoder"]),
            "\"; byte-level BPE needs the ByteLevel decoder");
    }
    std::string pre_name = "custom";
    if (patterns == std::vector<std::string>{kGpt2Pattern}) pre_name = "gpt2";
    else if (patterns == std::vector<std::string>{R"(\p{N})", kGpt2Pattern}) pre_name = "smollm";
    else if (patterns == std::vector<std::string>{kLlama3Pattern}) pre_name = "llama3";
    else if (patterns == std::vector<std::string>{kQwen2Pattern}) pre_name = "qwen2";
    m->pre = PreTokenizer(pre_name, patterns, what);
  }

  // Vocabulary: model.vocab plus added_tokens (which may sit past the model's ids).
  int64_t n = 0;
  for (const auto& [k, v] : model["vocab"].items()) {
    check(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() < (1 << 30), what,
          ": field model.vocab[\"", k, "\"] is not a valid id");
    n = std::max<int64_t>(n, v.get<int64_t>() + 1);
  }
  std::vector<AddedToken> added;
  if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
    check(j["added_tokens"].is_array(), what, ": field added_tokens is not an array");
    for (size_t k = 0; k < j["added_tokens"].size(); ++k) {
      const json& a = j["added_tokens"][k];
      check(a.is_object() && a.contains("id") && a["id"].is_number_integer() && a.contains("content") &&
                a["content"].is_string(),
            what, ": field added_tokens[", k, "] needs an integer id and a string content");
      const int64_t id = a["id"].get<int64_t>();
      check(id >= 0 && id < (1 << 30), what, ": field added_tokens[", k, "].id ", id, " is out of range");
      check(!a.value("single_word", false), what, ": field added_tokens[", k, "].single_word is true; not supported");
      const bool special = a.value("special", false);
      added.push_back({a["content"].get<std::string>(), static_cast<int32_t>(id), special, a.value("lstrip", false),
                       a.value("rstrip", false), a.value("normalized", !special), ""});
      n = std::max<int64_t>(n, id + 1);
    }
  }
  m->texts.assign(n, "");
  m->kind.assign(n, kHole);
  for (const auto& [k, v] : model["vocab"].items()) {
    m->texts[v.get<int64_t>()] = k;
    // HF's byte fallback looks bytes up as "<0xXX>".
    m->kind[v.get<int64_t>()] = m->spm && parse_byte_token(k) >= 0 ? kByte : kNormal;
  }
  for (const auto& a : added) {
    m->texts[a.id] = a.content;
    m->kind[a.id] = a.special ? kSpecial : kAddedText;
  }
  m->added = added;

  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(model["merges"].size());
  for (size_t r = 0; r < model["merges"].size(); ++r) {
    const json& e = model["merges"][r];
    if (e.is_string()) {
      const std::string s = e.get<std::string>();
      const size_t sp = s.find(' ', 1);
      check(sp != std::string::npos && sp + 1 < s.size() && s.find(' ', sp + 1) == std::string::npos, what,
            ": field model.merges[", r, "] \"", s, "\" is not \"left right\"");
      merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else {
      check(e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string(), what, ": field model.merges[", r,
            "] is neither \"left right\" nor [left, right]");
      merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
    }
  }
  m->finish(merges);

  if (m->spm) {
    if (model.contains("unk_token") && model["unk_token"].is_string()) {
      m->unk = m->id_of(model["unk_token"].get<std::string>());
      check(m->unk.has_value(), what, ": field model.unk_token \"", model["unk_token"].get<std::string>(),
            "\" is not in the vocabulary");
    }
    // SentencePiece merges the highest-scoring piece first; HF BPE the lowest-ranked merge. A piece's
    // score is minus the rank of the first merge that makes it; a piece no merge makes is never merged.
    m->scores.assign(size_t(n), -std::numeric_limits<float>::infinity());
    for (size_t r = 0; r < m->merge_list.size(); ++r) {
      const auto [a, b] = m->merge_list[r];
      const int32_t made = m->merges.at(pair_key(a, b)).id;
      if (m->kind[made] == kNormal && m->scores[made] == -std::numeric_limits<float>::infinity())
        m->scores[made] = -static_cast<float>(r);
    }
  }

  // BOS from the post-processor; the config (when given) overrides.
  if (j.contains("post_processor") && !j["post_processor"].is_null()) {
    if (auto b = post_processor_bos(j["post_processor"])) {
      m->bos = m->id_of(*b);
      m->add_bos = m->bos.has_value();
    }
  }
  if (!tokenizer_config_path.empty()) {
    const std::string cwhat = "tokenizer_config.json " + tokenizer_config_path;
    const json c = parse_json_file(tokenizer_config_path, cwhat);
    check(c.is_object(), cwhat, ": the top level is not a JSON object");
    auto resolve = [&](const char* key, std::optional<int32_t>* slot) {
      if (auto s = config_token(c, key)) {
        auto id = m->id_of(*s);
        check(id.has_value(), cwhat, ": field ", key, " \"", *s, "\" is not a token of ", tokenizer_json_path);
        *slot = id;
      }
    };
    resolve("bos_token", &m->bos);
    resolve("eos_token", &m->eos);
    resolve("pad_token", &m->pad);
    if (m->spm) resolve("unk_token", &m->unk);
    if (c.contains("add_bos_token") && c["add_bos_token"].is_boolean()) m->add_bos = c["add_bos_token"].get<bool>();
    if (c.contains("chat_template")) {
      const json& t = c["chat_template"];
      if (t.is_string()) {
        m->chat_template = t.get<std::string>();
      } else if (t.is_array()) {  // [{"name": "default", "template": "..."}, ...]
        for (const auto& e : t)
          if (e.is_object() && e.value("name", std::string()) == "default" && e.contains("template") &&
              e["template"].is_string())
            m->chat_template = e["template"].get<std::string>();
      }
    }
  }
  if (m->spm) m->index_spm_pieces();
  return Tokenizer(std::move(m));
}

// ---------------------------------------------------------------------------------------------

StreamDecoder::StreamDecoder(const Tokenizer& tok, bool skip_special) : tok_(&tok), skip_special_(skip_special) {}

std::string StreamDecoder::push(int32_t id) {
  if (skip_special_ && tok_->is_special(id)) return "";
  pending_ += tok_->token_bytes(id);
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    size_t len = 0;
    uint32_t cp = 0;
    const Utf8Status st = utf8_next(std::string_view(pending_).substr(i), &len, &cp);
    if (st == Utf8Status::incomplete) break;  // wait for the rest of the character
    if (st == Utf8Status::valid) out.append(pending_, i, len);
    else out += "\xEF\xBF\xBD";  // U+FFFD
    i += len;
  }
  pending_.erase(0, i);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  if (!pending_.empty()) out = "\xEF\xBF\xBD";  // a held prefix is one maximal subpart
  pending_.clear();
  return out;
}

}  // namespace retort
