// Tests for retort/io/safetensors and retort/io/half.h.
//
// References: the checkpoints and manifest made by the Python `safetensors`/torch in
// tests/data/hf/make_tiny_checkpoints.py (names, dtypes, shapes, first values, float64
// sums), torch's float32 -> fp16/bf16 casts (golden/half_cases.safetensors), and the
// compiler's _Float16 conversions. Corrupt files are built byte by byte below.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include "retort/io/half.h"
#include "retort/io/safetensors.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

namespace fs = std::filesystem;
using namespace retort;

namespace {

const std::string kHf = std::string(RETORT_TEST_DATA) + "/hf";

const nlohmann::json& manifest() {
  static const nlohmann::json m = nlohmann::json::parse(read_file(kHf + "/manifest.json"));
  return m;
}

struct TempDir {
  fs::path path;
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path = fs::temp_directory_path() /
           cat("retort_st_", ::getpid(), "_", info->test_suite_name(), "_", info->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

// Expect fn() to throw retort::Error whose message contains every part.
void expect_error(const std::function<void()>& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "missing \"" << p << "\" in: " << msg;
    return;
  }
  ADD_FAILURE() << "no retort::Error thrown (expected one mentioning \"" << *parts.begin() << "\")";
}

// 8-byte LE length + header + data bytes.
std::vector<uint8_t> make_file(const std::string& header, size_t data_bytes, uint64_t len_override = 0) {
  std::vector<uint8_t> out(8 + header.size() + data_bytes);
  uint64_t n = len_override ? len_override : header.size();
  for (int i = 0; i < 8; i++) out[i] = static_cast<uint8_t>(n >> (8 * i));
  for (size_t i = 0; i < header.size(); i++) out[8 + i] = static_cast<uint8_t>(header[i]);
  for (size_t i = 0; i < data_bytes; i++) out[8 + header.size() + i] = static_cast<uint8_t>(i);
  return out;
}

void expect_parse_error(const std::string& header, size_t data_bytes,
                        std::initializer_list<std::string> parts) {
  std::vector<uint8_t> f = make_file(header, data_bytes);
  std::vector<std::string> all(parts);
  all.push_back("bad.safetensors");  // every message names the file
  try {
    SafetensorsFile::parse(f.data(), f.size(), "bad.safetensors");
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const auto& p : all) EXPECT_NE(msg.find(p), std::string::npos) << "header " << header << ": missing \"" << p << "\" in: " << msg;
    return;
  }
  ADD_FAILURE() << "header " << header << " was accepted";
}

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

}  // namespace

TEST(DType, NamesAndSizes) {
  const std::pair<DType, size_t> all[] = {{DType::F64, 8}, {DType::F32, 4}, {DType::F16, 2},
                                          {DType::BF16, 2}, {DType::I64, 8}, {DType::I32, 4},
                                          {DType::I16, 2}, {DType::I8, 1}, {DType::U8, 1},
                                          {DType::BOOL, 1}};
  for (auto [t, size] : all) {
    EXPECT_EQ(dtype_size(t), size) << dtype_name(t);
    EXPECT_EQ(dtype_from_name(dtype_name(t)), t);
  }
  EXPECT_EQ(dtype_name(DType::BF16), "BF16");
  EXPECT_FALSE(dtype_from_name("F8_E4M3").has_value());
}

TEST(Half, Fp16ToF32MatchesCompilerForAllBitPatterns) {
#ifdef __FLT16_MAX__
  for (uint32_t h = 0; h < 65536; h++) {
    _Float16 x;
    uint16_t hb = static_cast<uint16_t>(h);
    std::memcpy(&x, &hb, 2);
    float want = static_cast<float>(x);
    float got = fp16_to_f32(hb);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << h;
    } else {
      EXPECT_EQ(bits(got), bits(want)) << "half bits " << h;
    }
  }
#else
  GTEST_SKIP() << "compiler has no _Float16 to compare with";
#endif
}

TEST(Half, RoundTripEveryHalfAndBf16) {
  for (uint32_t h = 0; h < 65536; h++) {
    uint16_t hb = static_cast<uint16_t>(h);
    float f = fp16_to_f32(hb);
    if (!std::isnan(f)) {
      EXPECT_EQ(f32_to_fp16(f), hb) << h;
    } else {
      EXPECT_TRUE(std::isnan(fp16_to_f32(f32_to_fp16(f))));
    }
    float g = bf16_to_f32(hb);
    if (!std::isnan(g)) {
      EXPECT_EQ(f32_to_bf16(g), hb) << h;
    } else {
      EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(g))));
    }
  }
}

