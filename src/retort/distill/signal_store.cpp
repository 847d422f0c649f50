// retort/distill/signal_store.cpp — see signal_store.h (layout) and docs/formats.md ("Signal store").
#include "retort/distill/signal_store.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include "retort/io/safetensors.h"
#include "retort/protect/keys.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

namespace retort {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kFormat = "retort-signal-store";
constexpr int kVersion = 1;
constexpr const char* kManifestName = "manifest.json";

std::string sha256_of_mapping(const MappedFile& m) { return sha256_hex(m.data(), m.size()); }

std::string shard_file_name(size_t index) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "shard-%05zu.safetensors", index);
  return buf;
}

// Field accessors for from_json: each names the manifest file and the field on failure.
const json& need(const json& j, const char* key, const std::string& path) {
  auto it = j.find(key);
  check(it != j.end(), "signal store manifest ", path, ": missing field \"", key, "\"");
  return *it;
}
int64_t need_int(const json& j, const char* key, const std::string& path) {
  const json& v = need(j, key, path);
  check(v.is_number_integer(), "signal store manifest ", path, ": field \"", key, "\" must be an integer, got ",
        v.type_name());
  return v.get<int64_t>();
}
std::string need_string(const json& j, const char* key, const std::string& path) {
  const json& v = need(j, key, path);
  check(v.is_string(), "signal store manifest ", path, ": field \"", key, "\" must be a string, got ", v.type_name());
  return v.get<std::string>();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// StoreManifest

json StoreManifest::to_json() const {
  json sh = json::array();
  for (const auto& s : shards)
    sh.push_back({{"file", s.file},
                  {"samples", s.samples},
                  {"tokens", s.tokens},
                  {"scored", s.scored},
                  {"bytes", s.bytes},
                  {"sha256", s.sha256}});
  return {{"format", kFormat},    {"version", kVersion},       {"mode", mode},           {"teacher", teacher},
          {"tokenizer_hash", tokenizer_hash}, {"n_vocab", n_vocab}, {"k", k},         {"generation", generation},
          {"watermark", watermark}, {"prompts", prompts},      {"source", source},       {"shards", sh},
          {"complete", complete}};
}

StoreManifest StoreManifest::from_json(const json& j, const std::string& path) {
  check(j.is_object(), "signal store manifest ", path, ": must be a JSON object, got ", j.type_name());
  std::string format = need_string(j, "format", path);
  check(format == kFormat, "signal store manifest ", path, ": \"format\" is \"", format, "\", expected \"", kFormat,
        "\" (is this a signal store written by `retort capture`?)");
  int64_t version = need_int(j, "version", path);
  check(version == kVersion, "signal store manifest ", path, ": version ", version,
        " is not supported by this retort (it reads version ", kVersion, "); re-capture with this version");
  StoreManifest m;
  m.mode = need_string(j, "mode", path);
  check(m.mode == "generate" || m.mode == "score", "signal store manifest ", path, ": \"mode\" must be \"generate\" or \"score\", got \"",
        m.mode, "\"");
  m.teacher = need(j, "teacher", path);
  check(m.teacher.is_object(), "signal store manifest ", path, ": \"teacher\" must be an object");
  m.tokenizer_hash = need_string(j, "tokenizer_hash", path);
  m.n_vocab = need_int(j, "n_vocab", path);
  check(m.n_vocab > 0, "signal store manifest ", path, ": \"n_vocab\" must be positive, got ", m.n_vocab);
  m.k = need_int(j, "k", path);
  check(m.k >= 1 && m.k <= m.n_vocab, "signal store manifest ", path, ": \"k\" must be in [1, n_vocab], got ", m.k);
  m.generation = need(j, "generation", path);
  check(m.generation.is_object(), "signal store manifest ", path, ": \"generation\" must be an object");
  m.watermark = need(j, "watermark", path);
  check(m.watermark.is_null() || m.watermark.is_object(), "signal store manifest ", path,
        ": \"watermark\" must be null or an object");
  m.prompts = need(j, "prompts", path);
  check(m.prompts.is_object(), "signal store manifest ", path, ": \"prompts\" must be an object");
  m.source = j.contains("source") ? j["source"] : json();  // absent in stores written before API capture
  check(m.source.is_null() || m.source.is_object(), "signal store manifest ", path,
        ": \"source\" must be null or an object");
  const json& complete = need(j, "complete", path);
  check(complete.is_boolean(), "signal store manifest ", path, ": \"complete\" must be true or false");
  m.complete = complete.get<bool>();
  const json& shards = need(j, "shards", path);
  check(shards.is_array(), "signal store manifest ", path, ": \"shards\" must be an array");
  std::set<std::string> seen;
  for (size_t i = 0; i < shards.size(); ++i) {
    const json& s = shards[i];
    std::string where = cat(path, " shards[", i, "]");
    check(s.is_object(), "signal store manifest ", where, ": must be an object");
    Shard sh;
    sh.file = need_string(s, "file", where);
    check(!sh.file.empty() && sh.file.find('/') == std::string::npos && sh.file != "." && sh.file != "..",
          "signal store manifest ", where, ": \"file\" must be a plain file name in the store directory, got \"",
          sh.file, "\"");
    check(seen.insert(sh.file).second, "signal store manifest ", where, ": file \"", sh.file, "\" is listed twice");
    sh.samples = need_int(s, "samples", where);
    sh.tokens = need_int(s, "tokens", where);
    sh.scored = need_int(s, "scored", where);
    sh.bytes = need_int(s, "bytes", where);
    check(sh.samples >= 0 && sh.tokens >= 0 && sh.scored >= 0 && sh.bytes > 0, "signal store manifest ", where,
          ": samples/tokens/scored must be >= 0 and bytes > 0");
    sh.sha256 = need_string(s, "sha256", where);
    check(sh.sha256.size() == 64 && sh.sha256.find_first_not_of("0123456789abcdef") == std::string::npos,
          "signal store manifest ", where, ": \"sha256\" must be 64 lowercase hex digits");
    m.shards.push_back(std::move(sh));
  }
  return m;
}

// ---------------------------------------------------------------------------------------------
// SignalStore

namespace {

// One validated shard. Pointers point into the mapping, or into `owned` when a foreign
// writer left a tensor misaligned for its element type.
struct ShardView {
  SafetensorsFile file;
  std::vector<std::vector<uint8_t>> owned;
  const int32_t* tokens = nullptr;
  const int64_t* offsets = nullptr;  // [S + 1]
  const int32_t* prompt_lens = nullptr;
  const int64_t* ids = nullptr;
  const float* token_logprob = nullptr;
  const int32_t* topk_ids = nullptr;
  const float* topk_logprobs = nullptr;
  const float* tail = nullptr;
  std::vector<int64_t> scored_start;  // [S] first scored position of each sample
  int64_t n_samples = 0;
};

template <class T>
const T* aligned_data(ShardView& v, const SafetensorsTensorInfo& t) {
  const uint8_t* p = v.file.data(t);
  if (reinterpret_cast<uintptr_t>(p) % alignof(T) == 0) return reinterpret_cast<const T*>(p);
  v.owned.emplace_back(p, p + (t.end - t.begin));
  // std::vector's buffer comes from operator new: aligned for any fundamental type.
  return reinterpret_cast<const T*>(v.owned.back().data());
}

ShardView open_shard(const std::string& dir, const StoreManifest& m, const StoreManifest::Shard& sh) {
  const std::string path = dir + "/" + sh.file;
  const std::string what = cat("signal store ", dir, ": shard ", sh.file);
  const std::string remedy =
      "; the store is damaged — re-run `retort capture` into a new --out directory (or delete this shard and the "
      "manifest entries from it on, then resume)";
  check(fs::exists(path), what, " is listed in manifest.json but missing", remedy);
  MappedFile map(path);
  check(int64_t(map.size()) >= sh.bytes, what, " is truncated: ", map.size(), " of ", sh.bytes, " bytes", remedy);
  check(int64_t(map.size()) == sh.bytes, what, " has ", map.size(), " bytes but manifest.json says ", sh.bytes,
        remedy);
  std::string digest = sha256_of_mapping(map);
  check(digest == sh.sha256, what, " is corrupt: its sha256 is ", digest, " but manifest.json says ", sh.sha256,
        remedy);

  ShardView v;
  try {
    v.file = SafetensorsFile::open(path);
  } catch (const Error& e) {
    fail(what, ": ", e.what(), remedy);
  }
  const int64_t S = sh.samples, T = sh.tokens, C = sh.scored, k = m.k;
  auto get = [&](const char* name, DType dtype, std::vector<int64_t> shape) -> const SafetensorsTensorInfo& {
    const SafetensorsTensorInfo* t = v.file.find(name);
    check(t != nullptr, what, ": tensor \"", name, "\" is missing", remedy);
    check(t->dtype == dtype, what, ": tensor \"", name, "\" has dtype ", dtype_name(t->dtype), ", expected ",
          dtype_name(dtype), remedy);
    auto shape_str = [](const std::vector<int64_t>& s) {
      std::string r = "[";
      for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
      return r + "]";
    };
    check(t->shape == shape, what, ": tensor \"", name, "\" has shape ", shape_str(t->shape), ", expected ",
          shape_str(shape), " (from manifest.json: samples ", S, ", tokens ", T, ", scored ", C, ", k ", k, ")",
          remedy);
    return *t;
  };
  v.tokens = aligned_data<int32_t>(v, get("tokens", DType::I32, {T}));
  v.offsets = aligned_data<int64_t>(v, get("sample_offsets", DType::I64, {S + 1}));
  v.prompt_lens = aligned_data<int32_t>(v, get("prompt_lengths", DType::I32, {S}));
  v.ids = aligned_data<int64_t>(v, get("sample_ids", DType::I64, {S}));
  v.token_logprob = aligned_data<float>(v, get("token_logprob", DType::F32, {C}));
  v.topk_ids = aligned_data<int32_t>(v, get("topk_ids", DType::I32, {C, k}));
  v.topk_logprobs = aligned_data<float>(v, get("topk_logprobs", DType::F32, {C, k}));
  v.tail = aligned_data<float>(v, get("tail_mass", DType::F32, {C}));
  v.n_samples = S;

  // Structure: offsets monotone from 0 to T, prompts inside samples, scored positions add up.
  check(v.offsets[0] == 0, what, ": sample_offsets[0] is ", v.offsets[0], ", expected 0", remedy);
  v.scored_start.resize(S);
  int64_t c = 0;
  for (int64_t s = 0; s < S; ++s) {
    int64_t n = v.offsets[s + 1] - v.offsets[s];
    check(n >= 0 && v.offsets[s + 1] <= T, what, ": sample_offsets are not monotone within [0, ", T, "] at sample ",
          s, remedy);
    check(v.prompt_lens[s] >= 0 && v.prompt_lens[s] <= n, what, ": prompt_lengths[", s, "] = ", v.prompt_lens[s],
          " is outside the sample's ", n, " tokens", remedy);
    check(v.ids[s] >= 0, what, ": sample_ids[", s, "] = ", v.ids[s], " is negative", remedy);
    v.scored_start[s] = c;
    c += n - v.prompt_lens[s];
  }
  check(S == 0 || v.offsets[S] == T, what, ": sample_offsets end at ", v.offsets[S], " but there are ", T,
        " tokens", remedy);
  check(c == C, what, ": completions add up to ", c, " scored positions but the shard holds ", C, remedy);
  // Values: ids inside the vocabulary, log-probs finite and <= 0 (a little float slack), tail in [0, 1].
  for (int64_t i = 0; i < T; ++i)
    check(v.tokens[i] >= 0 && v.tokens[i] < m.n_vocab, what, ": tokens[", i, "] = ", v.tokens[i],
          " is outside the vocabulary [0, ", m.n_vocab, ")", remedy);
  for (int64_t i = 0; i < C * k; ++i) {
    check(v.topk_ids[i] >= 0 && v.topk_ids[i] < m.n_vocab, what, ": topk_ids[", i / k, ", ", i % k, "] = ",
          v.topk_ids[i], " is outside the vocabulary [0, ", m.n_vocab, ")", remedy);
    check(std::isfinite(v.topk_logprobs[i]) && v.topk_logprobs[i] <= 1e-3f, what, ": topk_logprobs[", i / k, ", ",
          i % k, "] = ", v.topk_logprobs[i], " is not a log-probability", remedy);
  }
  for (int64_t i = 0; i < C; ++i) {
    check(!std::isnan(v.token_logprob[i]) && v.token_logprob[i] <= 1e-3f, what, ": token_logprob[", i, "] = ",
          v.token_logprob[i], " is not a log-probability", remedy);
    check(v.tail[i] >= 0.f && v.tail[i] <= 1.f, what, ": tail_mass[", i, "] = ", v.tail[i], " is outside [0, 1]",
          remedy);
  }
  return v;
}

}  // namespace

struct SignalStore::Impl {
  std::string dir;
  StoreManifest manifest;
  std::vector<ShardView> shards;
  std::vector<int64_t> first_sample;  // [n_shards + 1] prefix sums of samples
  int64_t n_scored = 0;
};

SignalStore::SignalStore() : impl_(std::make_unique<Impl>()) {}
SignalStore::SignalStore(SignalStore&&) noexcept = default;
SignalStore& SignalStore::operator=(SignalStore&&) noexcept = default;
SignalStore::~SignalStore() = default;

SignalStore SignalStore::open(const std::string& dir) {
  check(fs::is_directory(dir), "signal store ", dir, ": not a directory (give the --out of `retort capture`)");
  const std::string mpath = dir + "/" + kManifestName;
  check(fs::exists(mpath), "signal store ", dir, ": no manifest.json (not a signal store, or capture never wrote one)");
  json j;
  try {
    j = json::parse(read_file(mpath));
  } catch (const json::exception& e) {
    fail("signal store manifest ", mpath, ": not valid JSON (", e.what(),
         "); the store is damaged — re-run `retort capture` into a new --out directory");
  }
  SignalStore st;
  st.impl_->dir = dir;
  st.impl_->manifest = StoreManifest::from_json(j, mpath);
  const StoreManifest& m = st.impl_->manifest;
  st.impl_->shards.reserve(m.shards.size());
  st.impl_->first_sample.push_back(0);
  std::vector<int64_t> all_ids;
  for (const auto& sh : m.shards) {
    st.impl_->shards.push_back(open_shard(dir, m, sh));
    const ShardView& v = st.impl_->shards.back();
    st.impl_->first_sample.push_back(st.impl_->first_sample.back() + v.n_samples);
    st.impl_->n_scored += sh.scored;
    all_ids.insert(all_ids.end(), v.ids, v.ids + v.n_samples);
  }
  std::sort(all_ids.begin(), all_ids.end());
  auto dup = std::adjacent_find(all_ids.begin(), all_ids.end());
  check(dup == all_ids.end(), "signal store ", dir, ": sample id ", dup == all_ids.end() ? 0 : *dup,
        " is stored twice; the store is damaged — re-run `retort capture` into a new --out directory");
  return st;
}

const StoreManifest& SignalStore::manifest() const { return impl_->manifest; }
const std::string& SignalStore::dir() const { return impl_->dir; }
int64_t SignalStore::n_samples() const { return impl_->first_sample.back(); }
int64_t SignalStore::n_scored() const { return impl_->n_scored; }

SignalSample SignalStore::sample(int64_t i) const {
  check(i >= 0 && i < n_samples(), "signal store ", impl_->dir, ": sample ", i, " out of range [0, ", n_samples(), ")");
  const auto& fs_ = impl_->first_sample;
  size_t sh = std::upper_bound(fs_.begin(), fs_.end(), i) - fs_.begin() - 1;
  const ShardView& v = impl_->shards[sh];
  const int64_t s = i - fs_[sh], k = impl_->manifest.k;
  SignalSample out;
  out.id = v.ids[s];
  out.tokens = v.tokens + v.offsets[s];
  out.n_tokens = v.offsets[s + 1] - v.offsets[s];
  out.prompt_len = v.prompt_lens[s];
  const int64_t c = v.scored_start[s];
  out.token_logprob = v.token_logprob + c;
  out.topk_ids = v.topk_ids + c * k;
  out.topk_logprobs = v.topk_logprobs + c * k;
  out.tail_mass = v.tail + c;
  return out;
}

// ---------------------------------------------------------------------------------------------
// SignalStoreWriter

struct SignalStoreWriter::Pending {
  std::vector<int32_t> tokens;
  std::vector<int64_t> offsets{0};
  std::vector<int32_t> prompt_lens;
  std::vector<int64_t> ids;
  std::vector<float> token_logprob;
  std::vector<int32_t> topk_ids;
  std::vector<float> topk_logprobs;
  std::vector<float> tail;
  std::set<int64_t> id_set;
  json provenance = json::array();  // one entry per sample with provenance
};

namespace {

// The settings a resumed capture must share with the store; "" when they agree, else why not.
std::string manifest_mismatch(const StoreManifest& have, const StoreManifest& want) {
  auto show = [](const json& j) { return j.dump(); };
  if (have.mode != want.mode) return cat("mode is \"", have.mode, "\" in the store, \"", want.mode, "\" now");
  if (have.teacher.value("sha256", "") != want.teacher.value("sha256", ""))
    return cat("the teacher differs (store: ", have.teacher.value("spec", "?"), " sha256 ",
               have.teacher.value("sha256", "?"), "; now: ", want.teacher.value("spec", "?"), " sha256 ",
               want.teacher.value("sha256", "?"), ")");
  if (have.tokenizer_hash != want.tokenizer_hash)
    return cat("the tokenizer differs (hash ", have.tokenizer_hash, " in the store, ", want.tokenizer_hash, " now)");
  if (have.n_vocab != want.n_vocab) return cat("n_vocab is ", have.n_vocab, " in the store, ", want.n_vocab, " now");
  if (have.k != want.k) return cat("k is ", have.k, " in the store, ", want.k, " now");
  if (have.generation != want.generation)
    return cat("generation settings differ (store: ", show(have.generation), "; now: ", show(want.generation), ")");
  if (have.watermark != want.watermark)
    return cat("watermark settings differ (store: ", show(have.watermark), "; now: ", show(want.watermark), ")");
  // An API capture may resume through another address (a server that moved) but not from another model,
  // another kind of signal or another stop-token policy.
  for (const char* f : {"kind", "model", "signal", "stop_signal"}) {
    auto get = [&](const json& src) { return src.is_object() && src.contains(f) ? src[f].dump() : std::string("null"); };
    if (get(have.source) != get(want.source))
      return cat("the source's ", f, " is ", get(have.source), " in the store, ", get(want.source), " now");
  }
  if (have.prompts.value("sha256", "") != want.prompts.value("sha256", ""))
    return cat("the prompts file differs (store: ", have.prompts.value("path", "?"), " sha256 ",
               have.prompts.value("sha256", "?"), "; now: ", want.prompts.value("path", "?"), " sha256 ",
               want.prompts.value("sha256", "?"), ")");
  return "";
}

std::map<std::string, std::string> shard_metadata(int64_t k, const json& provenance) {
  std::map<std::string, std::string> m{
      {"format", "retort-signal-shard"}, {"version", std::to_string(kVersion)}, {"k", std::to_string(k)}};
  if (!provenance.empty()) m["provenance"] = provenance.dump();
  return m;
}

void write_manifest(const std::string& dir, const StoreManifest& m) {
  write_file_atomic(dir + "/" + kManifestName, m.to_json().dump(2) + "\n");
}

}  // namespace

SignalStoreWriter::SignalStoreWriter(const std::string& dir, StoreManifest manifest)
    : dir_(dir), manifest_(std::move(manifest)), pending_(std::make_shared<Pending>()) {
  check(manifest_.n_vocab > 0, "signal store ", dir, ": n_vocab must be positive");
  check(manifest_.k >= 1 && manifest_.k <= manifest_.n_vocab, "signal store ", dir, ": k must be in [1, n_vocab], got ",
        manifest_.k);
  manifest_.shards.clear();
  manifest_.complete = false;
  const std::string mpath = dir + "/" + kManifestName;
  if (fs::exists(mpath)) {
    SignalStore existing = SignalStore::open(dir);  // validates every shard before we add to it
    std::string why = manifest_mismatch(existing.manifest(), manifest_);
    check(why.empty(), "signal store ", dir, " was captured with other settings: ", why,
          ". Resume with the original settings, or give a new --out directory");
    manifest_.shards = existing.manifest().shards;
    manifest_.complete = existing.manifest().complete;
    for (int64_t i = 0; i < existing.n_samples(); ++i) done_.push_back(existing.sample(i).id);
    std::sort(done_.begin(), done_.end());
  } else {
    std::error_code ec;
    if (fs::exists(dir)) {
      check(fs::is_directory(dir), "signal store ", dir, ": exists and is not a directory; give a new --out");
      for (const auto& e : fs::directory_iterator(dir)) {
        std::string name = e.path().filename().string();
        bool ours = name.rfind("shard-", 0) == 0 || name.rfind("manifest.json.tmp", 0) == 0;
        check(ours, "signal store ", dir, ": the directory is not empty and has no manifest.json (found ", name,
              "); give a new or empty --out directory");
      }
    }
    fs::create_directories(dir, ec);
    check(!ec, "signal store ", dir, ": cannot create the directory: ", ec.message());
    write_manifest(dir_, manifest_);
  }
  // Leftovers of a killed writer: temp files (other pids) and shards the manifest never listed.
  std::set<std::string> listed;
  for (const auto& s : manifest_.shards) listed.insert(s.file);
  for (const auto& e : fs::directory_iterator(dir)) {
    std::string name = e.path().filename().string();
    bool tmp = name.find(".tmp.") != std::string::npos &&
               (name.rfind("shard-", 0) == 0 || name.rfind("manifest.json", 0) == 0);
    bool orphan = name.rfind("shard-", 0) == 0 && !tmp && !listed.count(name);
    if (tmp || orphan) {
      std::error_code ec;
      fs::remove(e.path(), ec);
    }
  }
}

const std::vector<int64_t>& SignalStoreWriter::done_ids() const { return done_; }
const StoreManifest& SignalStoreWriter::manifest() const { return manifest_; }
int64_t SignalStoreWriter::pending_samples() const { return static_cast<int64_t>(pending_->ids.size()); }

void SignalStoreWriter::add(int64_t sample_id, const std::vector<int32_t>& tokens, int64_t prompt_len,
                            const std::vector<float>& token_logprob, const std::vector<int32_t>& topk_ids,
                            const std::vector<float>& topk_logprobs, const std::vector<float>& tail_mass,
                            const json& provenance) {
  const int64_t k = manifest_.k;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const std::string what = cat("signal store ", dir_, ": sample ", sample_id);
  check(sample_id >= 0, what, ": sample ids must be >= 0");
  check(!std::binary_search(done_.begin(), done_.end(), sample_id) && !pending_->id_set.count(sample_id), what,
        " is already stored");
  check(prompt_len >= 0 && prompt_len <= n, what, ": prompt_len ", prompt_len, " is outside the ", n, " tokens");
  const int64_t c = n - prompt_len;
  check(int64_t(token_logprob.size()) == c && int64_t(tail_mass.size()) == c, what, ": ", c,
        " completion tokens but ", token_logprob.size(), " token logprobs and ", tail_mass.size(), " tail masses");
  check(int64_t(topk_ids.size()) == c * k && int64_t(topk_logprobs.size()) == c * k, what, ": top-k arrays need ",
        c, " x k=", k, " entries, got ", topk_ids.size(), " ids and ", topk_logprobs.size(), " logprobs");
  for (int32_t t : tokens)
    check(t >= 0 && t < manifest_.n_vocab, what, ": token ", t, " is outside the vocabulary [0, ", manifest_.n_vocab,
          ")");
  for (int32_t t : topk_ids)
    check(t >= 0 && t < manifest_.n_vocab, what, ": top-k id ", t, " is outside the vocabulary [0, ",
          manifest_.n_vocab, ")");
  for (float t : tail_mass) check(t >= 0.f && t <= 1.f, what, ": tail mass ", t, " is outside [0, 1]");
  Pending& p = *pending_;
  p.tokens.insert(p.tokens.end(), tokens.begin(), tokens.end());
  p.offsets.push_back(static_cast<int64_t>(p.tokens.size()));
  p.prompt_lens.push_back(static_cast<int32_t>(prompt_len));
  p.ids.push_back(sample_id);
  p.id_set.insert(sample_id);
  p.token_logprob.insert(p.token_logprob.end(), token_logprob.begin(), token_logprob.end());
  p.topk_ids.insert(p.topk_ids.end(), topk_ids.begin(), topk_ids.end());
  p.topk_logprobs.insert(p.topk_logprobs.end(), topk_logprobs.begin(), topk_logprobs.end());
  p.tail.insert(p.tail.end(), tail_mass.begin(), tail_mass.end());
  if (!provenance.is_null()) {
    json e = provenance;
    e["sample_id"] = sample_id;
    p.provenance.push_back(std::move(e));
  }
}

void SignalStoreWriter::flush() {
  Pending& p = *pending_;
  if (p.ids.empty()) return;
  const int64_t S = static_cast<int64_t>(p.ids.size()), T = static_cast<int64_t>(p.tokens.size()),
                C = static_cast<int64_t>(p.tail.size()), k = manifest_.k;
  StoreManifest::Shard sh;
  sh.file = shard_file_name(manifest_.shards.size());
  sh.samples = S;
  sh.tokens = T;
  sh.scored = C;
  const std::string path = dir_ + "/" + sh.file;
  auto bytes = [](const auto& v) { return v.size() * sizeof(v[0]); };
  write_safetensors(path,
                    {{"tokens", DType::I32, {T}, p.tokens.data(), bytes(p.tokens)},
                     {"sample_offsets", DType::I64, {S + 1}, p.offsets.data(), bytes(p.offsets)},
                     {"prompt_lengths", DType::I32, {S}, p.prompt_lens.data(), bytes(p.prompt_lens)},
                     {"sample_ids", DType::I64, {S}, p.ids.data(), bytes(p.ids)},
                     {"token_logprob", DType::F32, {C}, p.token_logprob.data(), bytes(p.token_logprob)},
                     {"topk_ids", DType::I32, {C, k}, p.topk_ids.data(), bytes(p.topk_ids)},
                     {"topk_logprobs", DType::F32, {C, k}, p.topk_logprobs.data(), bytes(p.topk_logprobs)},
                     {"tail_mass", DType::F32, {C}, p.tail.data(), bytes(p.tail)}},
                    shard_metadata(k, p.provenance));
  {
    MappedFile written(path);
    sh.bytes = static_cast<int64_t>(written.size());
    sh.sha256 = sha256_of_mapping(written);
  }
  // Shard first, then the manifest that lists it: a crash in between leaves an orphan shard
  // that the next writer removes, never a manifest entry without its file.
  manifest_.shards.push_back(sh);
  try {
    write_manifest(dir_, manifest_);
  } catch (...) {
    manifest_.shards.pop_back();
    throw;
  }
  done_.insert(done_.end(), p.ids.begin(), p.ids.end());
  std::sort(done_.begin(), done_.end());
  pending_ = std::make_shared<Pending>();
}

void SignalStoreWriter::set_source(json source) { manifest_.source = std::move(source); }

void SignalStoreWriter::write_manifest_now() { write_manifest(dir_, manifest_); }

void SignalStoreWriter::finish() {
  flush();
  if (!manifest_.complete) {
    manifest_.complete = true;
    write_manifest(dir_, manifest_);
  }
}

}  // namespace retort
