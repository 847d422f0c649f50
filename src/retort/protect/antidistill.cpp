// retort/protect/antidistill.cpp — antidistillation sampling at generation time (see antidistill.h).
#include "retort/protect/antidistill.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <mutex>

#include "retort/model/runtime_model.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

namespace retort {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Prompt tokens per proxy forward when (re)filling a cache: bounds the activations ([chunk, n_ff]).
constexpr int64_t kFillChunk = 512;
// Slot length the pool starts with; it doubles (and every slot is refilled) when a sequence outgrows it.
constexpr int64_t kMinCacheLen = 256;
// Slots the pool starts with; they double (and every slot is refilled) when all are taken.
constexpr int64_t kMinSlots = 4;

const char* kPrepareHint =
    "prepare one for this teacher with `retort antidistill prepare --proxy STUDENT.gguf --teacher MODEL "
    "--traces STORE_OR_PROMPTS --out DIR` (the proxy must be a student on the teacher's tokenizer)";

}  // namespace

std::shared_ptr<const AntidistillProxy> load_antidistill_proxy(const std::string& dir, const CheckpointInfo& teacher) {
  check(fs::is_directory(dir), "antidistillation: ", dir, " is not a directory; ", kPrepareHint);
  const std::string mpath = (fs::path(dir) / kAntidistillManifest).string();
  check(fs::is_regular_file(mpath), "antidistillation: ", mpath, " not found (", dir,
        " is not an antidistillation directory); ", kPrepareHint);
  json m;
  try {
    m = json::parse(read_file(mpath));
  } catch (const json::exception& e) {
    fail("antidistillation: ", mpath, " is not valid JSON (", e.what(), "); prepare the directory again");
  }
  auto field = [&](const char* key) -> const json& {
    check(m.is_object() && m.contains(key), "antidistillation: ", mpath, ": field \"", key, "\" is missing");
    return m[key];
  };
  check(field("format") == kAntidistillFormat, "antidistillation: ", mpath, ": \"format\" is ", field("format").dump(),
        ", expected \"", kAntidistillFormat, "\"");
  check(field("version").is_number_integer() && field("version").get<int>() <= kAntidistillVersion,
        "antidistillation: ", mpath, ": version ", field("version").dump(), " is newer than this retort reads (",
        kAntidistillVersion, "); use a newer retort or prepare the directory again");
  check(field("eps").is_number() && std::isfinite(field("eps").get<double>()) && field("eps").get<double>() > 0,
        "antidistillation: ", mpath, ": \"eps\" must be a positive number, got ", field("eps").dump());

  auto p = std::make_shared<AntidistillProxy>();
  p->dir = dir;
  p->manifest = m;
  p->eps = field("eps").get<double>();

  // The proxy must speak the teacher's tokenizer: same ids, same vocabulary.
  const std::string proxy_tok = field("tokenizer_hash").is_string() ? field("tokenizer_hash").get<std::string>() : "";
  const int64_t proxy_vocab = field("n_vocab").is_number_integer() ? field("n_vocab").get<int64_t>() : -1;
  const std::string teacher_tok = teacher.tokenizer ? teacher.tokenizer->hash() : "";
  const bool tok_differs = !teacher_tok.empty() && proxy_tok != teacher_tok;
  check(!tok_differs && proxy_vocab == teacher.hparams.n_vocab, "antidistillation: ", mpath,
        " was prepared for another tokenizer than the teacher's (proxy: tokenizer ", proxy_tok, ", ", proxy_vocab,
        " tokens; teacher ", teacher.path, ": tokenizer ", teacher_tok.empty() ? "?" : teacher_tok, ", ",
        teacher.hparams.n_vocab, " tokens): the proxy's logits would score other tokens; ", kPrepareHint);

  const json& files = field("files");
  auto load = [&](const char* key) {
    check(files.is_object() && files.contains(key) && files[key].is_string(), "antidistillation: ", mpath,
          ": field \"files.", key, "\" is missing");
    const std::string path = (fs::path(dir) / files[key].get<std::string>()).string();
    check(fs::is_regular_file(path), "antidistillation: ", path, " (named in ", mpath,
          ") not found; prepare the directory again");
    RuntimeLoadOptions o;
    o.load_tokenizer = false;
    RuntimeLoaded r = load_runtime_model(path, o);
    check(r.hparams.n_vocab == proxy_vocab, "antidistillation: ", path, " has ", r.hparams.n_vocab,
          " tokens but ", mpath, " says ", proxy_vocab, "; prepare the directory again");
    return r;
  };
  RuntimeLoaded plus = load("plus"), minus = load("minus");
  check(plus.hparams.n_layer == minus.hparams.n_layer && plus.hparams.n_embd == minus.hparams.n_embd,
        "antidistillation: the two proxies in ", dir, " have different shapes; prepare the directory again");
  p->plus = plus.model;
  p->minus = minus.model;
  p->n_vocab = proxy_vocab;
  p->max_position = plus.hparams.max_position > 0 ? plus.hparams.max_position : INT64_MAX;
  p->pool = std::make_shared<AntidistillPool>(p->plus, p->minus, p->n_vocab, p->max_position);
  return p;
}