TEST(Half, F32ToHalfMatchesTorchRounding) {
  // torch's casts: round to nearest even, overflow to inf.
  auto f = SafetensorsFile::open(kHf + "/golden/half_cases.safetensors");
  const auto* in = f.find("f32");
  const auto* h16 = f.find("f16");
  const auto* hb = f.find("bf16");
  ASSERT_TRUE(in && h16 && hb);
  ASSERT_EQ(in->dtype, DType::F32);
  ASSERT_EQ(h16->dtype, DType::F16);
  ASSERT_EQ(hb->dtype, DType::BF16);
  const int64_t n = in->n_elements();
  ASSERT_GT(n, 4000);
  std::vector<float> x = f.read_f32(*in);
  int n_nan = 0, n_sub = 0;
  for (int64_t i = 0; i < n; i++) {
    uint16_t want16, wantb;
    std::memcpy(&want16, f.data(*h16) + 2 * i, 2);
    std::memcpy(&wantb, f.data(*hb) + 2 * i, 2);
    if (std::isnan(x[i])) {
      n_nan++;
      EXPECT_TRUE(std::isnan(fp16_to_f32(f32_to_fp16(x[i]))));
      EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(x[i]))));
      continue;
    }
    if ((want16 & 0x7C00) == 0 && (want16 & 0x3FF) != 0) n_sub++;
    EXPECT_EQ(f32_to_fp16(x[i]), want16) << "i=" << i << " x=" << x[i] << " bits " << std::hex << bits(x[i]);
    EXPECT_EQ(f32_to_bf16(x[i]), wantb) << "i=" << i << " x=" << x[i] << " bits " << std::hex << bits(x[i]);
    // The reverse direction, checked against torch's stored values via the f16 tensor.
    EXPECT_EQ(bits(fp16_to_f32(want16)), bits(fp16_to_f32(f32_to_fp16(x[i]))));
  }
  EXPECT_GT(n_nan, 0);
  EXPECT_GT(n_sub, 5);  // the table exercises subnormal rounding
  // Hand-checked ties: 1 + 2^-11 is halfway between 1 and the next half: rounds to even (1).
  EXPECT_EQ(f32_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);
  EXPECT_EQ(f32_to_fp16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);
  EXPECT_EQ(f32_to_fp16(65520.0f), 0x7C00);
  EXPECT_EQ(f32_to_fp16(65519.0f), 0x7BFF);
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);
}

TEST(SafetensorsGolden, FilesMatchPythonManifest) {
  // Every tensor of every checkpoint file: name, dtype, shape and values as Python read them.
  int n_checked = 0;
  for (const auto& [model, info] : manifest().items()) {
    for (const auto& fname : info["files"]) {
      const std::string path = kHf + "/" + model + "/" + fname.get<std::string>();
      SafetensorsFile f = SafetensorsFile::open(path);
      EXPECT_EQ(f.path(), path);
      std::vector<std::string> want_names;
      for (const auto& [name, t] : info["tensors"].items())
        if (t["file"] == fname) want_names.push_back(name);
      ASSERT_EQ(f.tensors().size(), want_names.size()) << path;
      // Offset order, contiguous from the start of the data section to the end of file.
      uint64_t prev_end = f.tensors().front().begin;
      EXPECT_EQ(prev_end % 8, 0u) << path;
      for (const auto& t : f.tensors()) {
        EXPECT_EQ(t.begin, prev_end) << t.name;
        prev_end = t.end;
      }
      EXPECT_EQ(prev_end, fs::file_size(path));
      for (const auto& name : want_names) {
        const auto& want = info["tensors"][name];
        const SafetensorsTensorInfo* t = f.find(name);
        ASSERT_NE(t, nullptr) << path << " " << name;
        EXPECT_EQ(t->name, name);
        EXPECT_EQ(dtype_name(t->dtype), want["dtype"].get<std::string>()) << name;
        EXPECT_EQ(t->shape, want["shape"].get<std::vector<int64_t>>()) << name;
        std::vector<float> v = f.read_f32(*t);
        ASSERT_EQ(static_cast<int64_t>(v.size()), t->n_elements());
        const auto first8 = want["first8"].get<std::vector<double>>();
        for (size_t i = 0; i < first8.size(); i++)
          EXPECT_EQ(v[i], static_cast<float>(first8[i])) << name << "[" << i << "]";
        double sum = 0, abs_sum = 0;
        for (float x : v) {
          sum += x;
          abs_sum += std::fabs(x);
        }
        EXPECT_NEAR(sum, want["sum"].get<double>(), 1e-12 * abs_sum + 1e-12) << name;
        n_checked++;
      }
    }
  }
  EXPECT_EQ(n_checked, 21 + 26 + 21);
  EXPECT_FALSE(SafetensorsFile::open(kHf + "/tiny-llama/model.safetensors").find("nope"));
}

