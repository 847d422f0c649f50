// retort/distill/remote_capture.cpp — see remote_capture.h.
#include "retort/distill/remote_capture.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <ctime>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>

#include "retort/distill/prompt_file.h"
#include "retort/distill/signal_store.h"
#include "retort/distill/text_store.h"
#include "retort/model/runtime_model.h"
#include "retort/protect/keys.h"
#include "retort/serve/openai_client.h"
#include "retort/text/chat_template.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"
#include "retort/util/progress.h"

namespace retort {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kJournal = "journal.jsonl";
constexpr const char* kSkipped = "skipped.jsonl";
constexpr float kVeryUnlikely = -9999.0f;  // OpenAI's logprob for "never"; what APIs send for -inf

std::string sha256_of(std::string_view s) { return sha256_hex(reinterpret_cast<const uint8_t*>(s.data()), s.size()); }

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// A sample that is answered but cannot be stored (a token the tokenizer lacks): recorded, not asked again.
struct SkipSample : Error {
  using Error::Error;
};

// An append-only JSONL file whose every line is on disk before append() returns.
class DurableLog {
 public:
  explicit DurableLog(std::string path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    check(fd_ >= 0, path_, ": cannot open for appending: ", std::strerror(errno));
  }
  ~DurableLog() {
    if (fd_ >= 0) ::close(fd_);
  }
  DurableLog(const DurableLog&) = delete;
  DurableLog& operator=(const DurableLog&) = delete;
  void append(const json& j) {
    const std::string line = j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    size_t off = 0;
    while (off < line.size()) {
      const ssize_t n = ::write(fd_, line.data() + off, line.size() - off);
      if (n < 0 && errno == EINTR) continue;
      check(n > 0, path_, ": write failed: ", std::strerror(errno), " (disk full?)");
      off += size_t(n);
    }
    check(::fdatasync(fd_) == 0, path_, ": fdatasync failed: ", std::strerror(errno));
  }
  void clear() {  // after the lines are safely elsewhere
    check(::ftruncate(fd_, 0) == 0 && ::fdatasync(fd_) == 0, path_, ": cannot truncate: ", std::strerror(errno));
  }
  // Complete lines that parse as JSON objects; a torn last line (a crash mid-write) is ignored.
  static std::vector<json> read(const std::string& path) {
    std::vector<json> out;
    std::ifstream in(path, std::ios::binary);
    std::string line;
    while (std::getline(in, line)) {
      if (in.eof()) break;  // no newline: torn
      json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!j.is_discarded() && j.is_object() && j.contains("sample_id") && j["sample_id"].is_number_integer())
        out.push_back(std::move(j));
    }
    return out;
  }

 private:
  std::string path_;
  int fd_ = -1;
};

// ---- where records go ------------------------------------------------------------------------------------

class Sink {
 public:
  virtual ~Sink() = default;
  virtual std::set<int64_t> stored() const = 0;  // in shards
  virtual void add(const json& record) = 0;      // throws SkipSample before changing anything
  virtual int64_t pending() const = 0;
  virtual void flush() = 0;
  virtual void finish() = 0;
  virtual void set_source(const json& source) = 0;
};

// bytes -> ids of the teacher's vocabulary, best candidate first (see remote_capture.h).
class ByteVocab {
 public:
  explicit ByteVocab(const Tokenizer& tok) : tok_(tok) {
    for (int32_t id = 0; id < tok.n_vocab(); ++id) {
      if (tok.is_hole(id)) continue;
      ids_[tok.token_bytes(id)].push_back(id);
    }
    for (auto& [bytes, ids] : ids_) {
      if (ids.size() < 2) continue;
      const std::vector<int32_t> own = tok.encode(bytes, /*parse_special=*/false, /*add_bos=*/false);
      auto rank = [&](int32_t id) {
        if (own.size() == 1 && own[0] == id) return 0;
        if (!tok.is_special(id) && !(tok.model_type() == "spm" && tok.is_byte(id))) return 1;
        return 2;
      };
      std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return rank(a) < rank(b); });
    }
  }
  const std::vector<int32_t>* find(const std::string& bytes) const {
    auto it = ids_.find(bytes);
    return it == ids_.end() ? nullptr : &it->second;
  }

 private:
  const Tokenizer& tok_;
  std::unordered_map<std::string, std::vector<int32_t>> ids_;
};

