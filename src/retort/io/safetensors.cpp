#include "retort/io/safetensors.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <set>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "retort/io/half.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; big-endian hosts would need byte swaps");

namespace retort {

namespace {

// A header larger than this is not a real checkpoint (the biggest hub models have < 10 MB).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DTypeRow {
  DType dtype;
  const char* name;
  size_t size;
};
constexpr DTypeRow kDTypes[] = {
    {DType::F64, "F64", 8}, {DType::F32, "F32", 4}, {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2}, {DType::I64, "I64", 8}, {DType::I32, "I32", 4},
    {DType::I16, "I16", 2}, {DType::I8, "I8", 1}, {DType::U8, "U8", 1},
    {DType::BOOL, "BOOL", 1},
};

bool is_float(DType t) {
  return t == DType::F64 || t == DType::F32 || t == DType::F16 || t == DType::BF16;
}

std::string supported_dtypes() {
  std::string s;
  for (const auto& row : kDTypes) {
    if (!s.empty()) s += ", ";
    s += row.name;
  }
  return s;
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

// Element count of `shape` times `elem` bytes, or nullopt on overflow past 2^63.
std::optional<uint64_t> checked_nbytes(const std::vector<int64_t>& shape, size_t elem) {
  unsigned __int128 n = elem;
  for (int64_t d : shape) {
    n *= static_cast<uint64_t>(d);
    if (n > static_cast<unsigned __int128>(INT64_MAX)) return std::nullopt;
  }
  return static_cast<uint64_t>(n);
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); i++) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// A non-negative JSON integer (nlohmann keeps non-negative integers as number_unsigned).
bool get_u64(const nlohmann::json& j, uint64_t* out) {
  if (!j.is_number_unsigned()) return false;
  *out = j.get<uint64_t>();
  return true;
}

}  // namespace

std::string dtype_name(DType t) {
  for (const auto& row : kDTypes)
    if (row.dtype == t) return row.name;
  return "?";
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& row : kDTypes)
    if (name == row.name) return row.dtype;
  return std::nullopt;
}

size_t dtype_size(DType t) {
  for (const auto& row : kDTypes)
    if (row.dtype == t) return row.size;
  return 0;
}

int64_t SafetensorsTensorInfo::n_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  MappedFile map(path);
  SafetensorsFile f = parse(map.data(), map.size(), path);
  f.map_ = std::move(map);  // the mapping's address does not move with it
  return f;
}