TEST(SafetensorsGolden, ParityGoldenLayout) {
  // The layout the model parity tests rely on (documented in the generator).
  for (std::string model : {"tiny-llama", "tiny-qwen2", "tiny-mistral"}) {
    auto f = SafetensorsFile::open(kHf + "/golden/" + model + ".safetensors");
    const auto* ids = f.find("input_ids");
    const auto* logits = f.find("logits");
    const auto* greedy = f.find("greedy_ids");
    ASSERT_TRUE(ids && logits && greedy) << model;
    EXPECT_EQ(ids->dtype, DType::I64);
    EXPECT_EQ(ids->shape, (std::vector<int64_t>{3, 24}));
    EXPECT_EQ(logits->dtype, DType::F32);
    EXPECT_EQ(logits->shape, (std::vector<int64_t>{3, 24, 256}));
    EXPECT_EQ(greedy->dtype, DType::I64);
    EXPECT_EQ(greedy->shape, (std::vector<int64_t>{3, 16}));
    EXPECT_EQ(f.metadata().at("model"), model);
    std::vector<int64_t> v(72);
    f.read_i64(*ids, v.data());
    for (int64_t x : v) EXPECT_TRUE(x >= 0 && x < 256);
    // The first greedy token is the argmax of the last position's logits.
    std::vector<float> lg = f.read_f32(*logits);
    std::vector<int64_t> g(48);
    f.read_i64(*greedy, g.data());
    for (int r = 0; r < 3; r++) {
      const float* row = lg.data() + (r * 24 + 23) * 256;
      int best = 0;
      for (int j = 1; j < 256; j++)
        if (row[j] > row[best]) best = j;
      EXPECT_EQ(g[r * 16], best) << model << " row " << r;
    }
    expect_error([&] { f.read_f32(*ids); }, {"input_ids", "I64", "float32"});
    expect_error([&] { f.read_i64(*logits, nullptr); }, {"logits", "F32"});
  }
}

