// Tests for retort/distill/signal_store: write/read round trip, a golden store written by
// Python's `safetensors` package (tests/data/store/make_golden.py, expected.json holds the
// same numbers as JSON), damaged stores (corrupt/truncated shards, sha256 mismatch, bad
// manifest, bad values) and crash/resume behaviour of the writer.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include "retort/distill/signal_store.h"
#include "retort/io/safetensors.h"
#include "retort/protect/keys.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

namespace fs = std::filesystem;
using namespace retort;
using nlohmann::json;

namespace {

const std::string kStoreData = std::string(RETORT_TEST_DATA) + "/store";

struct TempDir {
  fs::path path;
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path = fs::temp_directory_path() / cat("retort_store_", ::getpid(), "_", info->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string str(const std::string& sub = "") const { return sub.empty() ? path.string() : (path / sub).string(); }
};

// A sample as plain vectors (what add() takes).
struct Sample {
  int64_t id;
  std::vector<int32_t> tokens;
  int64_t prompt_len;
  std::vector<float> token_logprob;
  std::vector<int32_t> topk_ids;
  std::vector<float> topk_logprobs;
  std::vector<float> tail;
};

Sample random_sample(std::mt19937& rng, int64_t id, int64_t n_vocab, int64_t k) {
  std::uniform_int_distribution<int> len(1, 9), tok(0, int(n_vocab) - 1);
  std::uniform_real_distribution<float> lp(-8.f, 0.f), u(0.f, 1.f);
  Sample s;
  s.id = id;
  s.prompt_len = len(rng);
  const int64_t c = len(rng);
  for (int64_t i = 0; i < s.prompt_len + c; ++i) s.tokens.push_back(tok(rng));
  for (int64_t i = 0; i < c; ++i) {
    s.token_logprob.push_back(lp(rng));
    s.tail.push_back(u(rng));
    for (int64_t q = 0; q < k; ++q) {
      s.topk_ids.push_back(tok(rng));
      s.topk_logprobs.push_back(lp(rng));
    }
  }
  return s;
}

void add(SignalStoreWriter& w, const Sample& s) {
  w.add(s.id, s.tokens, s.prompt_len, s.token_logprob, s.topk_ids, s.topk_logprobs, s.tail);
}

StoreManifest test_manifest(int64_t n_vocab = 100, int64_t k = 4) {
  StoreManifest m;
  m.mode = "generate";
  m.teacher = {{"spec", "test"}, {"path", "/x.gguf"}, {"format", "gguf"}, {"sha256", std::string(64, 'a')}};
  m.tokenizer_hash = "00112233aabbccdd";
  m.n_vocab = n_vocab;
  m.k = k;
  m.generation = {{"temperature", 0.7}, {"max_tokens", 9}, {"samples_per_prompt", 2}, {"seed", 5}};
  m.prompts = {{"path", "/p.jsonl"}, {"sha256", std::string(64, 'b')}, {"count", 10}};
  return m;
}

template <class T>
std::vector<T> span_vec(const T* p, int64_t n) {
  return std::vector<T>(p, p + n);
}

void expect_equal(const SignalSample& got, const Sample& want, int64_t k) {
  EXPECT_EQ(got.id, want.id);
  EXPECT_EQ(span_vec(got.tokens, got.n_tokens), want.tokens);
  EXPECT_EQ(got.prompt_len, want.prompt_len);
  const int64_t c = got.completion_len();
  EXPECT_EQ(span_vec(got.token_logprob, c), want.token_logprob);
  EXPECT_EQ(span_vec(got.topk_ids, c * k), want.topk_ids);
  EXPECT_EQ(span_vec(got.topk_logprobs, c * k), want.topk_logprobs);
  EXPECT_EQ(span_vec(got.tail_mass, c), want.tail);
}

// Expects `fn` to throw retort::Error whose message contains every one of `parts`.
template <class Fn>
void expect_error(Fn fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << "missing \"" << p << "\" in: " << e.what();
  }
}

std::string hex_sha256(const std::string& bytes) {
  auto d = sha256(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  std::string s;
  for (uint8_t b : d) s += cat(std::hex, (b >> 4), (b & 15));
  return s;
}

// Copies the Python-written golden store into `dst`.
void copy_golden(const std::string& dst) {
  fs::create_directories(dst);
  for (const auto& e : fs::directory_iterator(kStoreData + "/golden"))
    fs::copy_file(e.path(), fs::path(dst) / e.path().filename(), fs::copy_options::overwrite_existing);
  for (const auto& e : fs::directory_iterator(dst))
    fs::permissions(e.path(), fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::add);
}

// Rewrites manifest.json's bytes/sha256 for shard `i` to match the file as it is now (so a
// damaged shard gets past the checksum and the structural checks are what must catch it).
void rehash_shard(const std::string& dir, int i) {
  json m = json::parse(read_file(dir + "/manifest.json"));
  std::string file = m["shards"][i]["file"];
  std::string bytes = read_file(dir + "/" + file);
  m["shards"][i]["bytes"] = bytes.size();
  m["shards"][i]["sha256"] = hex_sha256(bytes);
  write_file_atomic(dir + "/manifest.json", m.dump(2));
}

// Overwrites `n` bytes at the start of tensor `name`'s data in a shard.
void patch_tensor(const std::string& path, const std::string& name, const void* data, size_t n) {
  uint64_t begin;
  {
    SafetensorsFile f = SafetensorsFile::open(path);
    begin = f.find(name)->begin;
  }
  std::fstream fsx(path, std::ios::in | std::ios::out | std::ios::binary);
  fsx.seekp(static_cast<std::streamoff>(begin));
  fsx.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
}

}  // namespace

TEST(SignalStore, RoundTrip) {
  TempDir tmp;
  const std::string dir = tmp.str("store");
  std::mt19937 rng(7);
  std::vector<Sample> samples;
  for (int64_t id : {0, 1, 2, 5, 4, 3, 9}) samples.push_back(random_sample(rng, id, 100, 4));
  {
    SignalStoreWriter w(dir, test_manifest());
    EXPECT_TRUE(w.done_ids().empty());
    for (int i = 0; i < 3; ++i) add(w, samples[i]);
    EXPECT_EQ(w.pending_samples(), 3);
    w.flush();
    EXPECT_EQ(w.pending_samples(), 0);
    w.flush();  // nothing pending: no empty shard
    for (int i = 3; i < 7; ++i) add(w, samples[i]);
    w.finish();
    EXPECT_EQ(w.done_ids(), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 9}));
  }
  SignalStore st = SignalStore::open(dir);
  ASSERT_EQ(st.n_samples(), 7);
  int64_t scored = 0;
  for (int i = 0; i < 7; ++i) {
    expect_equal(st.sample(i), samples[i], 4);
    scored += st.sample(i).completion_len();
  }
  EXPECT_EQ(st.n_scored(), scored);
  const StoreManifest& m = st.manifest();
  EXPECT_TRUE(m.complete);
  ASSERT_EQ(m.shards.size(), 2u);
  EXPECT_EQ(m.shards[0].file, "shard-00000.safetensors");
  EXPECT_EQ(m.shards[0].samples, 3);
  EXPECT_EQ(m.shards[1].samples, 4);
  EXPECT_EQ(m.generation, test_manifest().generation);
  EXPECT_EQ(m.teacher, test_manifest().teacher);
  EXPECT_EQ(m.k, 4);
  EXPECT_THROW(st.sample(7), Error);
  // The manifest round-trips through JSON.
  StoreManifest again = StoreManifest::from_json(m.to_json(), "x");
  EXPECT_EQ(again.to_json(), m.to_json());
  // The shard is plain safetensors with the documented tensors.
  SafetensorsFile f = SafetensorsFile::open(dir + "/shard-00000.safetensors");
  int64_t scored0 = 0;
  for (int i = 0; i < 3; ++i) scored0 += st.sample(i).completion_len();
  EXPECT_EQ(f.find("topk_ids")->shape, (std::vector<int64_t>{scored0, 4}));
  EXPECT_EQ(f.find("sample_offsets")->dtype, DType::I64);
  EXPECT_EQ(f.metadata().at("format"), "retort-signal-shard");
}

