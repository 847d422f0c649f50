#include "retort/io/gguf_writer.h"

#include <cstring>

#include "retort/util/error.h"
#include "retort/util/file.h"

namespace retort {

namespace {

template <class T>
void put(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}

void put_string(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out += s;
}

template <class T>
std::string scalar(T v) {
  std::string s;
  put<T>(s, v);
  return s;
}

template <class T>
std::string array(GgufValueType elem, const std::vector<T>& v) {
  std::string s;
  put<uint32_t>(s, uint32_t(elem));
  put<uint64_t>(s, v.size());
  for (const T& x : v) put<T>(s, x);
  return s;
}

}  // namespace

GgufWriter::GgufWriter(uint64_t alignment) : alignment_(alignment) {
  check(alignment > 0 && (alignment & (alignment - 1)) == 0 && alignment % 8 == 0,
        "gguf writer: alignment must be a power of two and a multiple of 8, got ", alignment);
  if (alignment != 32) add_uint32("general.alignment", uint32_t(alignment));
}

void GgufWriter::add_kv(const std::string& key, GgufValueType type, std::string bytes, GgufValueType elem) {
  check(!key.empty(), "gguf writer: empty metadata key");
  for (const Kv& kv : kvs_) check(kv.key != key, "gguf writer: metadata key ", key, " added twice");
  kvs_.push_back({key, type, elem, std::move(bytes)});
}

void GgufWriter::add_uint8(const std::string& k, uint8_t v) { add_kv(k, GgufValueType::UINT8, scalar(v)); }
void GgufWriter::add_int8(const std::string& k, int8_t v) { add_kv(k, GgufValueType::INT8, scalar(v)); }
void GgufWriter::add_uint16(const std::string& k, uint16_t v) { add_kv(k, GgufValueType::UINT16, scalar(v)); }
void GgufWriter::add_int16(const std::string& k, int16_t v) { add_kv(k, GgufValueType::INT16, scalar(v)); }
void GgufWriter::add_uint32(const std::string& k, uint32_t v) { add_kv(k, GgufValueType::UINT32, scalar(v)); }
void GgufWriter::add_int32(const std::string& k, int32_t v) { add_kv(k, GgufValueType::INT32, scalar(v)); }
void GgufWriter::add_uint64(const std::string& k, uint64_t v) { add_kv(k, GgufValueType::UINT64, scalar(v)); }
void GgufWriter::add_int64(const std::string& k, int64_t v) { add_kv(k, GgufValueType::INT64, scalar(v)); }
void GgufWriter::add_float32(const std::string& k, float v) { add_kv(k, GgufValueType::FLOAT32, scalar(v)); }
void GgufWriter::add_float64(const std::string& k, double v) { add_kv(k, GgufValueType::FLOAT64, scalar(v)); }
void GgufWriter::add_bool(const std::string& k, bool v) { add_kv(k, GgufValueType::BOOL, scalar<uint8_t>(v ? 1 : 0)); }

void GgufWriter::add_string(const std::string& k, const std::string& v) {
  std::string s;
  put_string(s, v);
  add_kv(k, GgufValueType::STRING, std::move(s));
}

void GgufWriter::add_string_array(const std::string& k, const std::vector<std::string>& v) {
  std::string s;
  put<uint32_t>(s, uint32_t(GgufValueType::STRING));
  put<uint64_t>(s, v.size());
  for (const auto& x : v) put_string(s, x);
  add_kv(k, GgufValueType::ARRAY, std::move(s), GgufValueType::STRING);
}

void GgufWriter::add_int32_array(const std::string& k, const std::vector<int32_t>& v) {
  add_kv(k, GgufValueType::ARRAY, array(GgufValueType::INT32, v), GgufValueType::INT32);
}
void GgufWriter::add_uint32_array(const std::string& k, const std::vector<uint32_t>& v) {
  add_kv(k, GgufValueType::ARRAY, array(GgufValueType::UINT32, v), GgufValueType::UINT32);
}
void GgufWriter::add_int64_array(const std::string& k, const std::vector<int64_t>& v) {
  add_kv(k, GgufValueType::ARRAY, array(GgufValueType::INT64, v), GgufValueType::INT64);
}
void GgufWriter::add_float32_array(const std::string& k, const std::vector<float>& v) {
  add_kv(k, GgufValueType::ARRAY, array(GgufValueType::FLOAT32, v), GgufValueType::FLOAT32);
}
void GgufWriter::add_float64_array(const std::string& k, const std::vector<double>& v) {
  add_kv(k, GgufValueType::ARRAY, array(GgufValueType::FLOAT64, v), GgufValueType::FLOAT64);
}
void GgufWriter::add_bool_array(const std::string& k, const std::vector<bool>& v) {
  std::vector<uint8_t> b(v.begin(), v.end());
  add_kv(k, GgufValueType::ARRAY, array(GgufValueType::BOOL, b), GgufValueType::BOOL);
}

void GgufWriter::add_tensor(const std::string& name, const std::vector<int64_t>& shape, GgmlType type,
                            std::function<void(uint8_t*)> fill) {
  check(!name.empty(), "gguf writer: empty tensor name");
  check(!shape.empty() && shape.size() <= 4, "gguf writer: tensor ", name, " must have 1 to 4 dimensions");
  for (const Tensor& t : tensors_) check(t.name != name, "gguf writer: tensor ", name, " added twice");
  int64_t n = 1;
  for (int64_t d : shape) {
    check(d > 0, "gguf writer: tensor ", name, " has a non-positive dimension");
    n *= d;
  }
  int64_t be = 0, bb = 0;
  check(ggml_type_layout(uint32_t(type), &be, &bb), "gguf writer: tensor ", name, ": unknown type");
  check(shape.back() % be == 0, "gguf writer: tensor ", name, ": row length ", shape.back(),
        " is not a multiple of the ", ggml_type_name(uint32_t(type)), " block size ", be);
  tensors_.push_back({name, shape, type, uint64_t(ggml_row_bytes(type, n)), std::move(fill)});
}

void GgufWriter::write(const std::string& path) const {
  auto pad = [&](uint64_t x) { return (x + alignment_ - 1) / alignment_ * alignment_; };
  std::string head = "GGUF";
  put<uint32_t>(head, 3);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, kvs_.size());
  for (const Kv& kv : kvs_) {
    put_string(head, kv.key);
    put<uint32_t>(head, uint32_t(kv.type));
    head += kv.bytes;
  }
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    put_string(head, t.name);
    put<uint32_t>(head, uint32_t(t.shape.size()));
    for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) put<uint64_t>(head, uint64_t(*it));  // ne[0] innermost
    put<uint32_t>(head, uint32_t(t.type));
    put<uint64_t>(head, offset);
    offset = pad(offset + t.nbytes);
  }
  head.resize(size_t(pad(head.size())), '\0');

  AtomicFile out(path, "gguf " + path);
  out.write(head.data(), head.size());
  std::vector<uint8_t> buf;
  for (const Tensor& t : tensors_) {
    buf.assign(size_t(pad(t.nbytes)), 0);
    t.fill(buf.data());
    out.write(buf.data(), buf.size());  // padded after every tensor, the last too (as gguf-py writes)
  }
  out.commit();
}

}  // namespace retort
