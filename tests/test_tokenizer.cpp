// Byte-level BPE tokenizer against Hugging Face `tokenizers` golden ids
// (tests/data/tokenizer/gen_golden.py writes them; see that script for the references).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "retort/io/gguf.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

using namespace retort;
using nlohmann::json;

namespace {

const std::string kDir = std::string(RETORT_TEST_DATA) + "/tokenizer";

std::string unhex(const std::string& h) {
  std::string out;
  for (size_t i = 0; i + 1 < h.size(); i += 2) out += static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16));
  return out;
}

struct Case {
  std::string text;
  bool valid = true;
};

const std::vector<Case>& corpus() {
  static const std::vector<Case> cases = [] {
    std::vector<Case> out;
    std::ifstream f(kDir + "/corpus.jsonl");
    std::string line;
    while (std::getline(f, line)) {
      const json r = json::parse(line);
      if (r.contains("hex")) out.push_back({unhex(r["hex"]), false});
      else out.push_back({r["text"].get<std::string>(), true});
    }
    return out;
  }();
  return cases;
}

std::vector<json> golden(const std::string& name) {
  std::vector<json> out;
  std::ifstream f(kDir + "/" + name + "/golden.jsonl");
  std::string line;
  while (std::getline(f, line)) out.push_back(json::parse(line));
  return out;
}

std::string model_path() {
  const char* home = std::getenv("RETORT_HOME");
  std::string base = home ? home : std::string(std::getenv("HOME") ? std::getenv("HOME") : "") + "/.cache/retort";
  return base + "/models/smollm2-135m-instruct.gguf";
}

std::string ids_str(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += std::to_string(id) + " ";
  return s;
}

// Every corpus case: ids with and without special-token parsing, decode, decode(skip_special).
// skip_lstrip: the GGUF format cannot carry an added token's lstrip flag, so cases with "<mask>"
// (lstrip in the synthetic qwen2 tokenizer.json) are checked on the JSON side only. Cases whose
// golden ids use a token the tokenizer lacks (qwen2_nfc's extra "résumé", against the qwen2 GGUF)
// are skipped. decode(encode(text)) == text is checked only for unnormalized tokenizers.
void check_golden(const Tokenizer& tok, const std::string& name, bool skip_lstrip, bool normalized = false) {
  const auto& cases = corpus();
  const auto gold = golden(name);
  ASSERT_EQ(gold.size(), cases.size());
  ASSERT_GE(cases.size(), 150u);
  for (const json& g : gold) {
    const size_t i = g["i"];
    const Case& c = cases[i];
    if (skip_lstrip && c.text.find("<mask>") != std::string::npos) continue;
    SCOPED_TRACE(name + " case " + std::to_string(i) + ": " + (c.valid ? c.text : "(invalid utf-8)"));
    const auto ids = g["ids"].get<std::vector<int32_t>>();
    const auto ids_raw = g["ids_raw"].get<std::vector<int32_t>>();
    if (std::any_of(ids.begin(), ids.end(), [&](int32_t id) { return id >= tok.n_vocab(); })) continue;
    // HF garbles non-ASCII added-token content in decode; the golden then also holds the decode with
    // added tokens as their text, which is what retort gives (see gen_golden.py).
    const std::string decoded = g.value("decode_added_as_text", g["decode"].get<std::string>());
    EXPECT_EQ(ids_str(tok.encode(c.text, /*parse_special=*/true)), ids_str(ids));
    EXPECT_EQ(ids_str(tok.encode(c.text, /*parse_special=*/false)), ids_str(ids_raw));
    if (c.valid) {
      EXPECT_EQ(tok.decode(ids), decoded);
      if (!g.contains("decode_added_as_text"))
        EXPECT_EQ(tok.decode(ids, /*skip_special=*/true), g["decode_skip"].get<std::string>());
      if (c.text.find("<mask>") == std::string::npos && !normalized)
        EXPECT_EQ(tok.decode(ids), c.text);  // lstrip eats a space
    } else {
      // Invalid input: decode gives back the bytes, less any byte the vocabulary has no token for
      // (SmolLM2 lacks 21, e.g. 0xFF; HF drops those too).
      std::string kept;
      for (char b : c.text) {
        if (!tok.encode(std::string(1, b), false).empty()) kept += b;
      }
      EXPECT_EQ(tok.decode(ids), kept);
    }
    // Streaming decode equals HF's lossy decode (U+FFFD for bytes that never complete).
    StreamDecoder sd(tok);
    std::string streamed;
    for (int32_t id : ids) streamed += sd.push(id);
    streamed += sd.flush();
    EXPECT_EQ(streamed, decoded);
  }
}

}  // namespace