TEST(SignalStore, GoldenFromPythonSafetensors) {
  const json expected = json::parse(read_file(kStoreData + "/expected.json"));
  SignalStore st = SignalStore::open(kStoreData + "/golden");
  const int64_t k = expected["k"];
  EXPECT_EQ(st.manifest().k, k);
  EXPECT_EQ(st.manifest().n_vocab, expected["n_vocab"].get<int64_t>());
  EXPECT_EQ(st.manifest().shards.size(), 2u);
  EXPECT_FALSE(st.manifest().complete);
  ASSERT_EQ(st.n_samples(), int64_t(expected["samples"].size()));
  int64_t scored = 0;
  for (int64_t i = 0; i < st.n_samples(); ++i) {
    const json& e = expected["samples"][i];
    Sample want;
    want.id = e["id"];
    want.tokens = e["tokens"].get<std::vector<int32_t>>();
    want.prompt_len = e["prompt_len"];
    for (double v : e["token_logprob"]) want.token_logprob.push_back(float(v));
    want.topk_ids = e["topk_ids"].get<std::vector<int32_t>>();
    for (double v : e["topk_logprobs"]) want.topk_logprobs.push_back(float(v));
    for (double v : e["tail_mass"]) want.tail.push_back(float(v));
    SCOPED_TRACE(cat("sample ", i));
    expect_equal(st.sample(i), want, k);
    scored += st.sample(i).completion_len();
  }
  EXPECT_EQ(st.n_scored(), scored);
  EXPECT_EQ(st.sample(2).completion_len(), 0);  // an empty completion is allowed
}