// The signal store of a capture whose teacher tokenizer is known.
class SignalSink : public Sink {
 public:
  SignalSink(const std::string& dir, StoreManifest manifest, const Tokenizer& tok,
             const std::vector<std::vector<int32_t>>& prompt_ids, const std::vector<int32_t>& stop_token,
             int64_t n_vocab)
      : writer_(dir, std::move(manifest)), tok_(tok), vocab_(tok), prompt_ids_(prompt_ids), stop_token_(stop_token),
        n_vocab_(n_vocab), k_(writer_.manifest().k) {}

  std::set<int64_t> stored() const override {
    return std::set<int64_t>(writer_.done_ids().begin(), writer_.done_ids().end());
  }
  int64_t pending() const override { return writer_.pending_samples(); }
  void flush() override {  // with nothing pending: the manifest alone (its source may have changed)
    if (writer_.pending_samples() == 0)
      writer_.write_manifest_now();
    else
      writer_.flush();
  }
  void finish() override { writer_.finish(); }
  void set_source(const json& s) override { writer_.set_source(s); }

  void add(const json& r) override {
    const int64_t id = r["sample_id"].get<int64_t>(), p = r["prompt_index"].get<int64_t>();
    const std::string where = cat("sample ", id);
    check(r.contains("tokens") && r["tokens"].is_array(), where, ": the record has no token logprobs");
    const json& toks = r["tokens"];
    std::vector<int32_t> tokens = prompt_ids_.at(size_t(p));
    const int64_t prompt_len = int64_t(tokens.size());
    std::vector<float> token_lp, top_lp, tail;
    std::vector<int32_t> top_ids;
    const bool stopped = r.value("finish_reason", "") == "stop";
    size_t n_listed = toks.size();
    int32_t listed_stop = -1;
    if (stopped && n_listed > 0 && toks[n_listed - 1]["bytes"] == "") {
      // The server listed the stop token (llama-server does, as a token without bytes): its position is the
      // label below, with the id the server gave where it is a special token of the teacher's.
      const json& last = toks[--n_listed];
      if (last.contains("id")) listed_stop = sent_id(last["id"], "");
    }
    for (size_t j = 0; j < n_listed; ++j) {
      const json& t = toks[j];
      const json& top = t["top"];
      check(int64_t(top.size()) >= k_, "the endpoint returned ", top.size(), " top_logprobs at token ", j, " of ",
            where, " but ", k_, " were asked: the server caps them (a logprobs policy?); run again with --k ",
            top.size(), " and a new --out");
      std::vector<std::pair<float, int32_t>> entries;
      std::set<int32_t> used;
      for (int64_t q = 0; q < k_; ++q) {
        const std::string b = hex_to_bytes(top[q][0].get<std::string>(), where);
        if (const int32_t i = top[q].size() > 2 ? sent_id(top[q][2], b) : -1; i >= 0 && !used.count(i)) {
          used.insert(i);
          entries.push_back({std::max(kVeryUnlikely, float(top[q][1].get<double>())), i});
          continue;
        }
        const std::vector<int32_t>* c = vocab_.find(b);
        if (c == nullptr)
          throw SkipSample(cat("top_logprobs[", q, "] of token ", j, " (bytes ", bytes_to_hex(b),
                               ") is no token of the teacher tokenizer"));
        auto pick = std::find_if(c->begin(), c->end(), [&](int32_t i) { return !used.count(i); });
        if (pick == c->end())
          throw SkipSample(cat("token ", j, " lists the bytes ", bytes_to_hex(b), " more often than the teacher tokenizer "
                               "has tokens for them"));
        used.insert(*pick);
        entries.push_back({std::max(kVeryUnlikely, float(top[q][1].get<double>())), *pick});
      }
      // The sampled token: the alternative with the same bytes and logprob, else the best candidate.
      const std::string b = hex_to_bytes(t["bytes"].get<std::string>(), where);
      const float lp = std::max(kVeryUnlikely, float(t["logprob"].get<double>()));
      int32_t chosen = t.contains("id") ? sent_id(t["id"], b) : -1;
      if (chosen < 0 && t.contains("id") && merged(t["id"], b))
        throw SkipSample(cat("token ", j, " (bytes ", bytes_to_hex(b), ") holds more than the bytes of its id ",
                             t["id"].dump(), ": the server listed several tokens as one (llama-server does for tokens that end inside "
                             "a UTF-8 character), so the logprobs of the others are unknown"));
      for (int64_t q = 0; q < k_ && chosen < 0; ++q)
        if (hex_to_bytes(top[q][0].get<std::string>(), where) == b && entries[size_t(q)].first == lp)
          chosen = entries[size_t(q)].second;
      if (chosen < 0) {
        const std::vector<int32_t>* c = vocab_.find(b);
        if (c == nullptr) throw SkipSample(cat("token ", j, " (bytes ", bytes_to_hex(b), ") is no token of the teacher tokenizer"));
        chosen = c->front();
      }
      // Ties by id, as a local capture orders them.
      std::stable_sort(entries.begin(), entries.end(),
                       [](const auto& a, const auto& c) { return a.first != c.first ? a.first > c.first : a.second < c.second; });
      tokens.push_back(chosen);
      token_lp.push_back(lp);
      double mass = 0;
      for (const auto& [v, i] : entries) {
        top_ids.push_back(i);
        top_lp.push_back(v);
        mass += std::exp(double(v));
      }
      tail.push_back(float(std::clamp(1.0 - mass, 0.0, 1.0)));
    }
    if (stopped) {
      // The stop token, as a hard label (remote_capture.h).
      const int32_t stop = listed_stop >= 0 ? listed_stop : stop_token_.at(size_t(p));
      tokens.push_back(stop);
      token_lp.push_back(0.f);
      top_ids.push_back(stop);
      top_lp.push_back(0.f);
      for (int32_t filler = 0, n = 1; n < k_ && filler < n_vocab_; ++filler) {
        if (filler == stop) continue;
        top_ids.push_back(filler);
        top_lp.push_back(kVeryUnlikely);
        ++n;
      }
      tail.push_back(0.f);
    }
    json prov = r["server"];
    prov["time"] = r["time"];
    prov["endpoint"] = r.value("endpoint", "");
    writer_.add(id, tokens, prompt_len, token_lp, top_ids, top_lp, tail, prov);
  }

