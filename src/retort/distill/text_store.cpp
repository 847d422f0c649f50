// retort/distill/text_store.cpp — see text_store.h.
#include "retort/distill/text_store.h"

#include <cstdio>
#include <filesystem>

#include "retort/protect/keys.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

namespace retort {

namespace fs = std::filesystem;
using nlohmann::json;

std::string bytes_to_hex(std::string_view b) {
  static const char* d = "0123456789abcdef";
  std::string s;
  s.reserve(b.size() * 2);
  for (unsigned char c : b) s += {d[c >> 4], d[c & 15]};
  return s;
}

std::string hex_to_bytes(const std::string& h, const std::string& where) {
  auto v = [&](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    fail(where, ": \"", h, "\" is not lowercase hex");
  };
  check(h.size() % 2 == 0, where, ": \"", h, "\" is not hex bytes");
  std::string b(h.size() / 2, '\0');
  for (size_t i = 0; i < b.size(); ++i) b[i] = char(v(h[2 * i]) * 16 + v(h[2 * i + 1]));
  return b;
}

namespace {

// A field of a record: present and of the right kind, else an error naming it.
const json& field(const json& r, const char* name, json::value_t kind, const std::string& where) {
  check(r.contains(name), where, ": the record has no field \"", name, "\"");
  const json& v = r[name];
  const bool ok = kind == json::value_t::number_integer ? v.is_number_integer()
                  : kind == json::value_t::number_float ? v.is_number()
                                                        : v.type() == kind;
  check(ok, where, ": field \"", name, "\" has the wrong type (", v.type_name(), ")");
  return v;
}

float logprob_of(const json& v, const std::string& where) {
  check(v.is_number(), where, ": a logprob is not a number (", v.dump(), ")");
  const double x = v.get<double>();
  check(x <= 1e-3, where, ": logprob ", x, " is above 0");
  return float(std::max(x, -9999.0));  // OpenAI's "never"; clamps -inf renderings
}

TextSample parse_record(const json& r, const std::string& where, int64_t k) {
  using vt = json::value_t;
  TextSample s;
  s.where = where;
  s.sample_id = field(r, "sample_id", vt::number_integer, where).get<int64_t>();
  s.prompt_index = field(r, "prompt_index", vt::number_integer, where).get<int64_t>();
  s.sample_index = field(r, "sample_index", vt::number_integer, where).get<int64_t>();
  if (r.contains("messages")) {
    const json& ms = field(r, "messages", vt::array, where);
    check(!ms.empty(), where, ": field \"messages\" is empty");
    for (const json& m : ms) {
      check(m.is_object() && m.contains("role") && m["role"].is_string() && m.contains("content") &&
                m["content"].is_string(),
            where, ": field \"messages\": each message needs string fields \"role\" and \"content\"");
      s.messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    }
    s.chat = true;
  } else {
    s.prompt = field(r, "prompt", vt::string, where).get<std::string>();
  }
  s.completion = field(r, "completion", vt::string, where).get<std::string>();
  s.finish_reason = r.contains("finish_reason") && r["finish_reason"].is_string() ? r["finish_reason"].get<std::string>() : "";
  if (k > 0) {
    const json& toks = field(r, "tokens", vt::array, where);
    s.has_tokens = true;
    for (size_t j = 0; j < toks.size(); ++j) {
      const std::string at = cat(where, ": tokens[", j, "]");
      const json& t = toks[j];
      check(t.is_object(), at, " is not an object");
      TextToken x;
      x.bytes = hex_to_bytes(field(t, "bytes", vt::string, at).get<std::string>(), at + ".bytes");
      x.logprob = logprob_of(field(t, "logprob", vt::number_float, at), at + ".logprob");
      const json& top = field(t, "top", vt::array, at);
      for (size_t q = 0; q < top.size(); ++q) {
        const json& e = top[q];
        check(e.is_array() && e.size() >= 2 && e[0].is_string(), at, ".top[", q, "] is not [hex bytes, logprob]");
        x.top.push_back({hex_to_bytes(e[0].get<std::string>(), cat(at, ".top[", q, "]")),
                         logprob_of(e[1], cat(at, ".top[", q, "]"))});
      }
      // A stop token the server listed (llama-server): no bytes, at the end of a stopped answer.
      if (x.bytes.empty() && j + 1 == toks.size() && s.finish_reason == "stop") break;
      check(int64_t(x.top.size()) >= k, at, ": ", x.top.size(), " top_logprobs, fewer than the store's k = ", k);
      x.top.resize(size_t(k));
      s.tokens.push_back(std::move(x));
    }
  }
  return s;
}

uint64_t fnv1a(std::string_view s, uint64_t h = 0xcbf29ce484222325ull) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

}  // namespace

bool TextStore::is_text_store(const std::string& dir) {
  const std::string mpath = dir + "/manifest.json";
  std::error_code ec;
  if (!fs::is_regular_file(mpath, ec)) return false;
  json m = json::parse(read_file(mpath), nullptr, /*allow_exceptions=*/false);
  return m.is_object() && m.value("format", "") == kTextStoreFormat;
}

TextStore TextStore::open(const std::string& dir) {
  TextStore st;
  st.dir_ = dir;
  const std::string mpath = dir + "/manifest.json";
  check(fs::is_regular_file(mpath), "text store ", dir, ": no manifest.json (is this a store of `retort capture`?)");
  st.manifest_ = json::parse(read_file(mpath), nullptr, /*allow_exceptions=*/false);
  const json& m = st.manifest_;
  check(!m.is_discarded() && m.is_object(), mpath, ": not valid JSON");
  check(m.value("format", "") == kTextStoreFormat, mpath, ": format ", m.value("format", json()).dump(), ", not \"",
        kTextStoreFormat, "\"");
  check(m.value("version", int64_t(0)) == kTextStoreVersion, mpath, ": text store version ", m.value("version", json()).dump(),
        " is not supported (this retort reads version ", kTextStoreVersion, ")");
  check(m.contains("shards") && m["shards"].is_array(), mpath, ": field \"shards\" must be an array");
  const json signal = m.contains("source") && m["source"].is_object() ? m["source"].value("signal", json()) : json();
  if (signal == "logprobs") {
    check(m.contains("k") && m["k"].is_number_integer() && m["k"].get<int64_t>() >= 1, mpath,
          ": a logprobs store needs an integer field \"k\" >= 1");
    st.k_ = m["k"].get<int64_t>();
  }
  for (size_t i = 0; i < m["shards"].size(); ++i) {
    const json& sh = m["shards"][i];
    check(sh.is_object() && sh.contains("file") && sh["file"].is_string() && sh.contains("bytes") &&
              sh["bytes"].is_number_integer() && sh.contains("sha256") && sh["sha256"].is_string(),
          mpath, ": shards[", i, "] needs \"file\", \"bytes\" and \"sha256\"");
    const std::string file = sh["file"].get<std::string>();
    check(file.find('/') == std::string::npos && file != ".." && !file.empty(), mpath, ": shards[", i, "].file \"",
          file, "\" is not a file name in the store");
    const std::string path = dir + "/" + file;
    check(fs::is_regular_file(path), path, " is listed in manifest.json but missing; the store is damaged");
    const std::string body = read_file(path);
    check(int64_t(body.size()) == sh["bytes"].get<int64_t>(), path, " is ", body.size(), " bytes, manifest.json says ",
          sh["bytes"].get<int64_t>(), ": the store is damaged (truncated?)");
    check(sha256_hex(reinterpret_cast<const uint8_t*>(body.data()), body.size()) == sh["sha256"].get<std::string>(),
          path, " does not match its sha256 in manifest.json: the store is damaged");
    size_t start = 0;
    int64_t line = 0;
    while (start < body.size()) {
      size_t end = body.find('\n', start);
      if (end == std::string::npos) end = body.size();
      ++line;
      const std::string where = cat(path, ":", line);
      if (end > start) {
        json r = json::parse(body.substr(start, end - start), nullptr, /*allow_exceptions=*/false);
        check(!r.is_discarded() && r.is_object(), where, ": not a JSON object");
        st.samples_.push_back(parse_record(r, where, st.k_));
      }
      start = end + 1;
    }
  }
  return st;
}

std::string TextStore::identity() const {
  uint64_t h = fnv1a(std::to_string(samples_.size()) + "|" + std::to_string(k_));
  for (const json& sh : manifest_["shards"]) h = fnv1a("|" + sh["sha256"].get<std::string>(), h);
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace retort