// ---- the pool of proxy KV slots ---------------------------------------------------------------------

// One slot per processor in each proxy's cache. Every entry point takes mu_: the decoder's prepare() and
// the processors' own process() (on the sampling threads) may come at once; a processor's fed_, slot_ and
// z are only touched under it, except that process() reads its own z after its call here returned (only
// a run over that same processor writes them, and runs over it come from its own sequence's steps).
class AntidistillPool : public BatchedWork {
 public:
  AntidistillPool(std::shared_ptr<RuntimeModel> plus, std::shared_ptr<RuntimeModel> minus, int64_t n_vocab,
                  int64_t max_position)
      : plus_(std::move(plus)), minus_(std::move(minus)), n_vocab_(n_vocab), max_position_(max_position) {}

  // The decoder's batch: every row that can be served goes through each proxy in one forward per chunk.
  void prepare(std::span<LogitsProcessor* const> parts, std::span<const std::span<const int32_t>> contexts) override {
    std::lock_guard lock(mu_);
    std::vector<Row> rows;
    for (size_t i = 0; i < parts.size(); ++i) {
      auto* p = dynamic_cast<AntidistillProcessor*>(parts[i]);
      const int64_t n = int64_t(contexts[i].size());
      if (!p || p->lambda_ == 0 || n < 1 || n > max_position_) continue;  // left to process(), which says why
      if (std::any_of(rows.begin(), rows.end(), [&](const Row& r) { return r.p == p; })) continue;  // one object, two rows
      rows.push_back({p, contexts[i]});
    }
    if (!rows.empty()) run(rows);
  }

  // One processor alone (process() when prepare did not bring it to this context).
  void advance(AntidistillProcessor& p, std::span<const int32_t> context) {
    const int64_t n = int64_t(context.size());
    check(n >= 1, "antidistillation: empty context");
    check(n <= max_position_, "antidistillation: the sequence (", n, " tokens) is longer than the proxy's context (",
          max_position_, " tokens)");
    std::lock_guard lock(mu_);
    std::vector<Row> rows{{&p, context}};
    run(rows);
  }

  AntidistillStats stats() {
    std::lock_guard lock(mu_);
    return stats_;
  }

  void release(AntidistillProcessor& p) {
    std::lock_guard lock(mu_);
    if (p.slot_ >= 0 && size_t(p.slot_) < owner_.size() && owner_[size_t(p.slot_)] == &p) owner_[size_t(p.slot_)] = nullptr;
    p.slot_ = -1;
  }

 private:
  struct Row {
    AntidistillProcessor* p;
    std::span<const int32_t> context;
  };

  // (Re)allocates both caches at n_slots × max_len. Every slot keeps its owner but loses its tokens: the
  // owners refill from the start on their next run, which on the float32 kernels changes no bits (a
  // token's logits do not depend on whether its prefix came at once or token by token, cpu_model.h).
  void reallocate(int64_t n_slots, int64_t max_len) {
    kv_plus_.reset();
    kv_minus_.reset();
    if (n_slots > 0) {  // none before the first sequence takes a slot
      kv_plus_ = plus_->new_cache(n_slots, max_len);
      kv_minus_ = minus_->new_cache(n_slots, max_len);
    }
    owner_.resize(size_t(n_slots), nullptr);
    max_len_ = max_len;
    for (AntidistillProcessor* o : owner_)
      if (o) o->fed_.clear();
  }

