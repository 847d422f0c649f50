// Tests for retort/io/gguf and retort/io/ggml_quants against fixtures written by the Python
// `gguf` package (tests/data/gguf/make_fixtures.py), plus corruption cases built here.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <sys/stat.h>

#include "retort/io/gguf.h"
#include "retort/io/half.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

using namespace retort;

namespace {

const std::string kDir = std::string(RETORT_TEST_DATA) + "/gguf/";

std::vector<float> read_f32_file(const std::string& path) {
  std::string s = read_file(path);
  std::vector<float> v(s.size() / 4);
  std::memcpy(v.data(), s.data(), v.size() * 4);
  return v;
}

// Expect `fn` to throw retort::Error whose message contains every one of `needles`.
template <class Fn>
void expect_error(Fn&& fn, std::initializer_list<std::string_view> needles) {
  try {
    fn();
    ADD_FAILURE() << "no exception; expected one mentioning '" << *needles.begin() << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (std::string_view n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "message: " << msg << "\nmissing: " << n;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

GgufFile parse_bytes(const std::string& b, const std::string& name = "mem.gguf") {
  return GgufFile::parse(reinterpret_cast<const uint8_t*>(b.data()), b.size(), name);
}

// ---- a tiny GGUF writer for hand-made (and broken) files ----
struct W {
  std::string b;
  W& u32(uint32_t v) { b.append(reinterpret_cast<const char*>(&v), 4); return *this; }
  W& u64(uint64_t v) { b.append(reinterpret_cast<const char*>(&v), 8); return *this; }
  W& f32(float v) { b.append(reinterpret_cast<const char*>(&v), 4); return *this; }
  W& str(std::string_view s) { u64(s.size()); b.append(s); return *this; }
};
std::string kv_u32(std::string_view key, uint32_t v) { return W().str(key).u32(4).u32(v).b; }
std::string kv_str(std::string_view key, std::string_view v) { return W().str(key).u32(8).str(v).b; }

struct TI {
  std::string name;
  std::vector<uint64_t> ne;
  uint32_t type;
  uint64_t offset;
};

std::string build(const std::vector<std::string>& kvs, const std::vector<TI>& tis, const std::string& data,
                  uint32_t version = 3, size_t align = 32) {
  W w;
  w.b = "GGUF";
  w.u32(version).u64(tis.size()).u64(kvs.size());
  for (const auto& kv : kvs) w.b += kv;
  for (const auto& t : tis) {
    w.str(t.name).u32(static_cast<uint32_t>(t.ne.size()));
    for (uint64_t d : t.ne) w.u64(d);
    w.u32(t.type).u64(t.offset);
  }
  while (w.b.size() % align) w.b.push_back('\0');
  return w.b + data;
}

// A valid little file: two F32 tensors of 4 and 8 floats, one Q8_0 row of 32.
std::string good_file() {
  std::string data(32 + 32 + 34, '\0');
  for (int i = 0; i < 4; ++i) {
    float v = static_cast<float>(i);
    std::memcpy(&data[4 * i], &v, 4);
  }
  const uint16_t one = 0x3C00;  // fp16 1.0
  std::memcpy(&data[64], &one, 2);
  for (int i = 0; i < 32; ++i) data[66 + i] = static_cast<char>(i - 16);
  return build({kv_str("general.architecture", "llama"), kv_u32("llama.block_count", 2)},
               {{"a", {4}, 0, 0}, {"b", {4, 2}, 0, 32}, {"q", {32}, 8, 64}}, data);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Types and dequantization

TEST(GgmlTypes, NamesAndBlocks) {
  EXPECT_EQ(ggml_type_name(12), "Q4_K");
  EXPECT_EQ(ggml_type_name(30), "BF16");
  EXPECT_EQ(ggml_type_name(16), "IQ2_XXS");
  EXPECT_EQ(ggml_type_name(123), "unknown(123)");
  int64_t be = 0, bb = 0;
  ASSERT_TRUE(ggml_type_block(3, &be, &bb));
  EXPECT_EQ(be, 32);
  EXPECT_EQ(bb, 20);
  ASSERT_TRUE(ggml_type_block(14, &be, &bb));
  EXPECT_EQ(be, 256);
  EXPECT_EQ(bb, 210);
  EXPECT_FALSE(ggml_type_block(16, &be, &bb));  // IQ2_XXS: known, not dequantizable
  EXPECT_TRUE(ggml_type_layout(16, &be, &bb));
  EXPECT_EQ(bb, 66);
  EXPECT_FALSE(ggml_type_layout(123, &be, &bb));
  EXPECT_THROW(dequantize(GgmlType::IQ2_XXS, nullptr, nullptr, 0), Error);
  std::vector<uint8_t> src(18, 0);
  std::vector<float> dst(32);
  EXPECT_THROW(dequantize(GgmlType::Q4_0, src.data(), dst.data(), 31), Error);
}

TEST(GgmlTypes, Fp16Conversion) {
  EXPECT_EQ(fp16_to_f32(0x3C00), 1.0f);
  EXPECT_EQ(fp16_to_f32(0xC000), -2.0f);
  EXPECT_EQ(fp16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(fp16_to_f32(0x7BFF), 65504.0f);
  EXPECT_TRUE(std::isinf(fp16_to_f32(0x7C00)));
  EXPECT_TRUE(std::isnan(fp16_to_f32(0x7E00)));
  EXPECT_TRUE(std::signbit(fp16_to_f32(0x8000)));
  EXPECT_EQ(bf16_to_f32(0x3F80), 1.0f);
}

class QuantFixture : public testing::TestWithParam<const char*> {};

// Bit-exact against gguf.quants.dequantize (Q8_K: a numpy recomputation, gguf has no Q8_K dequantizer).
TEST_P(QuantFixture, MatchesGgufPython) {
  const std::string type = GetParam();
  std::string lower = type;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  GgufFile f = GgufFile::open(kDir + lower + ".gguf");
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.get_string("test.qtype"), type);
  const GgufTensorInfo* t = f.find_tensor("t");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(ggml_type_name(t->type), type);
  const std::vector<float> expected = read_f32_file(kDir + lower + ".f32");
  ASSERT_EQ(t->n_elements(), static_cast<int64_t>(expected.size()));
  ASSERT_EQ(t->ne.size(), 2u);
  EXPECT_EQ(t->shape(), (std::vector<int64_t>{t->ne[1], t->ne[0]}));

  std::vector<float> got(expected.size(), -12345.0f);
  f.read_f32(*t, got.data());
  int mismatches = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    uint32_t a, b;
    std::memcpy(&a, &got[i], 4);
    std::memcpy(&b, &expected[i], 4);
    if (a != b && mismatches++ < 5)
      ADD_FAILURE() << type << " element " << i << ": got " << got[i] << " (0x" << std::hex << a << "), expected "
                    << expected[i] << " (0x" << b << std::dec << ")";
  }
  EXPECT_EQ(mismatches, 0);

  // Direct call on the raw bytes, one row at a time (rows are whole blocks).
  std::vector<float> row(t->ne[0]);
  int64_t be = 0, bb = 0;
  ASSERT_TRUE(ggml_type_block(t->type, &be, &bb));
  const int64_t row_bytes = t->ne[0] / be * bb;
  dequantize(static_cast<GgmlType>(t->type), f.tensor_data(*t) + row_bytes, row.data(), t->ne[0]);
  EXPECT_EQ(std::memcmp(row.data(), expected.data() + t->ne[0], row.size() * 4), 0);
}

INSTANTIATE_TEST_SUITE_P(AllTypes, QuantFixture,
                         testing::Values("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K",
                                         "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"));

// ---------------------------------------------------------------------------------------------
// Metadata

TEST(Gguf, MetadataEveryType) {
  const std::string path = kDir + "metadata_v3.gguf";
  GgufFile f = GgufFile::open(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.path(), path);
  const std::vector<std::string> keys = f.keys();
  ASSERT_GE(keys.size(), 29u);
  EXPECT_EQ(keys[0], "general.architecture");
  EXPECT_EQ(keys[1], "t.u8");
  EXPECT_EQ(keys.back(), "t.nested3");

  EXPECT_EQ(f.get_string("general.architecture"), "test");
  EXPECT_EQ(f.get_int("t.u8"), 200);
  EXPECT_EQ(f.get_int("t.i8"), -100);
  EXPECT_EQ(f.get_int("t.u16"), 60000);
  EXPECT_EQ(f.get_int("t.i16"), -30000);
  EXPECT_EQ(f.get_int("t.u32"), 4000000000LL);
  EXPECT_EQ(f.get_int("t.i32"), -2000000000LL);
  EXPECT_EQ(f.get_float("t.f32"), static_cast<double>(0.1f));
  EXPECT_EQ(f.find("t.f32")->type, GgufValueType::FLOAT32);
  EXPECT_TRUE(f.get_bool("t.bool_true"));
  EXPECT_FALSE(f.get_bool("t.bool_false"));
  EXPECT_EQ(f.get_string("t.str"), "h\xc3\xa9llo \"world\"\n\ttab");
  EXPECT_EQ(f.get_string("t.empty"), "");
  EXPECT_EQ(f.find("t.u64")->as_uint(), (uint64_t{1} << 63) + 5);
  expect_error([&] { f.get_int("t.u64"); }, {path, "t.u64", "does not fit in int64"});
  EXPECT_EQ(f.get_int("t.i64"), -(int64_t{1} << 62) - 7);
  EXPECT_EQ(f.get_float("t.f64"), 3.141592653589793);
  EXPECT_EQ(f.get_float("t.i32"), -2000000000.0);  // integers are numbers too

  EXPECT_EQ(f.get_int_array("t.arr_u8"), (std::vector<int64_t>{1, 2, 255}));
  EXPECT_EQ(f.get_int_array("t.arr_i8"), (std::vector<int64_t>{-1, 0, 127}));
  EXPECT_EQ(f.get_int_array("t.arr_u16"), (std::vector<int64_t>{65535, 1}));
  EXPECT_EQ(f.get_int_array("t.arr_i16"), (std::vector<int64_t>{-32768, 32767}));
  EXPECT_EQ(f.get_int_array("t.arr_u32"), (std::vector<int64_t>{7, 8, 9}));
  EXPECT_EQ(f.get_int_array("t.arr_i32"), (std::vector<int64_t>{-5, 0, 5, 10}));
  EXPECT_EQ(f.get_float_array("t.arr_f32"), (std::vector<double>{0.5, -1.25, static_cast<double>(1e30f)}));
  EXPECT_EQ(f.get_int_array("t.arr_i64"), (std::vector<int64_t>{INT64_MIN, INT64_MAX}));
  EXPECT_EQ(f.get_float_array("t.arr_f64"), (std::vector<double>{1.0 / 3.0, -2.5e-300}));
  const GgufValue& bools = f.get("t.arr_bool");
  ASSERT_EQ(bools.array_size(), 3u);
  EXPECT_TRUE(bools.bool_at(0));
  EXPECT_FALSE(bools.bool_at(1));
  const GgufValue& u64s = f.get("t.arr_u64");
  EXPECT_EQ(u64s.array_type(), GgufValueType::UINT64);
  EXPECT_THROW(u64s.int_at(0), Error);  // 2^64-1 does not fit in int64
  EXPECT_EQ(u64s.int_at(1), 3);
  expect_error([&] { f.get_int_array("t.arr_u64"); }, {"t.arr_u64", "does not fit"});

  const std::vector<std::string> strs = f.get_string_array("t.arr_str");
  ASSERT_EQ(strs.size(), 24u);
  EXPECT_EQ(strs[0], "a");
  EXPECT_EQ(strs[1], "");
  EXPECT_EQ(strs[2], "bc");
  EXPECT_EQ(strs[3], "\xe6\x97\xa5\xe6\x9c\xac");
  EXPECT_EQ(strs[23], "tok19");
  EXPECT_EQ(f.get("t.arr_str").string_at(4), "tok0");

  const GgufValue& nested = f.get("t.nested");
  ASSERT_EQ(nested.array_type(), GgufValueType::ARRAY);
  ASSERT_EQ(nested.array_size(), 3u);
  EXPECT_EQ(nested.array_at(0).as_int_array(), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(nested.array_at(1).as_int_array(), (std::vector<int64_t>{3}));
  EXPECT_EQ(nested.array_at(2).as_int_array(), (std::vector<int64_t>{4, 5, 6}));
  EXPECT_EQ(f.get("t.nested_str").array_at(0).as_string_array(), (std::vector<std::string>{"x", "y"}));
  const GgufValue& n3 = f.get("t.nested3");
  EXPECT_EQ(n3.array_at(0).array_at(1).as_float_array(), (std::vector<double>{2.5, 3.5}));
  EXPECT_EQ(n3.array_at(1).array_at(0).float_at(0), 4.5);
  EXPECT_THROW(nested.array_at(3), Error);
  EXPECT_THROW(nested.string_at(0), Error);

  // Typed getters: missing keys and wrong types name the file and the key.
  expect_error([&] { f.get_int("no.such.key"); }, {path, "no.such.key", "missing"});
  expect_error([&] { f.get_int("t.str"); }, {path, "t.str", "expected an integer, got string"});
  expect_error([&] { f.get_string("t.u8"); }, {path, "t.u8", "expected string, got uint8"});
  expect_error([&] { f.get_bool("t.u8"); }, {"t.u8", "bool"});
  expect_error([&] { f.get_float("t.str"); }, {"t.str", "number"});
  expect_error([&] { f.get_string_array("t.arr_i32"); }, {"t.arr_i32", "array of strings"});
  expect_error([&] { f.get_int_array("t.u8"); }, {"t.u8", "array"});
  expect_error([&] { f.get_float_array("t.arr_str"); }, {"t.arr_str", "numbers"});
  EXPECT_EQ(f.find_int("absent"), std::nullopt);
  EXPECT_EQ(f.find_float("absent"), std::nullopt);
  EXPECT_EQ(f.find_string("absent"), std::nullopt);
  EXPECT_EQ(f.find_bool("absent"), std::nullopt);
  EXPECT_EQ(f.find_int("t.u16"), 60000);
  EXPECT_EQ(f.find_string("t.str").value().size(), 19u);
  EXPECT_EQ(f.find_bool("t.bool_true"), true);
  EXPECT_THROW(f.find_int("t.str"), Error);
  EXPECT_THROW(f.find_bool("t.str"), Error);
  EXPECT_EQ(f.find("absent"), nullptr);

  EXPECT_EQ(f.value_to_string("t.u8"), "200");
  EXPECT_EQ(f.value_to_string("t.i64"), "-4611686018427387911");
  EXPECT_EQ(f.value_to_string("t.f32"), "0.1");
  EXPECT_EQ(f.value_to_string("t.bool_true"), "true");
  EXPECT_EQ(f.value_to_string("t.str"), "\"h\xc3\xa9llo \\\"world\\\"\\n\\ttab\"");
  EXPECT_EQ(f.value_to_string("t.arr_i32"), "[-5, 0, 5, 10]");
  EXPECT_EQ(f.value_to_string("t.arr_str", 3), "[\"a\", \"\", \"bc\", ... (24 strings)]");
  EXPECT_EQ(f.value_to_string("t.nested"), "[[1, 2], [3], [4, 5, 6]]");
  EXPECT_EQ(f.value_to_string("t.arr_str", 0), "[... (24 strings)]");
}

TEST(Gguf, TensorsInMetadataFixture) {
  GgufFile f = GgufFile::open(kDir + "metadata_v3.gguf");
  ASSERT_EQ(f.tensors().size(), 3u);
  const GgufTensorInfo* w = f.find_tensor("w4d");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->ne, (std::vector<int64_t>{5, 4, 3, 2}));
  EXPECT_EQ(w->shape(), (std::vector<int64_t>{2, 3, 4, 5}));
  EXPECT_EQ(w->n_elements(), 120);
  EXPECT_EQ(w->nbytes, 480u);
  EXPECT_EQ(w->offset % 32, 0u);
  std::vector<float> v(120);
  f.read_f32(*w, v.data());
  for (int i = 0; i < 120; ++i) EXPECT_EQ(v[i], 0.5f * i);

  const GgufTensorInfo* h = f.find_tensor("v16");
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->type, 1u);
  std::vector<float> hv(3);
  f.read_f32(*h, hv.data());
  EXPECT_EQ(hv, (std::vector<float>{1.0f, -2.0f, 0.25f}));

  // Listed, but retort cannot dequantize IQ2_XXS: the error names the file, tensor and type.
  const GgufTensorInfo* iq = f.find_tensor("iq");
  ASSERT_NE(iq, nullptr);
  EXPECT_EQ(ggml_type_name(iq->type), "IQ2_XXS");
  EXPECT_EQ(iq->ne, (std::vector<int64_t>{256, 2}));
  EXPECT_EQ(iq->nbytes, 2u * 66u);
  std::vector<float> out(512);
  expect_error([&] { f.read_f32(*iq, out.data()); }, {"metadata_v3.gguf", "'iq'", "IQ2_XXS", "16"});
  EXPECT_EQ(f.find_tensor("nope"), nullptr);
}

TEST(Gguf, Version2File) {
  GgufFile f = GgufFile::open(kDir + "v2.gguf");
  EXPECT_EQ(f.version(), 2u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("llama.block_count"), 2);
  EXPECT_EQ(f.get_string_array("v2.tokens"), (std::vector<std::string>{"<s>", "hi", "</s>"}));
  EXPECT_EQ(f.get_float("v2.scale"), 0.5);
  ASSERT_EQ(f.tensors().size(), 2u);
  const GgufTensorInfo& a = f.tensors()[0];
  EXPECT_EQ(a.name, "a");
  EXPECT_EQ(a.shape(), (std::vector<int64_t>{2, 3}));
  std::vector<float> av(6), bv(2);
  f.read_f32(a, av.data());
  EXPECT_EQ(av, (std::vector<float>{1, 2, 3, 4, 5, 6}));
  f.read_f32(f.tensors()[1], bv.data());
  EXPECT_EQ(bv, (std::vector<float>{-1.5f, 2.5f}));
}

TEST(Gguf, CustomAlignment64) {
  GgufFile f = GgufFile::open(kDir + "align64.gguf");
  EXPECT_EQ(f.alignment(), 64u);
  EXPECT_EQ(f.data_offset() % 64, 0u);
  ASSERT_EQ(f.tensors().size(), 4u);
  const int sizes[] = {3, 17, 40, 1};
  bool some_offset_not_32_aligned_in_64 = false;
  for (int i = 0; i < 4; ++i) {
    const GgufTensorInfo& t = f.tensors()[i];
    EXPECT_EQ(t.offset % 64, 0u) << t.name;
    if ((t.offset - f.data_offset()) % 64 == 0 && (t.offset - f.data_offset()) % 128 != 0)
      some_offset_not_32_aligned_in_64 = true;
    std::vector<float> v(sizes[i]);
    f.read_f32(t, v.data());
    for (int k = 0; k < sizes[i]; ++k) EXPECT_EQ(v[k], static_cast<float>(k + 100 * i));
  }
  EXPECT_TRUE(some_offset_not_32_aligned_in_64);
}

TEST(Gguf, OpenMissingFile) {
  expect_error([] { GgufFile::open(kDir + "does_not_exist.gguf"); }, {"does_not_exist.gguf"});
}

// ---------------------------------------------------------------------------------------------
// Corruption

TEST(GgufCorrupt, HandBuiltFileIsValid) {
  GgufFile f = parse_bytes(good_file());
  ASSERT_EQ(f.tensors().size(), 3u);
  std::vector<float> q(32);
  f.read_f32(*f.find_tensor("q"), q.data());
  for (int i = 0; i < 32; ++i) EXPECT_EQ(q[i], static_cast<float>(i - 16));
}

TEST(GgufCorrupt, TruncatedAnywhere) {
  for (const std::string& path : {kDir + "metadata_v3.gguf", kDir + "q6_k.gguf", std::string()}) {
    const std::string full = path.empty() ? good_file() : read_file(path);
    GgufFile f = parse_bytes(full);
    uint64_t data_end = 0;
    for (const auto& t : f.tensors()) data_end = std::max(data_end, t.offset + t.nbytes);
    ASSERT_GT(data_end, 0u);
    for (size_t cut = 0; cut < data_end; ++cut) {
      try {
        parse_bytes(full.substr(0, cut), "cut.gguf");
        ADD_FAILURE() << path << " truncated to " << cut << " bytes parsed without error";
      } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_EQ(msg.rfind("cut.gguf: ", 0), 0u) << msg;
        if (cut >= 4) {
          EXPECT_TRUE(msg.find("truncated") != std::string::npos || msg.find("past the end") != std::string::npos ||
                      msg.find("cannot fit") != std::string::npos || msg.find("claims") != std::string::npos)
              << "cut " << cut << ": " << msg;
        }
      }
    }
  }
}

TEST(GgufCorrupt, MagicAndVersion) {
  std::string b = good_file();
  b[0] = 'X';
  expect_error([&] { parse_bytes(b, "bad.gguf"); }, {"bad.gguf", "not a GGUF file"});
  expect_error([&] { parse_bytes("", "empty.gguf"); }, {"empty.gguf", "not a GGUF file"});
  expect_error([&] { GgufFile::parse(nullptr, 0, "null.gguf"); }, {"null.gguf", "not a GGUF file"});
  for (uint32_t v : {0u, 1u, 4u, 0x03000000u}) {
    b = good_file();
    std::memcpy(&b[4], &v, 4);
    expect_error([&] { parse_bytes(b, "ver.gguf"); }, {"ver.gguf", "supported", "2 and 3"});
  }
  b = good_file();
  b[4] = 1;  // version 3 -> 1
  expect_error([&] { parse_bytes(b); }, {"version 1 is not supported"});
  b[4] = 0;
  b[7] = 3;
  expect_error([&] { parse_bytes(b); }, {"big-endian"});
}

TEST(GgufCorrupt, HugeCounts) {
  std::string b = good_file();
  const uint64_t huge = uint64_t{1} << 60;
  std::memcpy(&b[8], &huge, 8);  // tensor count
  expect_error([&] { parse_bytes(b); }, {"tensor count", "cannot fit"});
  b = good_file();
  std::memcpy(&b[16], &huge, 8);  // kv count
  expect_error([&] { parse_bytes(b); }, {"metadata count", "cannot fit"});
  b = good_file();
  std::memcpy(&b[24], &huge, 8);  // length of the first key
  expect_error([&] { parse_bytes(b); }, {"metadata entry 0", "claims"});
  // String value length past the end.
  b = build({W().str("k").u32(8).u64(1000).b + "abc"}, {}, "");
  expect_error([&] { parse_bytes(b); }, {"'k'", "claims 1000 bytes"});
  // Array counts that cannot fit (uint32 elements, strings, arrays).
  for (uint32_t et : {4u, 8u, 9u}) {
    b = build({W().str("arr").u32(9).u32(et).u64(huge).b}, {}, "");
    expect_error([&] { parse_bytes(b); }, {"'arr'", "cannot fit"});
  }
  // Array of 3 uint32 with only 2 present.
  b = W().str("arr").u32(9).u32(4).u64(3).u32(1).u32(2).b;
  b = "GGUF" + W().u32(3).u64(0).u64(1).b + b;
  expect_error([&] { parse_bytes(b); }, {"'arr'", "cannot fit"});
}

TEST(GgufCorrupt, BadValuesAndKeys) {
  expect_error([&] { parse_bytes(build({W().str("k").u32(13).u32(0).b}, {}, "")); }, {"'k'", "unknown value type 13"});
  expect_error([&] { parse_bytes(build({W().str("k").u32(9).u32(77).u64(1).u32(0).b}, {}, "")); },
               {"'k'", "array element type 77"});
  expect_error([&] { parse_bytes(build({kv_u32("dup", 1), kv_u32("dup", 2)}, {}, "")); }, {"'dup'", "duplicate key"});
  // Arrays of arrays nested 100 deep.
  W deep;
  deep.str("deep").u32(9);
  for (int i = 0; i < 100; ++i) deep.u32(9).u64(1);
  deep.u32(4).u64(0);
  expect_error([&] { parse_bytes(build({deep.b}, {}, "")); }, {"'deep'", "nested"});
}

TEST(GgufCorrupt, BadTensorInfos) {
  const std::string data(64, '\0');
  auto one = [&](TI t, std::vector<std::string> kvs = {}) { return parse_bytes(build(kvs, {t}, data), "t.gguf"); };
  expect_error([&] { one({"x", {}, 0, 0}); }, {"t.gguf", "'x'", "n_dims is 0"});
  expect_error([&] { one({"x", {1, 1, 1, 1, 1}, 0, 0}); }, {"'x'", "n_dims is 5"});
  expect_error([&] { one({"x", {~uint64_t{0}}, 0, 0}); }, {"'x'", "negative"});
  expect_error([&] { one({"x", {uint64_t{1} << 40, uint64_t{1} << 40}, 0, 0}); }, {"'x'", "overflow"});
  expect_error([&] { one({"x", {4}, 0, 4}); }, {"'x'", "not a multiple of the alignment 32"});
  expect_error([&] { one({"x", {4}, 0, 64}); }, {"'x'", "past the end"});
  expect_error([&] { one({"x", {4}, 0, uint64_t{1} << 63}); }, {"'x'", "past the end"});
  expect_error([&] { one({"x", {32}, 0, 0}); }, {"'x'", "F32", "past the end"});  // 128 bytes > 64
  expect_error([&] { one({"x", {uint64_t{1} << 61}, 0, 0}); }, {"'x'", "past the end"});  // nbytes overflows
  expect_error([&] { one({"x", {33}, 2, 0}); }, {"'x'", "ne[0] = 33", "Q4_0 block size 32"});
  expect_error([&] { parse_bytes(build({}, {{"x", {4}, 0, 0}, {"x", {4}, 0, 32}}, data)); }, {"'x'", "duplicate tensor"});
  // Alignment: must be a power of two; the data section moves with it.
  expect_error([&] { one({"x", {4}, 0, 0}, {kv_u32("general.alignment", 48)}); }, {"alignment 48", "power of two"});
  expect_error([&] { one({"x", {4}, 0, 0}, {kv_u32("general.alignment", 0)}); }, {"power of two"});
  expect_error([&] { one({"x", {4}, 0, 0}, {kv_str("general.alignment", "32")}); }, {"general.alignment", "integer"});
  // Zero-size tensor is fine; so is an empty file with no tensors.
  EXPECT_NO_THROW(one({"x", {0}, 0, 0}));
  EXPECT_NO_THROW(parse_bytes(build({}, {}, "")));
}

TEST(GgufCorrupt, UnknownTypeListsButDoesNotRead) {
  GgufFile f = parse_bytes(build({}, {{"odd", {8}, 200, 0}}, std::string(64, '\0')), "u.gguf");
  ASSERT_EQ(f.tensors().size(), 1u);
  EXPECT_EQ(f.tensors()[0].type, 200u);
  EXPECT_EQ(ggml_type_name(200), "unknown(200)");
  std::vector<float> out(8);
  expect_error([&] { f.read_f32(f.tensors()[0], out.data()); }, {"u.gguf", "'odd'", "unknown(200)", "200"});
  // Unknown type with an offset past the end is still refused at parse time.
  expect_error([&] { parse_bytes(build({}, {{"odd", {8}, 200, 4096}}, std::string(64, '\0'))); }, {"past the end"});
}

// ---------------------------------------------------------------------------------------------
// The real default model (skipped when absent)

namespace {
std::string model_path() {
  const char* home = std::getenv("RETORT_HOME");
  std::string base = home ? std::string(home) : std::string(std::getenv("HOME") ? std::getenv("HOME") : "") + "/.cache/retort";
  return base + "/models/smollm2-135m-instruct.gguf";
}
}  // namespace

TEST(GgufModel, SmolLM2) {
  const std::string path = model_path();
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) GTEST_SKIP() << "default model not found at " << path << " (run scripts/setup.sh)";
  GgufFile f = GgufFile::open(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.file_size(), static_cast<size_t>(st.st_size));
  EXPECT_EQ(f.tensors().size(), 272u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("llama.block_count"), 30);
  EXPECT_EQ(f.get_int("llama.context_length"), 8192);
  EXPECT_EQ(f.get_int("llama.embedding_length"), 576);
  EXPECT_EQ(f.get_int("llama.feed_forward_length"), 1536);
  EXPECT_EQ(f.get_int("llama.attention.head_count"), 9);
  EXPECT_EQ(f.get_int("llama.attention.head_count_kv"), 3);
  EXPECT_EQ(f.get_int("llama.rope.dimension_count"), 64);
  EXPECT_EQ(f.get_float("llama.rope.freq_base"), 100000.0);
  EXPECT_EQ(f.get_float("llama.attention.layer_norm_rms_epsilon"), static_cast<double>(1e-5f));
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(f.get_string("tokenizer.ggml.pre"), "smollm");
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.tokens").size(), 49152u);
  EXPECT_EQ(f.get_int_array("tokenizer.ggml.token_type").size(), 49152u);
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.merges").size(), 48900u);
  EXPECT_NE(f.get_string("tokenizer.chat_template").find("<|im_start|>"), std::string::npos);
  EXPECT_EQ(f.alignment(), 32u);  // general.alignment absent: the default
  EXPECT_EQ(f.find("general.alignment"), nullptr);
}

TEST(GgufModel, TensorSumsMatchGgufPython) {
  const std::string path = model_path();
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) GTEST_SKIP() << "default model not found at " << path;
  GgufFile f = GgufFile::open(path);
  std::ifstream golden(kDir + "smollm2_golden.txt");
  ASSERT_TRUE(golden) << "missing smollm2_golden.txt; run make_fixtures.py --model";
  std::string line;
  size_t n = 0;
  std::vector<float> buf;
  while (std::getline(golden, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream is(line);
    std::string name, type, ne_s;
    double sum = 0, sumsq = 0;
    is >> name >> type >> ne_s >> sum >> sumsq;
    const GgufTensorInfo* t = f.find_tensor(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(ggml_type_name(t->type), type) << name;
    std::string ne_got;
    for (size_t j = 0; j < t->ne.size(); ++j) {
      if (j) ne_got += ',';
      ne_got += std::to_string(t->ne[j]);
    }
    EXPECT_EQ(ne_got, ne_s) << name;
    buf.resize(static_cast<size_t>(t->n_elements()));
    f.read_f32(*t, buf.data());
    double s = 0, ss = 0;
    for (float x : buf) {
      s += x;
      ss += static_cast<double>(x) * x;
    }
    // Elements are bit-exact; only the float64 summation order differs from numpy's pairwise sum.
    const double scale = std::max(std::abs(sum), std::sqrt(sumsq));
    EXPECT_NEAR(s, sum, 1e-6 * scale) << name;
    EXPECT_NEAR(ss, sumsq, 1e-6 * sumsq) << name;
    ++n;
  }
  EXPECT_EQ(n, 272u);
}