class SmolLM2 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    json_tok_ = new Tokenizer(
        Tokenizer::from_hf_json(kDir + "/smollm2/tokenizer.json", kDir + "/smollm2/tokenizer_config.json"));
    if (std::filesystem::exists(model_path())) {
      gguf_ = new GgufFile(GgufFile::open(model_path()));
      gguf_tok_ = new Tokenizer(Tokenizer::from_gguf(*gguf_));
    }
  }
  static void TearDownTestSuite() {
    delete json_tok_;
    delete gguf_tok_;
    delete gguf_;
  }
  void need_gguf() {
    if (!gguf_tok_) GTEST_SKIP() << "default model not found at " << model_path() << " (run scripts/setup.sh)";
  }
  static Tokenizer* json_tok_;
  static Tokenizer* gguf_tok_;
  static GgufFile* gguf_;
};
Tokenizer* SmolLM2::json_tok_ = nullptr;
Tokenizer* SmolLM2::gguf_tok_ = nullptr;
GgufFile* SmolLM2::gguf_ = nullptr;

TEST_F(SmolLM2, JsonMatchesHfGolden) { check_golden(*json_tok_, "smollm2", false); }

TEST_F(SmolLM2, GgufMatchesHfGolden) {
  need_gguf();
  check_golden(*gguf_tok_, "smollm2", false);
}

TEST_F(SmolLM2, GgufAndJsonAgree) {
  need_gguf();
  const Tokenizer& g = *gguf_tok_;
  const Tokenizer& j = *json_tok_;
  EXPECT_EQ(g.n_vocab(), 49152);
  EXPECT_EQ(g.n_vocab(), j.n_vocab());
  EXPECT_EQ(g.hash(), j.hash());
  EXPECT_EQ(g.pre_tokenizer_name(), "smollm");
  EXPECT_EQ(j.pre_tokenizer_name(), "smollm");
  EXPECT_EQ(g.bos_id(), std::optional<int32_t>(1));
  EXPECT_EQ(g.eos_id(), std::optional<int32_t>(2));
  EXPECT_EQ(g.bos_id(), j.bos_id());
  EXPECT_EQ(g.eos_id(), j.eos_id());
  EXPECT_FALSE(g.add_bos_token());
  EXPECT_EQ(g.chat_template(), j.chat_template());
  EXPECT_NE(g.chat_template().find("<|im_start|>"), std::string::npos);
  for (int32_t id = 0; id < g.n_vocab(); ++id) {
    ASSERT_EQ(g.token_text(id), j.token_text(id)) << id;
    ASSERT_EQ(g.is_special(id), j.is_special(id)) << id;
  }
}

TEST_F(SmolLM2, Vocabulary) {
  const Tokenizer& t = *json_tok_;
  EXPECT_EQ(t.token_id("<|im_start|>"), std::optional<int32_t>(1));
  EXPECT_EQ(t.token_id("<|im_end|>"), std::optional<int32_t>(2));
  EXPECT_TRUE(t.is_special(0));
  EXPECT_FALSE(t.is_special(t.token_id("Ġthe").value()));
  EXPECT_EQ(t.token_bytes(t.token_id("Ġthe").value()), " the");
  EXPECT_EQ(t.token_text(t.token_id("Ġthe").value()), "Ġthe");
  EXPECT_EQ(t.token_bytes(1), "<|im_start|>");
  EXPECT_FALSE(t.token_id("no such token").has_value());
  const auto eog = t.eog_ids();
  EXPECT_EQ(eog.front(), 2);  // eos first
  EXPECT_NE(std::find(eog.begin(), eog.end(), 0), eog.end());  // <|endoftext|>
  EXPECT_THROW(t.decode({t.n_vocab()}), Error);
  EXPECT_THROW(t.decode({-1}), Error);
  EXPECT_THROW(t.token_bytes(t.n_vocab()), Error);
  // add_bos is a request; SmolLM2 is not configured to add BOS, so nothing is added.
  EXPECT_EQ(t.encode("hi", true, true), t.encode("hi", true, false));
  EXPECT_EQ(t.hash().size(), 16u);
}

