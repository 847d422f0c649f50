#include "retort/io/gguf.h"

#include <charconv>
#include <cstring>
#include <limits>

#include "retort/util/error.h"
#include "retort/util/file.h"

namespace retort {

namespace {

constexpr uint32_t kMaxDims = 4;        // GGML_MAX_DIMS
constexpr int kMaxArrayDepth = 16;      // arrays of arrays deeper than this are refused
constexpr uint64_t kDefaultAlignment = 32;

// Bytes of one scalar of type t; 0 for STRING/ARRAY/unknown.
size_t scalar_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8:
    case GgufValueType::INT8:
    case GgufValueType::BOOL: return 1;
    case GgufValueType::UINT16:
    case GgufValueType::INT16: return 2;
    case GgufValueType::UINT32:
    case GgufValueType::INT32:
    case GgufValueType::FLOAT32: return 4;
    case GgufValueType::UINT64:
    case GgufValueType::INT64:
    case GgufValueType::FLOAT64: return 8;
    default: return 0;
  }
}

bool is_integer_type(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8:
    case GgufValueType::INT8:
    case GgufValueType::UINT16:
    case GgufValueType::INT16:
    case GgufValueType::UINT32:
    case GgufValueType::INT32:
    case GgufValueType::UINT64:
    case GgufValueType::INT64: return true;
    default: return false;
  }
}

bool is_unsigned_type(GgufValueType t) {
  return t == GgufValueType::UINT8 || t == GgufValueType::UINT16 || t == GgufValueType::UINT32 ||
         t == GgufValueType::UINT64;
}

bool is_float_type(GgufValueType t) { return t == GgufValueType::FLOAT32 || t == GgufValueType::FLOAT64; }

template <class T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Decode one little-endian scalar of type t at p into a value (integers into i or u, floats into f).
void decode_scalar(GgufValueType t, const uint8_t* p, GgufValue* v) {
  v->type = t;
  switch (t) {
    case GgufValueType::UINT8: v->u = load<uint8_t>(p); break;
    case GgufValueType::INT8: v->i = load<int8_t>(p); break;
    case GgufValueType::UINT16: v->u = load<uint16_t>(p); break;
    case GgufValueType::INT16: v->i = load<int16_t>(p); break;
    case GgufValueType::UINT32: v->u = load<uint32_t>(p); break;
    case GgufValueType::INT32: v->i = load<int32_t>(p); break;
    case GgufValueType::UINT64: v->u = load<uint64_t>(p); break;
    case GgufValueType::INT64: v->i = load<int64_t>(p); break;
    case GgufValueType::FLOAT32: v->f = load<float>(p); break;
    case GgufValueType::FLOAT64: v->f = load<double>(p); break;
    case GgufValueType::BOOL: v->i = load<uint8_t>(p) != 0; break;
    default: break;
  }
}

std::string expected_got(const char* expected, GgufValueType got) {
  return cat("expected ", expected, ", got ", gguf_value_type_name(got));
}

}  // namespace

std::string gguf_value_type_name(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8: return "uint8";
    case GgufValueType::INT8: return "int8";
    case GgufValueType::UINT16: return "uint16";
    case GgufValueType::INT16: return "int16";
    case GgufValueType::UINT32: return "uint32";
    case GgufValueType::INT32: return "int32";
    case GgufValueType::FLOAT32: return "float32";
    case GgufValueType::BOOL: return "bool";
    case GgufValueType::STRING: return "string";
    case GgufValueType::ARRAY: return "array";
    case GgufValueType::UINT64: return "uint64";
    case GgufValueType::INT64: return "int64";
    case GgufValueType::FLOAT64: return "float64";
  }
  return cat("unknown(", static_cast<uint32_t>(t), ")");
}

// ---------------------------------------------------------------------------------------------
// GgufValue

bool GgufValue::is_integer() const { return is_integer_type(type); }
bool GgufValue::is_float() const { return is_float_type(type); }

int64_t GgufValue::as_int() const {
  if (!is_integer_type(type)) fail(expected_got("an integer", type));
  if (is_unsigned_type(type)) {
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail("value ", u, " does not fit in int64");
    return static_cast<int64_t>(u);
  }
  return i;
}