  // Brings every row's slot to its context and leaves the last position's logits in its z. Under mu_.
  void run(std::vector<Row>& rows) {
    // Slots and lengths first: growing the caches empties every slot.
    int64_t need_len = std::max(max_len_, kMinCacheLen);
    for (const Row& r : rows) {
      while (need_len < int64_t(r.context.size())) need_len *= 2;
    }
    need_len = std::min(need_len, max_position_);
    if (need_len > max_len_) reallocate(int64_t(owner_.size()), need_len);
    for (Row& r : rows) {
      if (r.p->slot_ >= 0) continue;
      auto it = std::find(owner_.begin(), owner_.end(), nullptr);
      if (it == owner_.end()) {
        const size_t old = owner_.size();
        reallocate(std::max<int64_t>(kMinSlots, 2 * int64_t(old)), max_len_);
        it = owner_.begin() + ptrdiff_t(old);
      }
      *it = r.p;
      r.p->slot_ = int64_t(it - owner_.begin());
      r.p->fed_.clear();
    }

    // Per row: keep the common prefix with what the slot holds (at least one token must be fed to get
    // the last position's logits); a row already at its context needs nothing.
    std::vector<Row> todo;
    std::vector<int64_t> pos;
    for (Row& r : rows) {
      AntidistillProcessor& p = *r.p;
      const int64_t n = int64_t(r.context.size()), n_fed = int64_t(p.fed_.size());
      int64_t common = 0;
      while (common < std::min(n, n_fed) && p.fed_[size_t(common)] == r.context[size_t(common)]) ++common;
      if (common == n && n == n_fed && !p.z_plus_.empty()) continue;
      const int64_t keep = std::min(common, n - 1);
      kv_plus_->lengths[size_t(p.slot_)] = keep;  // entries past `keep` are stale and masked
      kv_minus_->lengths[size_t(p.slot_)] = keep;
      p.fed_.resize(size_t(keep));
      todo.push_back(r);
      pos.push_back(keep);
    }

    // Chunks of at most kFillChunk tokens per row; each forward takes every row that still has tokens.
    // tokens [B, T] right-padded -> each proxy's logits at each row's last new token [B, V].
    const int64_t V = n_vocab_;
    std::vector<int64_t> tok, slots, n_new;
    std::vector<size_t> which;
    while (true) {
      which.clear();
      for (size_t i = 0; i < todo.size(); ++i)
        if (pos[i] < int64_t(todo[i].context.size())) which.push_back(i);
      if (which.empty()) break;
      const int64_t B = int64_t(which.size());
      int64_t T = 0;
      for (size_t i : which) T = std::max(T, std::min(kFillChunk, int64_t(todo[i].context.size()) - pos[i]));
      tok.assign(size_t(B * T), 0);
      slots.assign(size_t(B), 0);
      n_new.assign(size_t(B), 0);
      for (int64_t b = 0; b < B; ++b) {
        const size_t i = which[size_t(b)];
        const int64_t len = std::min(kFillChunk, int64_t(todo[i].context.size()) - pos[i]);
        for (int64_t t = 0; t < len; ++t) tok[size_t(b * T + t)] = todo[i].context[size_t(pos[i] + t)];
        slots[size_t(b)] = todo[i].p->slot_;
        n_new[size_t(b)] = len;
      }
      z_plus_.resize(size_t(B * V));
      z_minus_.resize(size_t(B * V));
      ++stats_.forwards;
      stats_.rows += B;
      plus_->forward_last(tok.data(), B, T, slots, n_new, *kv_plus_, z_plus_.data());
      minus_->forward_last(tok.data(), B, T, slots, n_new, *kv_minus_, z_minus_.data());
      for (int64_t b = 0; b < B; ++b) {
        const size_t i = which[size_t(b)];
        AntidistillProcessor& p = *todo[i].p;
        pos[i] += n_new[size_t(b)];
        p.tokens_fed_ += n_new[size_t(b)];
        if (pos[i] == int64_t(todo[i].context.size())) {
          p.z_plus_.assign(z_plus_.begin() + b * V, z_plus_.begin() + (b + 1) * V);
          p.z_minus_.assign(z_minus_.begin() + b * V, z_minus_.begin() + (b + 1) * V);
          p.fed_.assign(todo[i].context.begin(), todo[i].context.end());
        }
      }
    }
  }