TEST_F(SmolLM2, StreamHoldsPartialCharacters) {
  const Tokenizer& t = *json_tok_;
  // "😀" is 4 bytes; SmolLM2 has no single token for it, so it arrives over several tokens.
  const std::string text = "a😀你好🇺🇸👨‍👩‍👧";
  const auto ids = t.encode(text);
  StreamDecoder sd(t);
  std::string all;
  for (int32_t id : ids) {
    const std::string piece = sd.push(id);
    // Every piece handed out is complete UTF-8 (never a fragment).
    for (size_t i = 0; i < piece.size();) {
      const auto b = static_cast<unsigned char>(piece[i]);
      const size_t n = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
      ASSERT_LE(i + n, piece.size());
      i += n;
    }
    all += piece;
  }
  all += sd.flush();
  EXPECT_EQ(all, text);
  // A sequence cut short: held, then U+FFFD at flush.
  StreamDecoder cut(t);
  const auto half = t.encode(std::string("\xF0\x9F\x98", 3));
  std::string out;
  for (int32_t id : half) out += cut.push(id);
  EXPECT_EQ(out, "");
  EXPECT_EQ(cut.flush(), "\xEF\xBF\xBD");
  // skip_special drops special tokens.
  StreamDecoder skip(t, /*skip_special=*/true);
  EXPECT_EQ(skip.push(1), "");
}

TEST_F(SmolLM2, RandomBytesNeverCrashAndRoundTrip) {
  const Tokenizer& t = *json_tok_;
  uint64_t x = 88172645463325252ull;  // xorshift64
  for (int rep = 0; rep < 300; ++rep) {
    std::string s;
    const int len = rep % 40;
    for (int k = 0; k < len; ++k) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      // Bias towards bytes that matter: ASCII, UTF-8 leads and continuations.
      const int pick = static_cast<int>(x % 4);
      s += static_cast<char>(pick == 0 ? 0x20 + (x >> 8) % 95 : pick == 1 ? 0x80 + (x >> 8) % 64 : (x >> 8) % 256);
    }
    std::string kept;
    for (char b : s)
      if (!t.encode(std::string(1, b), false).empty()) kept += b;
    EXPECT_EQ(t.decode(t.encode(s, false)), kept);
  }
}

TEST(SyntheticLlama3, JsonMatchesHfGolden) {
  const auto t = Tokenizer::from_hf_json(kDir + "/llama3/tokenizer.json");
  EXPECT_EQ(t.pre_tokenizer_name(), "llama3");
  check_golden(t, "llama3", false);
  // The post-processor adds <|begin_of_text|>.
  ASSERT_TRUE(t.bos_id().has_value());
  EXPECT_TRUE(t.add_bos_token());
  const auto plain = t.encode("hello");
  auto with_bos = t.encode("hello", true, true);
  ASSERT_EQ(with_bos.size(), plain.size() + 1);
  EXPECT_EQ(with_bos[0], *t.token_id("<|begin_of_text|>"));
  const auto eog = t.eog_ids();
  EXPECT_NE(std::find(eog.begin(), eog.end(), *t.token_id("<|eot_id|>")), eog.end());
}

TEST(SyntheticLlama3, GgufMatchesHfGolden) {
  const auto f = GgufFile::open(kDir + "/llama3/tokenizer.gguf");
  const auto t = Tokenizer::from_gguf(f);
  EXPECT_EQ(t.pre_tokenizer_name(), "llama3");
  check_golden(t, "llama3", false);
  EXPECT_EQ(t.hash(), Tokenizer::from_hf_json(kDir + "/llama3/tokenizer.json").hash());
  EXPECT_TRUE(t.add_bos_token());
  EXPECT_EQ(t.eos_id(), t.token_id("<|end_of_text|>"));
  // Non-special added token: split out even when special parsing is off.
  const int32_t tag = *t.token_id("[[TAG]]");
  EXPECT_FALSE(t.is_special(tag));
  EXPECT_TRUE(t.is_added(tag));
  EXPECT_EQ(t.encode("[[TAG]]", false), std::vector<int32_t>{tag});
}

TEST(SyntheticQwen2, JsonMatchesHfGolden) {
  const auto t = Tokenizer::from_hf_json(kDir + "/qwen2/tokenizer.json");
  EXPECT_EQ(t.pre_tokenizer_name(), "qwen2");
  check_golden(t, "qwen2", false);
  EXPECT_FALSE(t.add_bos_token());
}