SafetensorsFile SafetensorsFile::parse(const uint8_t* data, size_t size, const std::string& name) {
  SafetensorsFile f;
  f.path_ = name;
  f.base_ = data;
  f.size_ = size;
  const std::string where = "safetensors " + name;

  check(size >= 8, where, ": file is ", size,
        " bytes, shorter than the 8-byte header length; not a safetensors file (truncated download?)");
  uint64_t n = read_u64_le(data);
  check(n <= kMaxHeaderBytes, where, ": header length ", n,
        " bytes is absurd (limit 100 MB); not a safetensors file or corrupted");
  check(n <= size - 8, where, ": header length ", n, " bytes runs past the end of the file (",
        size, " bytes); the file is truncated or not safetensors");
  const uint64_t data_start = 8 + n;
  const uint64_t data_size = size - data_start;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(data + 8, data + data_start);
  } catch (const nlohmann::json::exception& e) {
    fail(where, ": header is not valid JSON (", e.what(), ")");
  }
  check(header.is_object(), where, ": header must be a JSON object, got ", header.type_name());

  for (const auto& [key, val] : header.items()) {
    if (key == "__metadata__") {
      if (val.is_null()) continue;
      check(val.is_object(), where, ": __metadata__ must be an object of strings, got ",
            val.type_name());
      for (const auto& [mk, mv] : val.items()) {
        check(mv.is_string(), where, ": __metadata__ value \"", mk, "\" must be a string, got ",
              mv.type_name());
        f.metadata_[mk] = mv.get<std::string>();
      }
      continue;
    }
    const std::string tw = where + ": tensor \"" + key + "\"";
    check(val.is_object(), tw, ": entry must be an object with dtype, shape, data_offsets, got ",
          val.type_name());
    SafetensorsTensorInfo t;
    t.name = key;

    auto it = val.find("dtype");
    check(it != val.end(), tw, ": missing \"dtype\"");
    check(it->is_string(), tw, ": \"dtype\" must be a string, got ", it->type_name());
    auto dt = dtype_from_name(it->get<std::string>());
    check(dt.has_value(), tw, ": unsupported dtype \"", it->get<std::string>(),
          "\" (supported: ", supported_dtypes(), ")");
    t.dtype = *dt;

    it = val.find("shape");
    check(it != val.end(), tw, ": missing \"shape\"");
    check(it->is_array(), tw, ": \"shape\" must be an array of integers, got ", it->type_name());
    for (const auto& d : *it) {
      check(d.is_number_integer(), tw, ": \"shape\" must hold integers, got ", d.type_name());
      check(d.is_number_unsigned(), tw, ": negative dimension ", d.dump(), " in shape");
      uint64_t dim = d.get<uint64_t>();
      check(dim <= static_cast<uint64_t>(INT64_MAX), tw, ": dimension ", dim, " is too large");
      t.shape.push_back(static_cast<int64_t>(dim));
    }

    it = val.find("data_offsets");
    check(it != val.end(), tw, ": missing \"data_offsets\"");
    check(it->is_array() && it->size() == 2, tw,
          ": \"data_offsets\" must be an array [begin, end] (", it->type_name(), " of size ",
          it->is_array() ? it->size() : 1, " given)");
    uint64_t begin = 0, end = 0;
    check(get_u64((*it)[0], &begin) && get_u64((*it)[1], &end), tw,
          ": \"data_offsets\" must be two non-negative integers");
    check(begin <= end, tw, ": data_offsets [", begin, ", ", end, "] are reversed");
    check(end <= data_size, tw, ": data_offsets [", begin, ", ", end,
          "] lie outside the data section (", data_size, " bytes); the file is truncated or corrupt");

    auto nbytes = checked_nbytes(t.shape, dtype_size(t.dtype));
    check(nbytes.has_value(), tw, ": shape ", shape_str(t.shape), " is too large");
    check(*nbytes == end - begin, tw, ": shape ", shape_str(t.shape), " of ", dtype_name(t.dtype),
          " needs ", *nbytes, " bytes but data_offsets [", begin, ", ", end, "] span ", end - begin);
    t.begin = data_start + begin;
    t.end = data_start + end;
    f.tensors_.push_back(std::move(t));
  }

  std::sort(f.tensors_.begin(), f.tensors_.end(), [](const auto& a, const auto& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 0; i < f.tensors_.size(); i++) {
    if (i > 0) {
      const auto& p = f.tensors_[i - 1];
      const auto& t = f.tensors_[i];
      check(t.begin >= p.end, where, ": tensors \"", p.name, "\" and \"", t.name,
            "\" overlap (data_offsets [", p.begin - data_start, ", ", p.end - data_start, "] and [",
            t.begin - data_start, ", ", t.end - data_start, "])");
    }
    f.index_.emplace(f.tensors_[i].name, i);
  }
  return f;
}

const SafetensorsTensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

void SafetensorsFile::read_f32(const SafetensorsTensorInfo& t, float* dst) const {
  const uint8_t* p = data(t);
  const int64_t n = t.n_elements();
  check(is_float(t.dtype), "safetensors ", path_, ": tensor \"", t.name, "\" has dtype ",
        dtype_name(t.dtype), ", which cannot be read as float32 (read_f32 takes F32, F16, BF16, F64)");
  if (n == 0) return;  // dst may be null for an empty tensor
  // memcpy per element: a foreign writer may leave tensors unaligned.
  switch (t.dtype) {
    case DType::F32:
      std::memcpy(dst, p, static_cast<size_t>(n) * 4);
      return;
    case DType::F16:
      for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        dst[i] = fp16_to_f32(h);
      }
      return;
    case DType::BF16:
      for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        dst[i] = bf16_to_f32(h);
      }
      return;
    case DType::F64:
      for (int64_t i = 0; i < n; i++) {
        double d;
        std::memcpy(&d, p + 8 * i, 8);
        dst[i] = static_cast<float>(d);
      }
      return;
    default:
      return;  // unreachable: checked above
  }
}