TEST(SafetensorsWrite, RoundTripAllDTypes) {
  TempDir dir;
  const std::string path = dir / "rt.safetensors";
  std::vector<double> f64 = {1.5, -2.25, 1e300};
  std::vector<float> f32 = {0.1f, -3.0f, 7.0f, 1e-30f, 5.0f, 6.0f};
  std::vector<uint16_t> f16 = {f32_to_fp16(1.0f), f32_to_fp16(-0.5f)};
  std::vector<uint16_t> bf = {f32_to_bf16(3.0f), f32_to_bf16(-1.0f / 3.0f), f32_to_bf16(100.0f)};
  std::vector<int64_t> i64 = {INT64_MIN, -1, 0, INT64_MAX};
  std::vector<int32_t> i32 = {-7, 70000};
  std::vector<int16_t> i16 = {-300, 300, 5};
  std::vector<int8_t> i8 = {-128, 127, 0};
  std::vector<uint8_t> u8 = {0, 255, 9, 1, 2};
  std::vector<uint8_t> bl = {1, 0, 1};
  float scalar = 42.0f;
  std::vector<SafetensorsWriteTensor> ts = {
      // Mixed element sizes in the input order: the writer reorders for alignment.
      {"u8", DType::U8, {5}, u8.data(), u8.size()},
      {"f64", DType::F64, {3}, f64.data(), 24},
      {"bf16", DType::BF16, {3, 1}, bf.data(), 6},
      {"f32", DType::F32, {2, 3}, f32.data(), 24},
      {"f16", DType::F16, {2}, f16.data(), 4},
      {"i64", DType::I64, {2, 2}, i64.data(), 32},
      {"i32", DType::I32, {2}, i32.data(), 8},
      {"i16", DType::I16, {3}, i16.data(), 6},
      {"i8", DType::I8, {3}, i8.data(), 3},
      {"bool", DType::BOOL, {3}, bl.data(), 3},
      {"scalar", DType::F32, {}, &scalar, 4},
      {"empty", DType::F32, {0, 4}, nullptr, 0},
  };
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "héllo \"quoted\""}};
  write_safetensors(path, ts, meta);

  auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f.metadata(), meta);
  ASSERT_EQ(f.tensors().size(), ts.size());
  std::string raw = read_file(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = (n << 8) | static_cast<uint8_t>(raw[i]);
  EXPECT_EQ((8 + n) % 8, 0u) << "header padded to 8 bytes";
  EXPECT_EQ(raw[8], '{');
  for (const auto& w : ts) {
    const auto* t = f.find(w.name);
    ASSERT_NE(t, nullptr) << w.name;
    EXPECT_EQ(t->dtype, w.dtype);
    EXPECT_EQ(t->shape, w.shape);
    EXPECT_EQ(t->end - t->begin, w.nbytes);
    EXPECT_EQ(t->begin % dtype_size(t->dtype), 0u) << w.name << " naturally aligned";
    if (w.nbytes) {
      EXPECT_EQ(std::memcmp(f.data(*t), w.data, w.nbytes), 0) << w.name;
    }
  }
  EXPECT_EQ(f.find("scalar")->n_elements(), 1);
  EXPECT_EQ(f.find("empty")->n_elements(), 0);
  EXPECT_EQ(f.read_f32(*f.find("f64")), (std::vector<float>{1.5f, -2.25f, INFINITY}));
  EXPECT_EQ(f.read_f32(*f.find("f16")), (std::vector<float>{1.0f, -0.5f}));
  EXPECT_EQ(f.read_f32(*f.find("bf16"))[0], 3.0f);
  std::vector<int64_t> iv(5);  // the largest integer tensor below (u8) has 5 elements
  f.read_i64(*f.find("i64"), iv.data());
  EXPECT_EQ(std::vector<int64_t>(iv.begin(), iv.begin() + 4), i64);
  f.read_i64(*f.find("i16"), iv.data());
  EXPECT_EQ(iv[0], -300);
  f.read_i64(*f.find("i8"), iv.data());
  EXPECT_EQ(iv[0], -128);
  f.read_i64(*f.find("u8"), iv.data());
  EXPECT_EQ(iv[1], 255);

  // Deterministic bytes; overwrite in place leaves no temp files behind.
  write_safetensors(path, ts, meta);
  EXPECT_EQ(read_file(path), raw);
  int n_files = 0;
  for (const auto& e : fs::directory_iterator(dir.path)) n_files += e.is_regular_file();
  EXPECT_EQ(n_files, 1);

  // Header-only file: no tensors, no metadata.
  write_safetensors(dir / "empty.safetensors", {});
  auto e = SafetensorsFile::open(dir / "empty.safetensors");
  EXPECT_TRUE(e.tensors().empty());
  EXPECT_TRUE(e.metadata().empty());
}

TEST(SafetensorsWrite, RejectsBadArgumentsAndKeepsOldFile) {
  TempDir dir;
  const std::string path = dir / "w.safetensors";
  float v[4] = {1, 2, 3, 4};
  write_safetensors(path, {{"a", DType::F32, {4}, v, 16}});
  const std::string before = read_file(path);
  expect_error([&] { write_safetensors(path, {{"a", DType::F32, {3}, v, 16}}); },
               {path, "\"a\"", "needs 12 bytes", "16"});
  expect_error([&] { write_safetensors(path, {{"a", DType::F32, {2}, v, 8}, {"a", DType::F32, {2}, v, 8}}); },
               {"given twice"});
  expect_error([&] { write_safetensors(path, {{"__metadata__", DType::F32, {1}, v, 4}}); }, {"reserved"});
  expect_error([&] { write_safetensors(path, {{"n", DType::F32, {-1}, v, 4}}); }, {"negative"});
  expect_error([&] { write_safetensors(dir / "no/such/dir/x.safetensors", {{"a", DType::F32, {4}, v, 16}}); },
               {"no/such/dir/x.safetensors", "cannot create"});
  EXPECT_EQ(read_file(path), before);
}

TEST(SafetensorsParse, AcceptsEdgeCases) {
  {
    auto b = make_file("{}", 0);
    EXPECT_TRUE(SafetensorsFile::parse(b.data(), b.size(), "x").tensors().empty());
  }
  {
    // Trailing padding spaces, null metadata, zero-size tensor sharing an offset, and
    // tensors listed out of offset order (tensors() sorts them).
    auto b = make_file(
        R"({"b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}, "__metadata__": null,)"
        R"( "z": {"dtype": "I8", "shape": [0], "data_offsets": [4, 4]},)"
        R"( "a": {"dtype": "U8", "shape": [2, 2], "data_offsets": [0, 4]}}   )",
        8);
    auto f = SafetensorsFile::parse(b.data(), b.size(), "x");
    ASSERT_EQ(f.tensors().size(), 3u);
    EXPECT_EQ(f.tensors()[0].name, "a");
    EXPECT_EQ(f.tensors()[2].name, "b");
    EXPECT_EQ(f.find("a")->begin, 8 + b.size() - 16);
    EXPECT_EQ(f.find("b")->n_elements(), 1);
  }
}