// Qwen2's real tokenizer.json has "normalizer": {"type": "NFC"}; qwen2_nfc is the synthetic qwen2
// with it, plus a normalized added token "résumé" (matched in the NFC text).
TEST(SyntheticQwen2, NfcJsonMatchesHfGolden) {
  const auto t = Tokenizer::from_hf_json(kDir + "/qwen2_nfc/tokenizer.json");
  check_golden(t, "qwen2_nfc", false, /*normalized=*/true);
  const int32_t resume = *t.token_id("résumé");
  EXPECT_EQ(t.encode("re\u0301sume\u0301"), std::vector<int32_t>{resume});  // decomposed input, composed token
  EXPECT_EQ(t.encode("r\u00e9sum\u00e9"), std::vector<int32_t>{resume});
  // NFC composes jamo, so both spellings of 각 give the same ids.
  EXPECT_EQ(t.encode("\u1100\u1161\u11a8"), t.encode("\uac01"));
  EXPECT_NE(Tokenizer::from_hf_json(kDir + "/qwen2/tokenizer.json").encode("\u1100\u1161\u11a8"), t.encode("\uac01"));
}

// GGUF has no normalizer field; pre "qwen2" comes from Qwen2's tokenizer.json, which has NFC, so
// the GGUF tokenizer normalizes too and matches the NFC golden.
TEST(SyntheticQwen2, GgufMatchesHfGolden) {
  const auto f = GgufFile::open(kDir + "/qwen2/tokenizer.gguf");
  const auto t = Tokenizer::from_gguf(f);
  EXPECT_EQ(t.pre_tokenizer_name(), "qwen2");
  check_golden(t, "qwen2_nfc", /*skip_lstrip=*/true, /*normalized=*/true);
  json j = json::parse(read_file(kDir + "/qwen2/tokenizer.json"));
  EXPECT_NE(t.hash(), Tokenizer::from_hf_json(kDir + "/qwen2/tokenizer.json").hash());  // the normalizer counts
  j["normalizer"] = json::parse(R"({"type": "NFC"})");
  const std::string p = (std::filesystem::temp_directory_path() /
                         ("retort_test_tokenizer_qwen2_nfc_" + std::to_string(::getpid()) + ".json")).string();
  write_file_atomic(p, j.dump());
  EXPECT_EQ(t.hash(), Tokenizer::from_hf_json(p).hash());
  std::filesystem::remove(p);
}

// ---- bad input -------------------------------------------------------------------------------

namespace {

std::string tmp_file(const std::string& name, const std::string& content) {
  const auto dir = std::filesystem::temp_directory_path() / ("retort_test_tokenizer_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string p = (dir / name).string();
  write_file_atomic(p, content);
  return p;
}

// The error names the file and contains `field`.
void expect_error(const std::string& path, const std::string& field) {
  try {
    Tokenizer::from_hf_json(path);
    ADD_FAILURE() << "no error for " << path;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(field), std::string::npos) << msg;
  }
}

json small_bpe() {
  return json::parse(R"({
    "added_tokens": [{"id": 5, "content": "<|x|>", "special": true}],
    "normalizer": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3, "c": 4}, "merges": ["a b"]}
  })");
}

}  // namespace

TEST(TokenizerErrors, BadTokenizerJson) {
  expect_error(tmp_file("notjson.json", "{ this is not json"), "not valid JSON");
  json j = small_bpe();
  j["model"]["type"] = "WordPiece";
  expect_error(tmp_file("wordpiece.json", j.dump()), "model.type");
  j["model"]["type"] = "Unigram";
  expect_error(tmp_file("unigram.json", j.dump()), "Unigram");
  j = small_bpe();
  j["model"].erase("merges");
  expect_error(tmp_file("nomerges.json", j.dump()), "model.merges");
  j = small_bpe();
  j.erase("model");
  expect_error(tmp_file("nomodel.json", j.dump()), "model");
  j = small_bpe();
  j["normalizer"] = json::parse(R"({"type": "NFKC"})");
  expect_error(tmp_file("nfkc.json", j.dump()), "normalizer.type is \"NFKC\"");
  j["normalizer"] = json::parse(R"({"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}]})");
  expect_error(tmp_file("lowercase.json", j.dump()), "normalizer.normalizers[1].type is \"Lowercase\"");
  j["normalizer"] = json::parse(R"({"type": "Sequence"})");
  expect_error(tmp_file("seqnolist.json", j.dump()), "normalizer.normalizers is missing");
  j = small_bpe();
  j["pre_tokenizer"] = json::parse(R"({"type": "Metaspace", "replacement": "▁"})");
  expect_error(tmp_file("metaspace.json", j.dump()), "pre_tokenizer.type");
  j = small_bpe();
  j["pre_tokenizer"] = json::parse(R"({"type": "Whitespace"})");
  expect_error(tmp_file("whitespace.json", j.dump()), "Whitespace");
  j = small_bpe();
  j["pre_tokenizer"] = json::parse(R"({"type": "Digits", "individual_digits": true})");
  expect_error(tmp_file("nobytelevel.json", j.dump()), "ByteLevel");
  j = small_bpe();
  j["model"]["byte_fallback"] = true;
  expect_error(tmp_file("bytefallback.json", j.dump()), "byte_fallback");
  j = small_bpe();
  j["model"]["merges"] = json::parse(R"(["a c"])");
  expect_error(tmp_file("badmerge.json", j.dump()), "merge 0");
  j = small_bpe();
  j["model"]["merges"] = json::parse(R"(["abc"])");
  expect_error(tmp_file("badmerge2.json", j.dump()), "model.merges[0]");
  j = small_bpe();
  j["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]})");
  expect_error(tmp_file("badregex.json", j.dump()), "regex");
  EXPECT_THROW(Tokenizer::from_hf_json("/nonexistent/tokenizer.json"), Error);
}