 private:
  // The id a server sent with a token's bytes (llama.cpp's server sends ids), when it is the teacher tokenizer's
  // token for those bytes — a special token has no bytes there; else -1 and the bytes decide.
  int32_t sent_id(const json& id, const std::string& b) const {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= tok_.n_vocab()) return -1;
    const auto i = int32_t(id.get<int64_t>());
    if (tok_.is_hole(i)) return -1;
    return tok_.token_bytes(i) == b || (b.empty() && tok_.is_special(i)) ? i : -1;
  }
  // Whether bytes b are longer than token id's and end with them: the server listed several tokens as one.
  bool merged(const json& id, const std::string& b) const {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= tok_.n_vocab()) return false;
    const std::string own = tok_.token_bytes(int32_t(id.get<int64_t>()));
    return !own.empty() && b.size() > own.size() && b.compare(b.size() - own.size(), own.size(), own) == 0;
  }

  SignalStoreWriter writer_;
  const Tokenizer& tok_;
  ByteVocab vocab_;
  const std::vector<std::vector<int32_t>>& prompt_ids_;
  const std::vector<int32_t>& stop_token_;
  int64_t n_vocab_, k_;
};

// The text store (remote_capture.h): records as JSONL shards, listed by an atomically written manifest.
class TextSink : public Sink {
 public:
  TextSink(const std::string& dir, json manifest) : dir_(dir), manifest_(std::move(manifest)) {
    const std::string mpath = dir_ + "/manifest.json";
    manifest_["shards"] = json::array();
    manifest_["complete"] = false;
    if (fs::exists(mpath)) {
      json have = json::parse(read_file(mpath), nullptr, false);
      check(!have.is_discarded() && have.is_object() && have.value("format", "") == kTextStoreFormat, mpath,
            ": not a text store manifest (give a new --out directory)");
      check(have.value("version", 0) == kTextStoreVersion, mpath, ": text store version ", have.value("version", 0),
            " is not supported (this retort reads version ", kTextStoreVersion, ")");
      const std::string why = mismatch(have, manifest_);
      check(why.empty(), "text store ", dir_, " was captured with other settings: ", why,
            ". Resume with the original settings, or give a new --out directory");
      manifest_["shards"] = have["shards"];
      manifest_["complete"] = have.value("complete", false);
      for (const json& sh : manifest_["shards"]) {
        const std::string path = dir_ + "/" + sh.at("file").get<std::string>();
        check(fs::exists(path), path, " is listed in manifest.json but missing; the store is damaged: capture again "
              "into a new --out");
        const std::string body = read_file(path);
        check(int64_t(body.size()) == sh.at("bytes").get<int64_t>() && sha256_of(body) == sh.at("sha256"), path,
              " does not match manifest.json (size or sha256): the store is damaged; capture again into a new --out");
        for_each_line(body, [&](const json& rec) { done_.insert(rec.at("sample_id").get<int64_t>()); });
      }
    } else {
      if (fs::exists(dir_)) {
        check(fs::is_directory(dir_), "text store ", dir_, ": exists and is not a directory; give a new --out");
        check(fs::is_empty(dir_), "text store ", dir_, ": the directory is not empty and has no manifest.json; give "
              "a new or empty --out directory");
      }
      std::error_code ec;
      fs::create_directories(dir_, ec);
      check(!ec, "text store ", dir_, ": cannot create the directory: ", ec.message());
      write_manifest();
    }
  }
  std::set<int64_t> stored() const override { return done_; }
  int64_t pending() const override { return int64_t(pending_ids_.size()); }
  void set_source(const json& s) override { manifest_["source"] = s; }
  void add(const json& r) override {
    pending_ += r.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    pending_ids_.push_back(r["sample_id"].get<int64_t>());
  }
  void flush() override {
    if (pending_ids_.empty()) return write_manifest();
    char name[32];
    std::snprintf(name, sizeof name, "text-%05zu.jsonl", manifest_["shards"].size());
    write_file_atomic(dir_ + "/" + name, pending_);
    manifest_["shards"].push_back({{"file", name},
                                   {"samples", pending_ids_.size()},
                                   {"bytes", pending_.size()},
                                   {"sha256", sha256_of(pending_)}});
    write_manifest();
    done_.insert(pending_ids_.begin(), pending_ids_.end());
    pending_.clear();
    pending_ids_.clear();
  }
  void finish() override {
    flush();
    manifest_["complete"] = true;
    write_manifest();
  }