TEST(SignalStore, DamagedStoresAreClearErrors) {
  TempDir tmp;
  auto fresh = [&](const std::string& name) {
    std::string d = tmp.str(name);
    copy_golden(d);
    SignalStore::open(d);  // intact copy opens
    return d;
  };
  {  // one flipped byte in the data: sha256 mismatch names the shard and what to do
    std::string d = fresh("flip");
    std::string s = read_file(d + "/shard-00001.safetensors");
    s[s.size() - 3] ^= 0x40;
    write_file_atomic(d + "/shard-00001.safetensors", s);
    expect_error([&] { SignalStore::open(d); }, {"shard-00001.safetensors", "corrupt", "sha256", "new --out"});
  }
  {  // truncated shard
    std::string d = fresh("trunc");
    std::string s = read_file(d + "/shard-00000.safetensors");
    write_file_atomic(d + "/shard-00000.safetensors", s.substr(0, s.size() / 2));
    expect_error([&] { SignalStore::open(d); }, {"shard-00000.safetensors", "truncated"});
  }
  {  // manifest sha256 edited: mismatch
    std::string d = fresh("sha");
    json m = json::parse(read_file(d + "/manifest.json"));
    m["shards"][0]["sha256"] = std::string(64, 'f');
    write_file_atomic(d + "/manifest.json", m.dump());
    expect_error([&] { SignalStore::open(d); }, {"shard-00000.safetensors", "sha256"});
  }
  {  // missing shard
    std::string d = fresh("missing");
    fs::remove(d + "/shard-00001.safetensors");
    expect_error([&] { SignalStore::open(d); }, {"shard-00001.safetensors", "missing"});
  }
  {  // bad manifest JSON
    std::string d = fresh("json");
    write_file_atomic(d + "/manifest.json", "{\"format\": \"retort-signal-store\", ");
    expect_error([&] { SignalStore::open(d); }, {"manifest.json", "not valid JSON"});
  }
  {  // manifest field of the wrong type / missing
    std::string d = fresh("field");
    json m = json::parse(read_file(d + "/manifest.json"));
    m["k"] = "three";
    write_file_atomic(d + "/manifest.json", m.dump());
    expect_error([&] { SignalStore::open(d); }, {"manifest.json", "\"k\""});
    m.erase("k");
    write_file_atomic(d + "/manifest.json", m.dump());
    expect_error([&] { SignalStore::open(d); }, {"missing field \"k\""});
  }
  {  // a token id outside the vocabulary (checksum updated, so the value check must catch it)
    std::string d = fresh("vocab");
    int32_t bad = 64;
    patch_tensor(d + "/shard-00000.safetensors", "tokens", &bad, sizeof bad);
    rehash_shard(d, 0);
    expect_error([&] { SignalStore::open(d); }, {"shard-00000.safetensors", "tokens[0] = 64", "vocabulary"});
  }
  {  // top-k ids outside the vocabulary
    std::string d = fresh("topk");
    int32_t bad = -1;
    patch_tensor(d + "/shard-00001.safetensors", "topk_ids", &bad, sizeof bad);
    rehash_shard(d, 1);
    expect_error([&] { SignalStore::open(d); }, {"shard-00001.safetensors", "topk_ids[0, 0] = -1"});
  }
  {  // offsets that are not monotone
    std::string d = fresh("offsets");
    int64_t bad[2] = {0, 1000};
    patch_tensor(d + "/shard-00000.safetensors", "sample_offsets", bad, sizeof bad);
    rehash_shard(d, 0);
    expect_error([&] { SignalStore::open(d); }, {"shard-00000.safetensors", "sample_offsets"});
  }
  {  // manifest counts disagree with the shard's shapes
    std::string d = fresh("shape");
    json m = json::parse(read_file(d + "/manifest.json"));
    m["shards"][0]["samples"] = 4;
    write_file_atomic(d + "/manifest.json", m.dump());
    expect_error([&] { SignalStore::open(d); }, {"shard-00000.safetensors", "shape", "sample_offsets"});
  }
  {  // k in the manifest differs from the shards'
    std::string d = fresh("k");
    json m = json::parse(read_file(d + "/manifest.json"));
    m["k"] = 5;
    write_file_atomic(d + "/manifest.json", m.dump());
    expect_error([&] { SignalStore::open(d); }, {"topk_ids", "k 5"});
  }
  {  // not a safetensors file at all (checksum updated)
    std::string d = fresh("garbage");
    write_file_atomic(d + "/shard-00001.safetensors", std::string(64, 'x'));
    rehash_shard(d, 1);
    expect_error([&] { SignalStore::open(d); }, {"shard-00001.safetensors"});
  }
  expect_error([&] { SignalStore::open(tmp.str("nope")); }, {"not a directory"});
  expect_error([&] { SignalStore::open(tmp.str()); }, {"no manifest.json"});
}

