// retort/io/gguf.h — read GGUF files (v2 and v3): metadata, tensor infos, tensor data.
//
// Layout (ggml docs/gguf.md), all little-endian:
//   "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//   kv_count x { string key | u32 value type | value }
//   tensor_count x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml type | u64 offset }
//   padding to general.alignment (default 32) | tensor data (offsets relative to here)
// A string is u64 length + bytes; an array is u32 element type + u64 count + elements.
// Every count, length, dimension and offset is checked against the file before use.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "retort/io/ggml_quants.h"

namespace retort {

class MappedFile;

enum class GgufValueType : uint32_t {
  UINT8 = 0,
  INT8,
  UINT16,
  INT16,
  UINT32,
  INT32,
  FLOAT32,
  BOOL,
  STRING,
  ARRAY,
  UINT64,
  INT64,
  FLOAT64
};

// "uint32", "string", "array", ... ("unknown(N)" otherwise).
std::string gguf_value_type_name(GgufValueType t);

// One metadata value. Scalars are held decoded; arrays keep their elements packed:
// numbers/bools as the raw little-endian bytes, strings as one byte blob plus offsets
// (a 50k-token vocabulary is two allocations), nested arrays as child values.
// Accessors throw retort::Error ("expected X, got Y") on a type mismatch.
struct GgufValue {
  GgufValueType type = GgufValueType::UINT8;

  bool is_integer() const;  // any of the 8 integer types (not bool)
  bool is_float() const;    // float32 / float64
  bool is_string() const { return type == GgufValueType::STRING; }
  bool is_array() const { return type == GgufValueType::ARRAY; }

  int64_t as_int() const;      // any integer type; a uint64 above INT64_MAX throws
  uint64_t as_uint() const;    // any integer type that is >= 0
  double as_float() const;     // float32/64 or any integer
  bool as_bool() const;
  std::string_view as_string() const;

  // Arrays.
  GgufValueType array_type() const;  // element type
  size_t array_size() const;
  int64_t int_at(size_t i) const;
  double float_at(size_t i) const;
  bool bool_at(size_t i) const;
  std::string_view string_at(size_t i) const;
  const GgufValue& array_at(size_t i) const;  // element of an array of arrays
  std::vector<std::string> as_string_array() const;
  std::vector<int64_t> as_int_array() const;
  std::vector<double> as_float_array() const;

  // Representation (filled by the parser).
  int64_t i = 0;     // signed integers and bool
  uint64_t u = 0;    // unsigned integers
  double f = 0;      // floats
  std::string str;   // STRING value, or the packed bytes of an array of strings
  GgufValueType elem_type = GgufValueType::UINT8;
  uint64_t count = 0;               // array element count
  std::vector<uint8_t> raw;         // array of numbers/bools: count * element size bytes
  std::vector<uint64_t> str_ends;   // array of strings: end offset of element k in str
  std::vector<GgufValue> children;  // array of arrays
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // ggml order: ne[0] is the innermost (contiguous) dimension
  uint32_t type = 0;        // ggml type id (may be one retort cannot dequantize)
  uint64_t offset = 0;      // absolute byte offset of the data in the file
  uint64_t nbytes = 0;      // 0 when the type id is unknown (size cannot be computed)
  int64_t n_elements() const;
  std::vector<int64_t> shape() const;  // row-major, outermost first (= ne reversed), what torch wants
};

class GgufFile {
 public:
  // Memory-maps the file; tensor data is read in place.
  static GgufFile open(const std::string& path);
  // Non-owning: `data` must outlive the returned object. `name` is used in error messages.
  static GgufFile parse(const uint8_t* data, size_t size, const std::string& name);

  uint32_t version() const { return version_; }
  const std::string& path() const { return path_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // absolute start of the tensor data section
  size_t file_size() const { return size_; }

  const GgufValue* find(std::string_view key) const;  // nullptr if absent
  const GgufValue& get(std::string_view key) const;   // throws when absent
  std::vector<std::string> keys() const;              // in file order

  // Typed getters: throw retort::Error naming the file and key when missing or of the wrong type.
  std::string get_string(std::string_view key) const;
  int64_t get_int(std::string_view key) const;  // any integer type
  double get_float(std::string_view key) const;  // float32/64 or any integer
  bool get_bool(std::string_view key) const;
  std::optional<int64_t> find_int(std::string_view key) const;  // absent -> nullopt; wrong type -> throw
  std::optional<double> find_float(std::string_view key) const;
  std::optional<std::string> find_string(std::string_view key) const;
  std::optional<bool> find_bool(std::string_view key) const;
  std::vector<std::string> get_string_array(std::string_view key) const;
  std::vector<int64_t> get_int_array(std::string_view key) const;
  std::vector<double> get_float_array(std::string_view key) const;
  // Human-readable value (strings quoted and escaped, long arrays elided), for `retort inspect`.
  std::string value_to_string(std::string_view key, size_t max_array_items = 8) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(std::string_view name) const;
  const uint8_t* tensor_data(const GgufTensorInfo& t) const { return data_ + t.offset; }
  // Keeps the file's mapping (and so every tensor_data pointer) alive; null for parse()d buffers.
  std::shared_ptr<const void> mapping() const { return map_; }
  // Dequantize a whole tensor into dst (n_elements floats).
  // Throws retort::Error naming the file, tensor and type if the type is unsupported.
  void read_f32(const GgufTensorInfo& t, float* dst) const;

 private:
  std::shared_ptr<const MappedFile> map_;  // set by open(); keeps data_ alive across copies
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;  // file order
  std::map<std::string, size_t, std::less<>> kv_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;

  template <class T, class F>
  T typed(std::string_view key, const char* what, F&& f) const;
  friend class GgufParser;
};

}  // namespace retort
