// libFuzzer target: SafetensorsFile::parse on arbitrary bytes, then read every tensor.
// Bad input must end in retort::Error, never a crash, hang or sanitizer report.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "retort/io/safetensors.h"
#include "retort/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    retort::SafetensorsFile f = retort::SafetensorsFile::parse(data, size, "fuzz.safetensors");
    for (const auto& t : f.tensors()) {
      // n_elements is bounded by the input size: parse checked it against the data section.
      const size_t n = static_cast<size_t>(t.n_elements());
      switch (t.dtype) {
        case retort::DType::F64:
        case retort::DType::F32:
        case retort::DType::F16:
        case retort::DType::BF16: {
          std::vector<float> v(n);
          f.read_f32(t, v.data());
          break;
        }
        default: {
          std::vector<int64_t> v(n);
          f.read_i64(t, v.data());
          break;
        }
      }
      (void)f.find(t.name);
    }
  } catch (const retort::Error&) {
  }
  return 0;
}