TEST(SignalStore, CrashLeavesOnlyWholeShards) {
  TempDir tmp;
  const std::string dir = tmp.str("store");
  std::mt19937 rng(11);
  std::vector<Sample> samples;
  for (int64_t id = 0; id < 6; ++id) samples.push_back(random_sample(rng, id, 100, 4));
  {
    SignalStoreWriter w(dir, test_manifest());
    for (int i = 0; i < 3; ++i) add(w, samples[i]);
    w.flush();
    for (int i = 3; i < 5; ++i) add(w, samples[i]);
    // destroyed without flush: a crash loses samples 3 and 4, nothing else
  }
  // A crash between a shard's rename and the manifest's also leaves an orphan shard file,
  // and a kill -9 during a write leaves a temp file: neither is part of the store.
  write_file_atomic(dir + "/shard-00001.safetensors", "half a shard");
  write_file_atomic(dir + "/shard-00001.safetensors.tmp.99999", "temp");
  {
    SignalStore st = SignalStore::open(dir);
    ASSERT_EQ(st.n_samples(), 3);
    for (int i = 0; i < 3; ++i) expect_equal(st.sample(i), samples[i], 4);
    EXPECT_FALSE(st.manifest().complete);
  }
  {  // resume: done ids, duplicates refused, the orphan is replaced by a real shard
    SignalStoreWriter w(dir, test_manifest());
    EXPECT_EQ(w.done_ids(), (std::vector<int64_t>{0, 1, 2}));
    EXPECT_FALSE(fs::exists(dir + "/shard-00001.safetensors.tmp.99999"));
    expect_error([&] { add(w, samples[1]); }, {"sample 1", "already stored"});
    for (int i = 3; i < 6; ++i) add(w, samples[i]);
    expect_error([&] { add(w, samples[4]); }, {"already stored"});
    w.finish();
  }
  SignalStore st = SignalStore::open(dir);
  ASSERT_EQ(st.n_samples(), 6);
  for (int i = 0; i < 6; ++i) expect_equal(st.sample(i), samples[i], 4);
  EXPECT_TRUE(st.manifest().complete);
}

