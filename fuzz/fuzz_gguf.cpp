// libFuzzer target: GgufFile::parse on arbitrary bytes, print every metadata value, and
// dequantize every tensor whose type retort supports.
// Bad input must end in retort::Error, never a crash, hang or sanitizer report.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "retort/io/gguf.h"
#include "retort/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    retort::GgufFile f = retort::GgufFile::parse(data, size, "fuzz.gguf");
    for (const std::string& key : f.keys()) (void)f.value_to_string(key, 4);
    (void)f.find_int("general.alignment");
    for (const auto& t : f.tensors()) {
      (void)f.find_tensor(t.name);
      (void)t.shape();
      if (!retort::ggml_type_supported(t.type)) continue;
      // n_elements is bounded by the input size: parse checked nbytes against the file.
      std::vector<float> v(static_cast<size_t>(t.n_elements()));
      f.read_f32(t, v.data());
    }
  } catch (const retort::Error&) {
  }
  return 0;
}