 private:
  static void for_each_line(const std::string& body, const std::function<void(const json&)>& fn) {
    size_t start = 0;
    while (start < body.size()) {
      size_t end = body.find('\n', start);
      if (end == std::string::npos) end = body.size();
      fn(json::parse(body.substr(start, end - start)));
      start = end + 1;
    }
  }
  static std::string mismatch(const json& have, const json& want) {
    if (have["teacher"].value("sha256", "") != want["teacher"].value("sha256", ""))
      return cat("the teacher differs (store: model ", have["teacher"].value("model", json()).dump(), "; now: model ",
                 want["teacher"].value("model", json()).dump(), ")");
    if (have.value("generation", json()) != want.value("generation", json()))
      return cat("generation settings differ (store: ", have.value("generation", json()).dump(), "; now: ",
                 want.value("generation", json()).dump(), ")");
    if (have.value("k", json()) != want.value("k", json()))
      return cat("k is ", have.value("k", json()).dump(), " in the store, ", want.value("k", json()).dump(), " now");
    if (have["prompts"].value("sha256", "") != want["prompts"].value("sha256", ""))
      return "the prompts file differs";
    for (const char* f : {"kind", "model", "signal"})
      if (have["source"].value(f, json()) != want["source"].value(f, json()))
        return cat("the source's ", f, " differs");
    return "";
  }
  void write_manifest() { write_file_atomic(dir_ + "/manifest.json", manifest_.dump(2) + "\n"); }

  std::string dir_;
  json manifest_;
  std::set<int64_t> done_;
  std::string pending_;
  std::vector<int64_t> pending_ids_;
};

// ---- requests ---------------------------------------------------------------------------------------------

struct Outcome {
  enum Kind { Answered, Refused, Failed, Fatal } kind = Answered;
  int64_t id = 0;
  json record;         // Answered
  std::string reason;  // the others
  int status = 0;
};

json server_json(const ParsedCompletion& c) {
  return {{"model", c.model},
          {"system_fingerprint", c.system_fingerprint.empty() ? json() : json(c.system_fingerprint)},
          {"response_id", c.id},
          {"created", c.created}};
}

// The record of one answered sample (remote_capture.h).
json make_record(int64_t id, int64_t p, int64_t s, const PromptLine& line, const ParsedCompletion& c, bool logprobs,
                 const std::string& endpoint, const std::string& where) {
  check(!c.choices.empty(), where, ": the answer has no choices (not an OpenAI-compatible answer?)");
  const ParsedChoice& ch = c.choices.front();
  json r = {{"sample_id", id}, {"prompt_index", p}, {"sample_index", s}};
  if (line.chat) {
    json ms = json::array();
    for (const auto& m : line.messages) ms.push_back({{"role", m.role}, {"content", m.content}});
    r["messages"] = ms;
  } else {
    r["prompt"] = line.raw;
  }
  r["completion"] = ch.text;
  r["finish_reason"] = ch.finish_reason;
  if (logprobs) {
    check(ch.has_logprobs, where, ": the endpoint answered without logprobs although they were asked (logprobs, ",
          "top_logprobs): it may not support them; capture text only with --signal text");
    json toks = json::array();
    for (const auto& t : ch.logprobs) {
      json top = json::array();
      for (const auto& a : t.top) {
        json e = {bytes_to_hex(a.bytes), a.logprob};
        if (a.id >= 0) e.push_back(a.id);  // the server's token id (llama.cpp's server sends them)
        top.push_back(std::move(e));
      }
      json e = {{"bytes", bytes_to_hex(t.bytes)}, {"logprob", t.logprob}, {"top", top}};
      if (t.id >= 0) e["id"] = t.id;
      toks.push_back(std::move(e));
    }
    r["tokens"] = toks;
  }
  r["server"] = server_json(c);
  r["endpoint"] = endpoint;
  r["time"] = unix_now();
  r["usage"] = {{"prompt_tokens", c.usage.prompt_tokens}, {"completion_tokens", c.usage.completion_tokens}};
  return r;
}