TEST(SignalStore, ResumeWithOtherSettingsIsRefused) {
  TempDir tmp;
  const std::string dir = tmp.str("store");
  std::mt19937 rng(3);
  {
    SignalStoreWriter w(dir, test_manifest());
    add(w, random_sample(rng, 0, 100, 4));
    w.flush();
  }
  StoreManifest other_k = test_manifest(100, 5);
  expect_error([&] { SignalStoreWriter w(dir, other_k); }, {dir, "k is 4 in the store, 5 now", "new --out"});
  StoreManifest other_temp = test_manifest();
  other_temp.generation["temperature"] = 1.0;
  expect_error([&] { SignalStoreWriter w(dir, other_temp); }, {"generation settings differ", "temperature"});
  StoreManifest other_teacher = test_manifest();
  other_teacher.teacher["sha256"] = std::string(64, 'c');
  expect_error([&] { SignalStoreWriter w(dir, other_teacher); }, {"teacher differs"});
  StoreManifest other_prompts = test_manifest();
  other_prompts.prompts["sha256"] = std::string(64, 'd');
  expect_error([&] { SignalStoreWriter w(dir, other_prompts); }, {"prompts file differs"});
  StoreManifest other_tok = test_manifest();
  other_tok.tokenizer_hash = "ffffffffffffffff";
  expect_error([&] { SignalStoreWriter w(dir, other_tok); }, {"tokenizer differs"});
  StoreManifest wm = test_manifest();
  wm.watermark = {{"scheme", "kgw"}};
  expect_error([&] { SignalStoreWriter w(dir, wm); }, {"watermark settings differ"});
  // The same settings (another spec/path for the same file) resume.
  StoreManifest same = test_manifest();
  same.teacher["spec"] = "moved";
  SignalStoreWriter w(dir, same);
  EXPECT_EQ(w.done_ids(), (std::vector<int64_t>{0}));
  // A non-empty directory that is not a store is never written into.
  fs::create_directories(tmp.str("other"));
  write_file_atomic(tmp.str("other/notes.txt"), "x");
  expect_error([&] { SignalStoreWriter w2(tmp.str("other"), test_manifest()); }, {"not empty", "notes.txt"});
}

TEST(SignalStore, AddChecksShapes) {
  TempDir tmp;
  SignalStoreWriter w(tmp.str("s"), test_manifest(100, 4));
  std::mt19937 rng(5);
  Sample s = random_sample(rng, 0, 100, 4);
  Sample bad = s;
  bad.topk_ids.pop_back();
  expect_error([&] { add(w, bad); }, {"top-k arrays"});
  bad = s;
  bad.tokens[0] = 100;
  expect_error([&] { add(w, bad); }, {"token 100", "vocabulary"});
  bad = s;
  bad.prompt_len = int64_t(s.tokens.size()) + 1;
  expect_error([&] { add(w, bad); }, {"prompt_len"});
  bad = s;
  bad.tail[0] = 1.5f;
  expect_error([&] { add(w, bad); }, {"tail mass"});
  EXPECT_EQ(w.pending_samples(), 0);
}
