// retort/io/gguf_writer.h — write GGUF v3 files (the layout gguf.h reads):
//   "GGUF" | u32 3 | u64 tensor_count | u64 kv_count | kvs | tensor infos | pad | data
// Tensor data offsets are multiples of the alignment (32 unless set; a non-default alignment
// is recorded as general.alignment). Metadata keeps insertion order; a repeated key or tensor
// name is an error. Tensor bytes are produced on demand while writing, so a model is never held
// twice in memory. The file is published atomically (AtomicFile): a failure leaves any old file.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "retort/io/ggml_quants.h"
#include "retort/io/gguf.h"

namespace retort {

class GgufWriter {
 public:
  explicit GgufWriter(uint64_t alignment = 32);

  // Scalars.
  void add_uint8(const std::string& key, uint8_t v);
  void add_int8(const std::string& key, int8_t v);
  void add_uint16(const std::string& key, uint16_t v);
  void add_int16(const std::string& key, int16_t v);
  void add_uint32(const std::string& key, uint32_t v);
  void add_int32(const std::string& key, int32_t v);
  void add_uint64(const std::string& key, uint64_t v);
  void add_int64(const std::string& key, int64_t v);
  void add_float32(const std::string& key, float v);
  void add_float64(const std::string& key, double v);
  void add_bool(const std::string& key, bool v);
  void add_string(const std::string& key, const std::string& v);
  // Arrays.
  void add_string_array(const std::string& key, const std::vector<std::string>& v);
  void add_int32_array(const std::string& key, const std::vector<int32_t>& v);
  void add_uint32_array(const std::string& key, const std::vector<uint32_t>& v);
  void add_int64_array(const std::string& key, const std::vector<int64_t>& v);
  void add_float32_array(const std::string& key, const std::vector<float>& v);
  void add_float64_array(const std::string& key, const std::vector<double>& v);
  void add_bool_array(const std::string& key, const std::vector<bool>& v);

  // A tensor of row-major `shape` (outermost first, as torch) and ggml `type`; the innermost
  // dimension must be a whole number of the type's blocks. `fill` writes exactly
  // ggml_row_bytes(type, n_elements) bytes into its argument when the file is written.
  void add_tensor(const std::string& name, const std::vector<int64_t>& shape, GgmlType type,
                  std::function<void(uint8_t*)> fill);

  // Write everything to `path` atomically. Errors name `path`.
  void write(const std::string& path) const;

 private:
  struct Kv {
    std::string key;
    GgufValueType type;
    GgufValueType elem_type = GgufValueType::UINT8;  // arrays
    std::string bytes;  // encoded value (after the type field)
  };
  struct Tensor {
    std::string name;
    std::vector<int64_t> shape;
    GgmlType type;
    uint64_t nbytes;
    std::function<void(uint8_t*)> fill;
  };
  void add_kv(const std::string& key, GgufValueType type, std::string bytes, GgufValueType elem = GgufValueType::UINT8);

  uint64_t alignment_;
  std::vector<Kv> kvs_;
  std::vector<Tensor> tensors_;
};

}  // namespace retort