// Request starts at most every 60/rpm seconds, over all workers.
class RateLimit {
 public:
  explicit RateLimit(double rpm) : interval_(rpm > 0 ? 60.0 / rpm : 0) {}
  void wait() {
    if (interval_ <= 0) return;
    std::chrono::steady_clock::time_point at;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const auto now = std::chrono::steady_clock::now();
      next_ = std::max(next_, now);
      at = next_;
      next_ += std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(interval_));
    }
    std::this_thread::sleep_until(at);
  }

 private:
  double interval_;
  std::mutex mu_;
  std::chrono::steady_clock::time_point next_{};
};

void check_remote_options(const RemoteTeacher& t, const CaptureOptions& o) {
  check(!t.url.empty(), "--teacher-url: give the base URL of an OpenAI-compatible API (e.g. http://127.0.0.1:8080/v1)");
  check(t.signal == "logprobs" || t.signal == "text", "--signal must be logprobs or text, got \"", t.signal, "\"");
  check(o.mode == "generate", "--mode score needs the teacher's weights (an API cannot score given text); capture "
        "with --mode generate, or run score mode with --teacher");
  check(!o.make_processor, "--watermark: a teacher behind an API watermarks (or not) on its own side");
  check(t.signal == "text" || (o.k >= 1 && o.k <= 20), "--k must be between 1 and 20 for an API (OpenAI's limit on "
        "top_logprobs), got ", o.k);
  check(o.samples_per_prompt >= 1, "--samples must be at least 1, got ", o.samples_per_prompt);
  check(o.max_tokens >= 1, "--max-tokens must be at least 1, got ", o.max_tokens);
  check(o.shard_samples >= 1, "--shard-samples must be at least 1, got ", o.shard_samples);
  check(o.limit >= 0, "--limit must be >= 0 (0 = all prompts), got ", o.limit);
  check(t.concurrency >= 1 && t.concurrency <= 256, "--concurrency must be in [1, 256], got ", t.concurrency);
  check(t.requests_per_minute >= 0, "--rpm must be >= 0 (0 = no limit), got ", t.requests_per_minute);
  check(t.max_consecutive_failures >= 1, "max_consecutive_failures must be >= 1");
  check_sampling_params(o.sampling);
}

ApiRequest make_request(const RemoteTeacher& t, const CaptureOptions& o, const PromptLine& line, uint64_t seed,
                        bool logprobs) {
  ApiRequest r;
  r.kind = line.chat ? Endpoint::chat : Endpoint::completion;
  r.model = t.model;
  if (line.chat)
    r.messages = line.messages;
  else
    r.prompt = line.raw;
  r.max_tokens = o.max_tokens;
  r.sampling = o.sampling;
  r.seed = static_cast<int64_t>(seed);  // the wire's int64: the server reads the same 64 bits back
  r.n = 1;
  if (logprobs) {
    r.logprobs = true;
    r.top_logprobs = o.k;
  }
  return r;
}

json usage_totals(const RemoteCaptureSummary& s, const json& before) {
  auto add = [&](const char* f, int64_t v) { return before.value(f, int64_t(0)) + v; };
  return {{"requests", add("requests", s.requests)},
          {"retries", add("retries", s.retries)},
          {"throttled", add("throttled", s.throttled)},
          {"server_errors", add("server_errors", s.server_errors)},
          {"transport_errors", add("transport_errors", s.transport_errors)},
          {"refused", add("refused", s.refused)},
          {"unmappable", add("unmappable", s.unmappable)},
          {"prompt_tokens", add("prompt_tokens", s.prompt_tokens)},
          {"completion_tokens", add("completion_tokens", s.completion_tokens)},
          {"runs", add("runs", 1)}};
}

}  // namespace