uint64_t GgufValue::as_uint() const {
  if (!is_integer_type(type)) fail(expected_got("an integer", type));
  if (is_unsigned_type(type)) return u;
  if (i < 0) fail("expected a non-negative integer, got ", i);
  return static_cast<uint64_t>(i);
}

double GgufValue::as_float() const {
  if (is_float_type(type)) return f;
  if (is_integer_type(type)) return is_unsigned_type(type) ? static_cast<double>(u) : static_cast<double>(i);
  fail(expected_got("a number", type));
}

bool GgufValue::as_bool() const {
  if (type != GgufValueType::BOOL) fail(expected_got("bool", type));
  return i != 0;
}

std::string_view GgufValue::as_string() const {
  if (type != GgufValueType::STRING) fail(expected_got("string", type));
  return str;
}

GgufValueType GgufValue::array_type() const {
  if (type != GgufValueType::ARRAY) fail(expected_got("array", type));
  return elem_type;
}

size_t GgufValue::array_size() const {
  if (type != GgufValueType::ARRAY) fail(expected_got("array", type));
  return static_cast<size_t>(count);
}

namespace {
void check_index(const GgufValue& v, size_t i) {
  if (v.type != GgufValueType::ARRAY) fail(expected_got("array", v.type));
  if (i >= v.count) fail("array index ", i, " out of range (", v.count, " elements)");
}
GgufValue scalar_at(const GgufValue& v, size_t i) {
  GgufValue e;
  decode_scalar(v.elem_type, v.raw.data() + i * scalar_size(v.elem_type), &e);
  return e;
}
}  // namespace

int64_t GgufValue::int_at(size_t k) const {
  check_index(*this, k);
  if (!is_integer_type(elem_type)) fail(expected_got("an array of integers", elem_type), " elements");
  return scalar_at(*this, k).as_int();
}

double GgufValue::float_at(size_t k) const {
  check_index(*this, k);
  if (!is_integer_type(elem_type) && !is_float_type(elem_type))
    fail(expected_got("an array of numbers", elem_type), " elements");
  return scalar_at(*this, k).as_float();
}

bool GgufValue::bool_at(size_t k) const {
  check_index(*this, k);
  if (elem_type != GgufValueType::BOOL) fail(expected_got("an array of bools", elem_type), " elements");
  return raw[k] != 0;
}

std::string_view GgufValue::string_at(size_t k) const {
  check_index(*this, k);
  if (elem_type != GgufValueType::STRING) fail(expected_got("an array of strings", elem_type), " elements");
  const uint64_t begin = k == 0 ? 0 : str_ends[k - 1];
  return std::string_view(str).substr(begin, str_ends[k] - begin);
}

const GgufValue& GgufValue::array_at(size_t k) const {
  check_index(*this, k);
  if (elem_type != GgufValueType::ARRAY) fail(expected_got("an array of arrays", elem_type), " elements");
  return children[k];
}

std::vector<std::string> GgufValue::as_string_array() const {
  if (array_type() != GgufValueType::STRING) fail(expected_got("an array of strings", elem_type), " elements");
  std::vector<std::string> out;
  out.reserve(count);
  for (size_t k = 0; k < count; ++k) out.emplace_back(string_at(k));
  return out;
}

std::vector<int64_t> GgufValue::as_int_array() const {
  if (!is_integer_type(array_type())) fail(expected_got("an array of integers", elem_type), " elements");
  std::vector<int64_t> out(count);
  for (size_t k = 0; k < count; ++k) out[k] = int_at(k);
  return out;
}

std::vector<double> GgufValue::as_float_array() const {
  const GgufValueType et = array_type();
  if (!is_integer_type(et) && !is_float_type(et)) fail(expected_got("an array of numbers", et), " elements");
  std::vector<double> out(count);
  for (size_t k = 0; k < count; ++k) out[k] = float_at(k);
  return out;
}

// ---------------------------------------------------------------------------------------------
// GgufTensorInfo

int64_t GgufTensorInfo::n_elements() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;  // the parser checked that this cannot overflow
  return n;
}

