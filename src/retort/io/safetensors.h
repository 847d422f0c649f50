// retort/io/safetensors.h — read (mmap, zero-copy) and write safetensors files.
//
// Layout: u64 little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [d0, d1], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value"}}
// then the data; offsets are relative to the first byte after the header, data is
// row-major little-endian. Every field is validated on open: a bad file throws
// retort::Error naming the file, the tensor and the problem, never crashes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "retort/util/file.h"

namespace retort {

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

std::string dtype_name(DType);                           // "F32", "BF16", ...
std::optional<DType> dtype_from_name(std::string_view);  // nullopt when unknown
size_t dtype_size(DType);                                // bytes per element

struct SafetensorsTensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin, end;  // absolute file offsets: data is [begin, end)
  int64_t n_elements() const;
};

class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::string& path);  // mmap; the mapping lives with the object
  // Non-owning: `data` must outlive the returned object. `name` is used in messages.
  static SafetensorsFile parse(const uint8_t* data, size_t size, const std::string& name);

  const std::string& path() const { return path_; }
  const std::vector<SafetensorsTensorInfo>& tensors() const { return tensors_; }  // offset order
  const SafetensorsTensorInfo* find(std::string_view name) const;                 // nullptr if absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Raw little-endian bytes of a tensor (may be unaligned when a foreign writer packed it).
  const uint8_t* data(const SafetensorsTensorInfo& t) const { return base_ + t.begin; }
  // F32/F16/BF16/F64 -> float32 into dst[n_elements]; other dtypes throw naming tensor+dtype.
  void read_f32(const SafetensorsTensorInfo& t, float* dst) const;
  std::vector<float> read_f32(const SafetensorsTensorInfo& t) const;
  // I64/I32/I16/I8/U8/BOOL -> int64 into dst[n_elements]; float dtypes throw.
  void read_i64(const SafetensorsTensorInfo& t, int64_t* dst) const;

 private:
  std::string path_;
  MappedFile map_;  // empty for parse()
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  std::vector<SafetensorsTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

struct SafetensorsWriteTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;  // row-major little-endian, nbytes long
  size_t nbytes;     // must equal product(shape) * dtype_size(dtype)
};

// Writes atomically (temp file in the same dir, fsync, rename): a failure leaves any old
// file at `path` untouched. The header is padded with spaces to a multiple of 8 bytes and
// tensors are ordered by element size (largest first), so every tensor is naturally
// aligned in an mmap. Throws retort::Error on bad arguments or I/O failure.
void write_safetensors(const std::string& path, const std::vector<SafetensorsWriteTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace retort