RemoteCaptureSummary capture_remote(const RemoteTeacher& teacher, const CaptureOptions& opts) {
  const auto t0 = std::chrono::steady_clock::now();
  const CaptureOptions& o = opts;
  check_remote_options(teacher, o);
  check(!o.prompts_path.empty(), "--prompts: give a JSONL file of prompts");
  check(!o.out_dir.empty(), "--out: give the directory of the store");
  const bool logprobs = teacher.signal == "logprobs";
  const bool id_store = logprobs && !teacher.tokenizer.empty();

  CaptureOptions line_opts = o;
  std::vector<PromptLine> lines = read_prompt_lines(o.prompts_path, line_opts);
  const std::string prompts_sha = sha256_of(read_file(o.prompts_path));
  const int64_t n_file = int64_t(lines.size());
  const int64_t n_use = o.limit > 0 ? std::min(o.limit, n_file) : n_file;
  const int64_t S = o.samples_per_prompt;

  OpenAIClientOptions copt;
  copt.base_url = teacher.url;
  copt.api_key = teacher.api_key;
  copt.timeout_s = teacher.timeout_s;
  copt.max_retries = teacher.max_retries;
  copt.backoff_s = teacher.backoff_s;
  copt.max_backoff_s = teacher.max_backoff_s;
  copt.sleep = teacher.sleep;
  const std::string endpoint = OpenAIClient(copt).base_url();  // validates the URL before anything is written

  // The teacher's tokenizer, when known: prompt ids as the server will see them, and the stop tokens.
  CheckpointInfo info;
  std::vector<std::vector<int32_t>> prompt_ids;
  std::vector<int32_t> stop_token;
  if (!teacher.tokenizer.empty()) {
    info = read_checkpoint_info(teacher.tokenizer, /*load_tokenizer=*/true);
    check(info.tokenizer != nullptr, teacher.tokenizer, ": has no tokenizer (--teacher-tokenizer needs one)");
    prompt_ids.resize(size_t(n_use));
    stop_token.resize(size_t(n_use));
    for (int64_t p = 0; p < n_use; ++p) {
      prompt_ids[size_t(p)] = encode_prompt(info, lines[size_t(p)], o.prompts_path);  // checks the template
      stop_token[size_t(p)] = answer_stop_token(info, lines[size_t(p)]);
    }
  }

  // What the store records of its source (and what a resume must share).
  const std::string stop_signal = id_store ? "label" : "none";
  json before_usage = json::object(), before_source;
  {
    const std::string mpath = o.out_dir + "/manifest.json";
    if (fs::exists(mpath)) {
      json have = json::parse(read_file(mpath), nullptr, false);
      if (!have.is_discarded() && have.is_object() && have.contains("source") && have["source"].is_object())
        before_source = have["source"], before_usage = have["source"].value("usage", json::object());
    }
  }
  json source = {{"kind", "api"},
                 {"endpoint", endpoint},
                 {"model", teacher.model},
                 {"signal", teacher.signal},
                 {"teacher_tokenizer", teacher.tokenizer.empty()
                                           ? json()
                                           : json{{"spec", teacher.tokenizer}, {"hash", info.tokenizer->hash()}}},
                 {"stop_signal", stop_signal}};
  json generation = {{"temperature", o.sampling.temperature},
                     {"top_k", o.sampling.top_k},
                     {"top_p", o.sampling.top_p},
                     {"min_p", o.sampling.min_p},
                     {"max_tokens", o.max_tokens},
                     {"samples_per_prompt", S},
                     {"seed", o.sampling.seed},
                     {"chat", o.chat},
                     {"system", o.system}};
  json teacher_json = {{"spec", teacher.url}, {"model", teacher.model}, {"sha256", sha256_of("api\n" + teacher.model)}};
  json prompts_json = {{"path", fs::absolute(o.prompts_path).string()}, {"sha256", prompts_sha}, {"count", n_file}};

  std::unique_ptr<Sink> sink;
  if (id_store) {
    StoreManifest man;
    man.mode = "generate";
    man.teacher = teacher_json;
    man.tokenizer_hash = info.tokenizer->hash();
    man.n_vocab = info.hparams.n_vocab;
    man.k = o.k;
    man.generation = generation;
    man.prompts = prompts_json;
    man.source = source;
    sink = std::make_unique<SignalSink>(o.out_dir, std::move(man), *info.tokenizer, prompt_ids, stop_token,
                                        info.hparams.n_vocab);
  } else {
    json man = {{"format", kTextStoreFormat}, {"version", kTextStoreVersion}, {"teacher", teacher_json},
                {"generation", generation}, {"prompts", prompts_json}, {"source", source}};
    if (logprobs) man["k"] = o.k;
    sink = std::make_unique<TextSink>(o.out_dir, std::move(man));
  }

  RemoteCaptureSummary sum;
  sum.store_kind = id_store ? "signal" : "text";
  json servers = json::object();  // "model\nfingerprint" -> samples, this run

  // Skipped samples (not asked again), then the journal of answered samples not yet in a shard.
  const std::string skipped_path = o.out_dir + "/" + kSkipped, journal_path = o.out_dir + "/" + kJournal;
  std::set<int64_t> done = sink->stored();
  for (const json& j : DurableLog::read(skipped_path)) done.insert(j["sample_id"].get<int64_t>());
  DurableLog skipped(skipped_path), journal(journal_path);
  auto record_skip = [&](int64_t id, const std::string& reason, int status, int64_t& counter) {
    skipped.append({{"sample_id", id}, {"reason", reason}, {"status", status}, {"time", unix_now()}});
    done.insert(id);
    ++counter;
  };
  auto store = [&](const json& rec) {  // the record is in the journal already
    const int64_t id = rec["sample_id"].get<int64_t>();
    try {
      sink->add(rec);
    } catch (const SkipSample& e) {
      record_skip(id, e.what(), 200, sum.unmappable);
      return false;
    }
    done.insert(id);
    return true;
  };
  for (const json& rec : DurableLog::read(journal_path)) {
    const int64_t id = rec["sample_id"].get<int64_t>();
    if (done.count(id) || id >= n_use * S) continue;
    store(rec);
  }

  std::vector<int64_t> todo;
  for (int64_t id = 0; id < n_use * S; ++id)
    if (!done.count(id)) todo.push_back(id);
  sum.capture.prompts = n_use;
  sum.capture.samples_total = n_use * S;
  sum.capture.samples_skipped = sum.capture.samples_total - int64_t(todo.size());

  ProgressBar bar("capture", int64_t(todo.size()), "samples");
  bar.set_enabled(o.progress);

  // Workers take sample ids in order and hand outcomes to this thread, which alone writes.
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Outcome> outcomes;
  size_t next = 0;
  int active = teacher.concurrency;
  std::atomic<bool> abort{false};
  RateLimit rate(teacher.requests_per_minute);
  std::vector<OpenAIClientStats> stats(size_t(teacher.concurrency));
  auto stopped = [&] { return abort.load() || (teacher.stop != nullptr && teacher.stop->load()); };
  auto worker = [&](int w) {
    // One client per key (a client is one connection with its own Authorization header).
    std::vector<std::unique_ptr<OpenAIClient>> clients;
    if (teacher.api_keys.empty()) {
      clients.push_back(std::make_unique<OpenAIClient>(copt));
    } else {
      for (const std::string& key : teacher.api_keys) {
        OpenAIClientOptions kopt = copt;
        kopt.api_key = key;
        clients.push_back(std::make_unique<OpenAIClient>(kopt));
      }
    }
    auto total_stats = [&] {
      OpenAIClientStats t;
      for (const auto& c : clients) {
        const OpenAIClientStats& s = c->stats();
        t.requests += s.requests;
        t.retries += s.retries;
        t.throttled += s.throttled;
        t.server_errors += s.server_errors;
        t.transport_errors += s.transport_errors;
        t.prompt_tokens += s.prompt_tokens;
        t.completion_tokens += s.completion_tokens;
      }
      return t;
    };
    for (;;) {
      int64_t id;
      {
        std::lock_guard<std::mutex> lock(mu);
        if (stopped() || next >= todo.size()) break;
        id = todo[next++];
      }
      rate.wait();
      if (stopped()) break;
      const int64_t p = id / S, s = id % S;
      const PromptLine& line = lines[size_t(p)];
      Outcome out;
      out.id = id;
      const ApiRequest req = make_request(teacher, o, line, capture_sample_seed(o.sampling.seed, p, s), logprobs);
      const std::string where = cat(endpoint, line.chat ? "/chat/completions" : "/completions", " (", o.prompts_path,
                                    ":", line.line, ", sample ", s, ")");
      OpenAIClient& client = *clients[size_t(id) % clients.size()];
      try {
        const ParsedCompletion c = line.chat ? client.chat(req) : client.complete(req);
        out.record = make_record(id, p, s, line, c, logprobs, endpoint, where);
      } catch (const OpenAIClientError& e) {
        out.reason = e.what();
        out.status = e.status;
        const bool about_logprobs = e.param.find("logprobs") != std::string::npos;
        if (e.retries_exhausted)
          out.kind = Outcome::Failed;
        else if ((e.status == 400 || e.status == 422) && !about_logprobs && e.param != "model")
          out.kind = Outcome::Refused;
        else
          out.kind = Outcome::Fatal;
        if (about_logprobs)
          out.reason += "; this endpoint refuses logprobs: capture text only with --signal text";
      } catch (const Error& e) {
        out.kind = Outcome::Fatal;
        out.reason = e.what();
      }
      stats[size_t(w)] = total_stats();
      std::lock_guard<std::mutex> lock(mu);
      outcomes.push_back(std::move(out));
      cv.notify_all();
    }
    std::lock_guard<std::mutex> lock(mu);
    stats[size_t(w)] = total_stats();
    --active;
    cv.notify_all();
  };
  std::vector<std::thread> threads;
  for (int w = 0; w < teacher.concurrency; ++w) threads.emplace_back(worker, w);

  std::string fatal;
  int consecutive_failures = 0;
  int64_t finished = 0;
  auto handle = [&](Outcome& out) {
    switch (out.kind) {
      case Outcome::Answered: {
        consecutive_failures = 0;
        const json& rec = out.record;
        journal.append(rec);
        const int64_t pt = rec["usage"].value("prompt_tokens", int64_t(0));
        const int64_t p = rec["prompt_index"].get<int64_t>();
        if (id_store && pt > 0 && pt != int64_t(prompt_ids[size_t(p)].size())) ++sum.prompt_length_mismatches;
        sum.prompt_tokens += pt;
        sum.completion_tokens += rec["usage"].value("completion_tokens", int64_t(0));
        if (store(rec)) {
          ++sum.capture.samples_written;
          sum.capture.tokens_generated += rec["usage"].value("completion_tokens", int64_t(0));
          const std::string key = rec["server"].value("model", "") + "\n" +
                                  (rec["server"]["system_fingerprint"].is_string()
                                       ? rec["server"]["system_fingerprint"].get<std::string>() : "");
          servers[key] = servers.value(key, int64_t(0)) + 1;
        }
        if (sink->pending() >= o.shard_samples) {
          sink->flush();
          journal.clear();
        }
        break;
      }
      case Outcome::Refused:
        consecutive_failures = 0;
        record_skip(out.id, out.reason, out.status, sum.refused);
        break;
      case Outcome::Failed:
        ++sum.failed;
        if (++consecutive_failures >= teacher.max_consecutive_failures && fatal.empty()) {
          fatal = cat(consecutive_failures, " samples in a row failed after their retries; the last: ", out.reason);
          abort = true;
        }
        break;
      case Outcome::Fatal:
        if (fatal.empty()) fatal = out.reason;
        abort = true;
        break;
    }
    ++finished;
    bar.update(finished, sum.capture.tokens_generated);
  };
  for (;;) {
    Outcome out;
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return !outcomes.empty() || active == 0; });
      if (outcomes.empty()) break;
      out = std::move(outcomes.front());
      outcomes.pop_front();
    }
    try {
      handle(out);
    } catch (...) {  // a write failed: stop the workers, keep what is on disk
      abort = true;
      for (auto& t : threads) t.join();
      throw;
    }
  }
  for (auto& t : threads) t.join();

  for (const auto& st : stats) {
    sum.requests += st.requests;
    sum.retries += st.retries;
    sum.throttled += st.throttled;
    sum.server_errors += st.server_errors;
    sum.transport_errors += st.transport_errors;
  }
  // The source's running totals, then the last shard; complete = every sample stored or recorded as skipped.
  json src = source;
  src["usage"] = usage_totals(sum, before_usage);
  json srv = json::array();
  for (auto& [key, n] : servers.items()) {
    const size_t nl = key.find('\n');
    srv.push_back({{"model", key.substr(0, nl)},
                   {"system_fingerprint", nl + 1 < key.size() ? json(key.substr(nl + 1)) : json()},
                   {"samples", n}});
  }
  src["servers_last_run"] = srv;
  // A run that asked nothing (the store was complete) leaves the source as it was, so a finished store reused
  // by a later run stays byte for byte what the capture wrote.
  sink->set_source(sum.requests == 0 && before_source.is_object() ? before_source : src);
  sum.interrupted = teacher.stop != nullptr && teacher.stop->load();
  int64_t accounted = 0;
  for (int64_t id : done)
    if (id < n_file * S) ++accounted;
  sum.complete = accounted == n_file * S;
  if (sum.complete)
    sink->finish();
  else
    sink->flush();
  journal.clear();
  bar.finish();
  sum.capture.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  check(fatal.empty(), fatal, " (", sum.capture.samples_written,
        " samples of this run are stored; run the same command again to resume)");
  return sum;
}

}  // namespace retort