std::vector<float> SafetensorsFile::read_f32(const SafetensorsTensorInfo& t) const {
  std::vector<float> out(static_cast<size_t>(t.n_elements()));
  read_f32(t, out.data());
  return out;
}

void SafetensorsFile::read_i64(const SafetensorsTensorInfo& t, int64_t* dst) const {
  const uint8_t* p = data(t);
  const int64_t n = t.n_elements();
  check(!is_float(t.dtype), "safetensors ", path_, ": tensor \"", t.name, "\" has dtype ",
        dtype_name(t.dtype), ", which cannot be read as integers (read_i64 takes I64, I32, I16, I8, U8, BOOL)");
  if (n == 0) return;  // dst may be null for an empty tensor
  switch (t.dtype) {
    case DType::I64:
      std::memcpy(dst, p, static_cast<size_t>(n) * 8);
      return;
    case DType::I32:
      for (int64_t i = 0; i < n; i++) {
        int32_t v;
        std::memcpy(&v, p + 4 * i, 4);
        dst[i] = v;
      }
      return;
    case DType::I16:
      for (int64_t i = 0; i < n; i++) {
        int16_t v;
        std::memcpy(&v, p + 2 * i, 2);
        dst[i] = v;
      }
      return;
    case DType::I8:
      for (int64_t i = 0; i < n; i++) dst[i] = static_cast<int8_t>(p[i]);
      return;
    case DType::U8:
    case DType::BOOL:
      for (int64_t i = 0; i < n; i++) dst[i] = p[i];
      return;
    default:
      return;  // unreachable: checked above
  }
}

void write_safetensors(const std::string& path, const std::vector<SafetensorsWriteTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string where = "safetensors " + path;
  std::set<std::string_view> names;
  for (const auto& t : tensors) {
    const std::string tw = where + ": tensor \"" + t.name + "\"";
    check(t.name != "__metadata__", tw, ": the name __metadata__ is reserved");
    check(names.insert(t.name).second, tw, ": name given twice");
    for (int64_t d : t.shape) check(d >= 0, tw, ": negative dimension in shape ", shape_str(t.shape));
    auto nbytes = checked_nbytes(t.shape, dtype_size(t.dtype));
    check(nbytes.has_value() && *nbytes == t.nbytes, tw, ": shape ", shape_str(t.shape), " of ",
          dtype_name(t.dtype), " needs ", nbytes.value_or(0), " bytes but ", t.nbytes, " were given");
    check(t.data != nullptr || t.nbytes == 0, tw, ": data is null");
  }

  // Largest elements first: with the data section 8-aligned every tensor is then aligned
  // to its element size (the reference writer does the same).
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); i++) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return dtype_size(tensors[a].dtype) > dtype_size(tensors[b].dtype);
  });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  uint64_t off = 0;
  for (size_t i : order) {
    const auto& t = tensors[i];
    header[t.name] = {{"dtype", dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {off, off + t.nbytes}}};
    off += t.nbytes;
  }
  std::string hjson = header.dump();
  // Pad with spaces so that the data section starts at a multiple of 8.
  while ((8 + hjson.size()) % 8 != 0) hjson.push_back(' ');
  uint8_t len[8];
  for (int i = 0; i < 8; i++) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(hjson.size()) >> (8 * i));

  // Streamed into a temp file and renamed: tensors can be large, so the file is never assembled in memory.
  AtomicFile out(path, where);
  out.write(len, 8);
  out.write(hjson.data(), hjson.size());
  for (size_t i : order) out.write(tensors[i].data, tensors[i].nbytes);
  out.commit();
}

}  // namespace retort