std::vector<int64_t> GgufTensorInfo::shape() const { return std::vector<int64_t>(ne.rbegin(), ne.rend()); }

// ---------------------------------------------------------------------------------------------
// Parser: a bounds-checked cursor over the whole file.

class GgufParser {
 public:
  GgufParser(const uint8_t* data, size_t size, const std::string& name) : d_(data), n_(size), name_(name) {}

  GgufFile run();

 private:
  const uint8_t* d_;
  size_t n_;
  size_t pos_ = 0;
  const std::string& name_;
  std::string where_;  // what is being read, for messages: "header", "metadata key 'x'", ...

  size_t left() const { return n_ - pos_; }

  template <class... Parts>
  [[noreturn]] void error(Parts&&... parts) const {
    fail(name_, ": ", where_, ": ", std::forward<Parts>(parts)...);
  }

  void need(uint64_t bytes, const char* what) {
    if (bytes > left())
      error("truncated: ", what, " at byte ", pos_, " needs ", bytes, " bytes but only ", left(),
            " remain (file is ", n_, " bytes); the file is incomplete or corrupt");
  }
  template <class T>
  T take(const char* what) {
    need(sizeof(T), what);
    T v = load<T>(d_ + pos_);
    pos_ += sizeof(T);
    return v;
  }
  std::string_view take_string(const char* what) {
    const uint64_t len = take<uint64_t>(what);
    if (len > left())
      error(what, " at byte ", pos_ - 8, " claims ", len, " bytes but only ", left(),
            " remain in the file (truncated or corrupt)");
    std::string_view s(reinterpret_cast<const char*>(d_ + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return s;
  }

  GgufValueType take_value_type(const char* what) {
    const uint32_t t = take<uint32_t>(what);
    if (t > static_cast<uint32_t>(GgufValueType::FLOAT64))
      error("unknown ", what, " ", t, " (valid: 0..12)");
    return static_cast<GgufValueType>(t);
  }

  void read_value(GgufValueType t, int depth, GgufValue* v);
  void read_array(int depth, GgufValue* v);
};

void GgufParser::read_value(GgufValueType t, int depth, GgufValue* v) {
  if (t == GgufValueType::STRING) {
    v->type = t;
    v->str.assign(take_string("string value"));
  } else if (t == GgufValueType::ARRAY) {
    read_array(depth + 1, v);
  } else {
    const size_t sz = scalar_size(t);
    need(sz, "scalar value");
    decode_scalar(t, d_ + pos_, v);
    pos_ += sz;
  }
}

void GgufParser::read_array(int depth, GgufValue* v) {
  if (depth > kMaxArrayDepth) error("arrays nested more than ", kMaxArrayDepth, " deep");
  v->type = GgufValueType::ARRAY;
  v->elem_type = take_value_type("array element type");
  v->count = take<uint64_t>("array length");
  // Smallest encoding of one element: a scalar's size, 8 (string length), 12 (array header).
  const GgufValueType et = v->elem_type;
  const uint64_t min_elem = et == GgufValueType::STRING ? 8 : et == GgufValueType::ARRAY ? 12 : scalar_size(et);
  if (v->count > left() / min_elem)
    error("array of ", v->count, " ", gguf_value_type_name(et), " elements cannot fit in the ", left(),
          " bytes left in the file (truncated or corrupt)");
  const size_t count = static_cast<size_t>(v->count);
  if (et == GgufValueType::STRING) {
    v->str_ends.reserve(count);
    for (size_t k = 0; k < count; ++k) {
      v->str.append(take_string("string array element"));
      v->str_ends.push_back(v->str.size());
    }
  } else if (et == GgufValueType::ARRAY) {
    v->children.resize(count);
    for (size_t k = 0; k < count; ++k) read_array(depth + 1, &v->children[k]);
  } else {
    const size_t nbytes = count * min_elem;
    v->raw.assign(d_ + pos_, d_ + pos_ + nbytes);
    pos_ += nbytes;
  }
}

GgufFile GgufParser::run() {
  GgufFile f;
  f.path_ = name_;
  f.data_ = d_;
  f.size_ = n_;

  where_ = "header";
  if (n_ < 4 || std::memcmp(d_, "GGUF", 4) != 0) {
    std::string magic;
    for (size_t k = 0; k < 4 && k < n_; ++k) {
      const char c = static_cast<char>(d_[k]);
      magic += (c >= 32 && c < 127) ? std::string(1, c) : cat("\\x", "0123456789abcdef"[(d_[k] >> 4) & 15],
                                                             "0123456789abcdef"[d_[k] & 15]);
    }
    fail(name_, ": not a GGUF file (starts with \"", magic, "\", expected \"GGUF\")");
  }
  pos_ = 4;
  const uint32_t version = take<uint32_t>("version");
  if (version != 2 && version != 3) {
    if (version == 1)
      fail(name_, ": GGUF version 1 is not supported (supported: 2 and 3); re-convert the model with a current "
                  "llama.cpp");
    if ((version & 0xFFFFu) == 0 && version != 0)
      fail(name_, ": GGUF version field is ", version,
           ", which looks like a big-endian GGUF file; only little-endian GGUF versions 2 and 3 are supported");
    fail(name_, ": GGUF version ", version, " is not supported (supported: 2 and 3)");
  }
  f.version_ = version;
  const uint64_t n_tensors = take<uint64_t>("tensor count");
  const uint64_t n_kv = take<uint64_t>("metadata count");
  // Smallest encodings: a key-value is 8 (key length) + 4 (type) + 1; a tensor info 8 + 4 + 8 + 4 + 8.
  if (n_kv > left() / 13)
    error("metadata count ", n_kv, " cannot fit in the ", left(), " bytes left in the file (truncated or corrupt)");
  if (n_tensors > left() / 32)
    error("tensor count ", n_tensors, " cannot fit in the ", left(), " bytes left in the file (truncated or corrupt)");

  f.kv_.reserve(static_cast<size_t>(n_kv));
  for (uint64_t k = 0; k < n_kv; ++k) {
    where_ = cat("metadata entry ", k);
    std::string key(take_string("key"));
    where_ = cat("metadata key '", key, "'");
    if (f.kv_index_.count(key)) error("duplicate key");
    const GgufValueType t = take_value_type("value type");
    GgufValue v;
    read_value(t, 0, &v);
    f.kv_index_.emplace(key, f.kv_.size());
    f.kv_.emplace_back(std::move(key), std::move(v));
  }

  f.tensors_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    where_ = cat("tensor info ", k);
    GgufTensorInfo t;
    t.name = take_string("tensor name");
    where_ = cat("tensor '", t.name, "'");
    if (f.tensor_index_.count(t.name)) error("duplicate tensor name");
    const uint32_t n_dims = take<uint32_t>("n_dims");
    if (n_dims == 0 || n_dims > kMaxDims) error("n_dims is ", n_dims, " (must be 1..", kMaxDims, ")");
    int64_t n_elem = 1;
    for (uint32_t j = 0; j < n_dims; ++j) {
      const uint64_t d = take<uint64_t>("dimension");
      if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        error("ne[", j, "] = ", d, " is negative as int64");
      t.ne.push_back(static_cast<int64_t>(d));
      if (d != 0 && n_elem > std::numeric_limits<int64_t>::max() / static_cast<int64_t>(d))
        error("element count overflows int64 (ne[", j, "] = ", d, ")");
      n_elem *= static_cast<int64_t>(d);
    }
    t.type = take<uint32_t>("tensor type");
    t.offset = take<uint64_t>("tensor offset");  // relative for now
    f.tensor_index_.emplace(t.name, f.tensors_.size());
    f.tensors_.push_back(std::move(t));
  }
  const size_t header_end = pos_;

  where_ = "general.alignment";
  if (const GgufValue* a = f.find("general.alignment")) {
    if (!a->is_integer()) error("expected an integer, got ", gguf_value_type_name(a->type));
    const bool negative = !is_unsigned_type(a->type) && a->i < 0;
    const uint64_t al = negative ? 0 : a->as_uint();
    if (negative || al == 0 || (al & (al - 1)) != 0 || al > (uint64_t{1} << 32))
      error("alignment ", negative ? a->i : static_cast<int64_t>(al), " is not a power of two (up to 2^32)");
    f.alignment_ = al;
  } else {
    f.alignment_ = kDefaultAlignment;
  }
  f.data_offset_ = (header_end + f.alignment_ - 1) / f.alignment_ * f.alignment_;
  if (!f.tensors_.empty() && f.data_offset_ > n_)
    fail(name_, ": truncated: the tensor data section starts at byte ", f.data_offset_, " but the file is ", n_,
         " bytes");

  for (GgufTensorInfo& t : f.tensors_) {
    where_ = cat("tensor '", t.name, "'");
    if (t.offset % f.alignment_ != 0)
      error("data offset ", t.offset, " is not a multiple of the alignment ", f.alignment_);
    if (t.offset > n_ - std::min<uint64_t>(f.data_offset_, n_))
      error("data offset ", t.offset, " is past the end of the file (data section starts at ", f.data_offset_,
            ", file is ", n_, " bytes)");
    t.offset += f.data_offset_;
    int64_t be = 0, bb = 0;
    if (ggml_type_layout(t.type, &be, &bb)) {
      if (t.ne[0] % be != 0)
        error("ne[0] = ", t.ne[0], " is not a multiple of the ", ggml_type_name(t.type), " block size ", be);
      const uint64_t blocks = static_cast<uint64_t>(t.n_elements() / be);
      uint64_t nbytes = 0;
      if (__builtin_mul_overflow(blocks, static_cast<uint64_t>(bb), &nbytes) || nbytes > n_ - t.offset)
        error(ggml_type_name(t.type), " data of ", blocks, " blocks x ", bb, " bytes at byte ", t.offset,
              " runs past the end of the file (", n_, " bytes); the file is truncated or corrupt");
      t.nbytes = nbytes;
    }
    // Unknown type ids are kept (listing works); read_f32 refuses them.
  }
  return f;
}

// ---------------------------------------------------------------------------------------------
// GgufFile

GgufFile GgufFile::open(const std::string& path) {
  auto map = std::make_shared<const MappedFile>(path);
  GgufFile f = parse(map->data(), map->size(), path);
  f.map_ = std::move(map);
  return f;
}

GgufFile GgufFile::parse(const uint8_t* data, size_t size, const std::string& name) {
  static const uint8_t kEmpty[1] = {0};
  return GgufParser(data ? data : kEmpty, data ? size : 0, name).run();
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GgufValue& GgufFile::get(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) fail(path_, ": metadata key '", key, "' is missing");
  return *v;
}

std::vector<std::string> GgufFile::keys() const {
  std::vector<std::string> out;
  out.reserve(kv_.size());
  for (const auto& kv : kv_) out.push_back(kv.first);
  return out;
}

// Run f(value) and re-throw any type error with the file and key in front.
template <class T, class F>
T GgufFile::typed(std::string_view key, const char* what, F&& f) const {
  const GgufValue& v = get(key);
  try {
    return f(v);
  } catch (const Error& e) {
    fail(path_, ": metadata key '", key, "': ", e.what(), " (wanted ", what, ")");
  }
}

std::string GgufFile::get_string(std::string_view key) const {
  return typed<std::string>(key, "string", [](const GgufValue& v) { return std::string(v.as_string()); });
}
int64_t GgufFile::get_int(std::string_view key) const {
  return typed<int64_t>(key, "integer", [](const GgufValue& v) { return v.as_int(); });
}
double GgufFile::get_float(std::string_view key) const {
  return typed<double>(key, "number", [](const GgufValue& v) { return v.as_float(); });
}
bool GgufFile::get_bool(std::string_view key) const {
  return typed<bool>(key, "bool", [](const GgufValue& v) { return v.as_bool(); });
}
std::optional<int64_t> GgufFile::find_int(std::string_view key) const {
  if (!find(key)) return std::nullopt;
  return get_int(key);
}
std::optional<double> GgufFile::find_float(std::string_view key) const {
  if (!find(key)) return std::nullopt;
  return get_float(key);
}
std::optional<std::string> GgufFile::find_string(std::string_view key) const {
  if (!find(key)) return std::nullopt;
  return get_string(key);
}
std::optional<bool> GgufFile::find_bool(std::string_view key) const {
  if (!find(key)) return std::nullopt;
  return get_bool(key);
}
std::vector<std::string> GgufFile::get_string_array(std::string_view key) const {
  return typed<std::vector<std::string>>(key, "array of strings",
                                         [](const GgufValue& v) { return v.as_string_array(); });
}
std::vector<int64_t> GgufFile::get_int_array(std::string_view key) const {
  return typed<std::vector<int64_t>>(key, "array of integers", [](const GgufValue& v) { return v.as_int_array(); });
}
std::vector<double> GgufFile::get_float_array(std::string_view key) const {
  return typed<std::vector<double>>(key, "array of numbers", [](const GgufValue& v) { return v.as_float_array(); });
}

namespace {

void append_quoted(std::string* out, std::string_view s) {
  static const char* hex = "0123456789abcdef";
  out->push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\n': *out += "\\n"; break;
      case '\r': *out += "\\r"; break;
      case '\t': *out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7F) {
          *out += "\\x";
          out->push_back(hex[c >> 4]);
          out->push_back(hex[c & 15]);
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
  }
  out->push_back('"');
}

void append_scalar(std::string* out, const GgufValue& v) {
  char buf[64];
  std::to_chars_result r{};
  switch (v.type) {
    case GgufValueType::BOOL: *out += v.i ? "true" : "false"; return;
    case GgufValueType::FLOAT32: r = std::to_chars(buf, buf + sizeof buf, static_cast<float>(v.f)); break;
    case GgufValueType::FLOAT64: r = std::to_chars(buf, buf + sizeof buf, v.f); break;
    default:
      if (is_unsigned_type(v.type)) r = std::to_chars(buf, buf + sizeof buf, v.u);
      else r = std::to_chars(buf, buf + sizeof buf, v.i);
  }
  out->append(buf, r.ptr);
}

void append_value(std::string* out, const GgufValue& v, size_t max_items) {
  if (v.type == GgufValueType::STRING) return append_quoted(out, v.str);
  if (v.type != GgufValueType::ARRAY) return append_scalar(out, v);
  out->push_back('[');
  const size_t shown = std::min<uint64_t>(v.count, max_items);
  for (size_t k = 0; k < shown; ++k) {
    if (k) *out += ", ";
    if (v.elem_type == GgufValueType::STRING) append_quoted(out, v.string_at(k));
    else if (v.elem_type == GgufValueType::ARRAY) append_value(out, v.children[k], max_items);
    else append_scalar(out, scalar_at(v, k));
  }
  if (shown < v.count) *out += cat(shown ? ", " : "", "... (", v.count, " ", gguf_value_type_name(v.elem_type), "s)");
  out->push_back(']');
}

}  // namespace

std::string GgufFile::value_to_string(std::string_view key, size_t max_array_items) const {
  std::string out;
  append_value(&out, get(key), max_array_items);
  return out;
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

void GgufFile::read_f32(const GgufTensorInfo& t, float* dst) const {
  if (!ggml_type_supported(t.type))
    fail(path_, ": tensor '", t.name, "' has type ", ggml_type_name(t.type), " (id ", t.type,
         "), which retort cannot dequantize (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, "
         "Q3_K, Q4_K, Q5_K, Q6_K, Q8_K); re-quantize the model to one of these");
  int64_t be = 0, bb = 0;
  ggml_type_block(t.type, &be, &bb);
  const int64_t n = t.n_elements();
  check(n % be == 0 && static_cast<uint64_t>(n / be) * static_cast<uint64_t>(bb) == t.nbytes &&
            t.offset <= size_ && t.nbytes <= size_ - t.offset,
        path_, ": tensor '", t.name, "': size or offset does not match the file");
  // Plain single-threaded loops: the whole 135M model (Q4_1) dequantizes in ~0.2 s on one core.
  dequantize(static_cast<GgmlType>(t.type), data_ + t.offset, dst, n);
}

}  // namespace retort