  std::mutex mu_;
  std::shared_ptr<RuntimeModel> plus_, minus_;
  int64_t n_vocab_ = 0, max_position_ = 0;
  std::unique_ptr<KvSlots> kv_plus_, kv_minus_;
  std::vector<AntidistillProcessor*> owner_;  // by slot; null = free
  int64_t max_len_ = 0;
  std::vector<float> z_plus_, z_minus_;       // [B, V] scratch of the last forward
  AntidistillStats stats_;
};

AntidistillStats antidistill_stats(const AntidistillProxy& proxy) { return proxy.pool->stats(); }

// ---- one sequence ------------------------------------------------------------------------------

AntidistillProcessor::AntidistillProcessor(std::shared_ptr<const AntidistillProxy> proxy, double lambda,
                                           double temperature)
    : proxy_(std::move(proxy)), lambda_(lambda) {
  check(proxy_ != nullptr && proxy_->pool != nullptr, "antidistillation: no proxy loaded");
  check(std::isfinite(lambda), "antidistillation: lambda must be a finite number, got ", lambda);
  check(std::isfinite(temperature) && temperature >= 0, "antidistillation: temperature must be >= 0, got ", temperature);
  // After sampling's ÷τ the added τ·λ/(2ε)·Δz becomes λ/(2ε)·Δz (antidistill.h); greedy adds λ/(2ε)·Δz.
  scale_ = (temperature > 0 ? temperature : 1.0) * lambda / (2.0 * proxy_->eps);
}

AntidistillProcessor::~AntidistillProcessor() { proxy_->pool->release(*this); }

void AntidistillProcessor::batched_parts(std::vector<BatchedPart>& out) {
  if (lambda_ != 0) out.push_back({proxy_->pool.get(), this});
}

void AntidistillProcessor::process(std::span<const int32_t> context, float* logits, int64_t n_vocab) {
  check(n_vocab == proxy_->n_vocab, "antidistillation: the teacher has ", n_vocab, " tokens, the proxy in ",
        proxy_->dir, " ", proxy_->n_vocab);
  if (lambda_ == 0) return;
  proxy_->pool->advance(*this, context);  // no work when the decoder's prepare() already brought it here
  // logits[v] += scale · (z₊[v] − z₋[v]) for v in [0, V); banned tokens (-inf) stay banned.
  for (int64_t v = 0; v < n_vocab; ++v)
    logits[v] = float(double(logits[v]) + scale_ * (double(z_plus_[size_t(v)]) - double(z_minus_[size_t(v)])));
}

// ---- the factory ---------------------------------------------------------------------------------

AntidistillFactory::AntidistillFactory(std::shared_ptr<const AntidistillProxy> proxy, double lambda)
    : proxy_(std::move(proxy)), lambda_(lambda) {
  check(proxy_ != nullptr, "antidistillation: no proxy loaded");
  check(std::isfinite(lambda), "antidistillation: lambda must be a finite number, got ", lambda);
}

std::shared_ptr<LogitsProcessor> AntidistillFactory::make(const SamplingParams& sampling) const {
  if (lambda_ == 0) return nullptr;
  return std::make_shared<AntidistillProcessor>(proxy_, lambda_, sampling.temperature);
}

json AntidistillFactory::describe() const {
  const json& m = proxy_->manifest;
  return {{"dir", proxy_->dir},
          {"lambda", lambda_},
          {"eps", proxy_->eps},
          {"proxy", m.value("proxy", json::object())},
          {"grad_norm", m.value("grad_norm", json())}};
}

std::shared_ptr<AntidistillFactory> load_antidistill(const std::string& dir, double lambda, const CheckpointInfo& teacher) {
  check(std::isfinite(lambda), "antidistillation: lambda must be a finite number, got ", lambda);
  return std::make_shared<AntidistillFactory>(load_antidistill_proxy(dir, teacher), lambda);
}

}  // namespace retort