TEST(SafetensorsParse, RejectsCorruptFiles) {
  const std::string ok_entry = R"("t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]})";
  // Truncated before or inside the header.
  for (size_t size : {0, 1, 7}) {
    std::vector<uint8_t> b(size, 0);
    expect_error([&] { SafetensorsFile::parse(b.data(), b.size(), "bad.safetensors"); },
                 {"bad.safetensors", "shorter than the 8-byte"});
  }
  {
    auto b = make_file("{" + ok_entry + "}", 8, 1000);
    expect_error([&] { SafetensorsFile::parse(b.data(), b.size(), "bad.safetensors"); },
                 {"bad.safetensors", "header length 1000", "past the end"});
    auto c = make_file("{}", 0, 1ull << 40);
    expect_error([&] { SafetensorsFile::parse(c.data(), c.size(), "bad.safetensors"); },
                 {"bad.safetensors", "absurd"});
  }
  expect_parse_error("{\"t\": ", 0, {"not valid JSON"});
  expect_parse_error("", 0, {"not valid JSON"});
  expect_parse_error("\x01\x02garbage", 0, {"not valid JSON"});
  expect_parse_error("[1, 2]", 0, {"must be a JSON object", "array"});
  expect_parse_error(R"({"t": 3})", 0, {"\"t\"", "must be an object"});
  expect_parse_error(R"({"t": {"shape": [2], "data_offsets": [0, 8]}})", 8, {"\"t\"", "missing \"dtype\""});
  expect_parse_error(R"({"t": {"dtype": "F32", "data_offsets": [0, 8]}})", 8, {"\"t\"", "missing \"shape\""});
  expect_parse_error(R"({"t": {"dtype": "F32", "shape": [2]}})", 8, {"\"t\"", "missing \"data_offsets\""});
  expect_parse_error(R"({"t": {"dtype": 7, "shape": [2], "data_offsets": [0, 8]}})", 8, {"\"dtype\" must be a string"});
  expect_parse_error(R"({"t": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}})", 8, {"\"shape\" must be an array"});
  expect_parse_error(R"({"t": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}})", 8, {"must hold integers"});
  expect_parse_error(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})", 8, {"[begin, end]"});
  expect_parse_error(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": {"a": 1}}})", 8, {"[begin, end]"});
  expect_parse_error(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": ["0", 8]}})", 8, {"non-negative integers"});
  expect_parse_error(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}})", 8, {"non-negative integers"});
  expect_parse_error(R"({"t": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}})", 8,
                     {"\"t\"", "unsupported dtype \"F8_E4M3\"", "BF16"});
  expect_parse_error(R"({"t": {"dtype": "F32", "shape": [-2, 1], "data_offsets": [0, 8]}})", 8,
                     {"\"t\"", "negative dimension -2"});
  expect_parse_error(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", 8, {"\"t\"", "reversed"});
  expect_parse_error(R"({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8,
                     {"\"t\"", "outside the data section (8 bytes)"});
  expect_parse_error(R"({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8,
                     {"\"t\"", "needs 12 bytes", "span 8"});
  expect_parse_error(R"({"t": {"dtype": "F32", "shape": [4611686018427387904, 8], "data_offsets": [0, 8]}})", 8,
                     {"\"t\"", "too large"});
  expect_parse_error(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                     R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                     16, {"\"a\" and \"b\" overlap"});
  expect_parse_error(R"({"__metadata__": {"k": 1}})", 0, {"__metadata__", "\"k\" must be a string"});
  expect_parse_error(R"({"__metadata__": ["k"]})", 0, {"__metadata__", "must be an object"});
}

TEST(SafetensorsParse, OpenNamesThePath) {
  TempDir dir;
  const std::string path = dir / "trunc.safetensors";
  auto b = make_file(R"({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 16);
  b.resize(b.size() - 3);  // a truncated download
  write_file_atomic(path, std::string_view(reinterpret_cast<const char*>(b.data()), b.size()));
  expect_error([&] { SafetensorsFile::open(path); }, {path, "\"t\"", "outside the data section"});
  write_file_atomic(dir / "empty.safetensors", "");
  expect_error([&] { SafetensorsFile::open(dir / "empty.safetensors"); }, {"empty.safetensors", "0 bytes"});
  expect_error([&] { SafetensorsFile::open(dir / "missing.safetensors"); }, {"missing.safetensors"});
}