TEST(TokenizerErrors, SmallJsonWorks) {
  // Hand-checkable: "ab" merges, "c" stays, special <|x|> splits out.
  const auto t = Tokenizer::from_hf_json(tmp_file("small.json", small_bpe().dump()));
  EXPECT_EQ(t.encode("abc"), (std::vector<int32_t>{2, 4}));
  EXPECT_EQ(t.encode("ab<|x|>c"), (std::vector<int32_t>{2, 5, 4}));
  EXPECT_EQ(t.n_vocab(), 6);
  EXPECT_EQ(t.pre_tokenizer_name(), "gpt2");
  // Normalizers NFC and Sequence[NFC] are accepted (same hash); no normalizer hashes differently.
  json j = small_bpe();
  j["normalizer"] = json::parse(R"({"type": "NFC"})");
  const auto n1 = Tokenizer::from_hf_json(tmp_file("nfc.json", j.dump()));
  j["normalizer"] = json::parse(R"({"type": "Sequence", "normalizers": [{"type": "NFC"}]})");
  const auto n2 = Tokenizer::from_hf_json(tmp_file("seqnfc.json", j.dump()));
  EXPECT_EQ(n1.hash(), n2.hash());
  EXPECT_NE(n1.hash(), t.hash());
  EXPECT_EQ(n1.encode("ab<|x|>c"), (std::vector<int32_t>{2, 5, 4}));
}

namespace {

// A minimal GGUF v3 with string/string-array metadata only (layout in src/retort/io/gguf.h).
struct GgufBytes {
  std::string b;
  void u32(uint32_t v) { b.append(reinterpret_cast<const char*>(&v), 4); }
  void u64(uint64_t v) { b.append(reinterpret_cast<const char*>(&v), 8); }
  void str(const std::string& s) {
    u64(s.size());
    b += s;
  }
  void kv_string(const std::string& k, const std::string& v) {
    str(k);
    u32(8);  // STRING
    str(v);
  }
  void kv_strings(const std::string& k, const std::vector<std::string>& v) {
    str(k);
    u32(9);  // ARRAY
    u32(8);  // of STRING
    u64(v.size());
    for (const auto& s : v) str(s);
  }
};

std::string tiny_gguf(const std::string& model, const std::string& pre) {
  GgufBytes g;
  g.b = "GGUF";
  g.u32(3);
  g.u64(0);  // tensors
  g.u64(4);  // kvs
  g.kv_string("tokenizer.ggml.model", model);
  g.kv_string("tokenizer.ggml.pre", pre);
  g.kv_strings("tokenizer.ggml.tokens", {"a", "b", "ab"});
  g.kv_strings("tokenizer.ggml.merges", {"a b"});
  return g.b;
}

void expect_gguf_error(const std::string& bytes, const std::string& needle) {
  const auto f = GgufFile::parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "tiny.gguf");
  try {
    Tokenizer::from_gguf(f);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(TokenizerErrors, BadGguf) {
  expect_gguf_error(tiny_gguf("llama", "default"), "\"llama\"");
  expect_gguf_error(tiny_gguf("bert", "default"), "\"bert\"");
  expect_gguf_error(tiny_gguf("gpt2", "mystery-pre"), "mystery-pre");
  const std::string ok = tiny_gguf("gpt2", "qwen2");
  const auto f = GgufFile::parse(reinterpret_cast<const uint8_t*>(ok.data()), ok.size(), "tiny.gguf");
  const auto t = Tokenizer::from_gguf(f);
  EXPECT_EQ(t.encode("abba"), (std::vector<int32_t>{2, 1, 0}));
  EXPECT_FALSE(t.bos_id().has_value());
}
