// retort/protect/antidistill.cpp — antidistillation sampling at generation time (see antidistill.h).
#include "retort/protect/antidistill.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

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
// Smallest KV cache a sequence starts with; it doubles (and is refilled) when the sequence outgrows it.
constexpr int64_t kMinCacheLen = 256;

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
  return p;
}

// ---- one sequence ------------------------------------------------------------------------------

AntidistillProcessor::AntidistillProcessor(std::shared_ptr<const AntidistillProxy> proxy, double lambda,
                                           double temperature)
    : proxy_(std::move(proxy)), lambda_(lambda) {
  check(proxy_ != nullptr, "antidistillation: no proxy loaded");
  check(std::isfinite(lambda), "antidistillation: lambda must be a finite number, got ", lambda);
  check(std::isfinite(temperature) && temperature >= 0, "antidistillation: temperature must be >= 0, got ", temperature);
  // After sampling's ÷τ the added τ·λ/(2ε)·Δz becomes λ/(2ε)·Δz (antidistill.h); greedy adds λ/(2ε)·Δz.
  scale_ = (temperature > 0 ? temperature : 1.0) * lambda / (2.0 * proxy_->eps);
}

AntidistillProcessor::~AntidistillProcessor() = default;

void AntidistillProcessor::advance(std::span<const int32_t> context) {
  const int64_t n = int64_t(context.size());
  check(n >= 1, "antidistillation: empty context");
  check(n <= proxy_->max_position, "antidistillation: the sequence (", n, " tokens) is longer than the proxy's context (",
        proxy_->max_position, " tokens)");
  int64_t common = 0;
  const int64_t n_fed = int64_t(fed_.size());
  while (common < std::min(n, n_fed) && fed_[size_t(common)] == context[size_t(common)]) ++common;
  if (common == n && n == n_fed && !z_plus_.empty()) return;  // same context as the last call
  // Keep the common prefix (at least one token must be fed to get the last position's logits).
  int64_t keep = std::min(common, n - 1);

  if (!cache_plus_ || n > cache_plus_->max_len()) {
    int64_t cap = cache_plus_ ? cache_plus_->max_len() : kMinCacheLen;
    while (cap < n) cap *= 2;
    cap = std::min(cap, proxy_->max_position);
    // A fresh cache is refilled from the start: on the float32 kernels a token's logits do not depend on
    // whether its prefix came at once or token by token (cpu_model.h), so refilling changes no bits.
    cache_plus_ = proxy_->plus->new_cache(1, cap);
    cache_minus_ = proxy_->minus->new_cache(1, cap);
    keep = 0;
  }
  cache_plus_->lengths[0] = keep;  // entries past `keep` are stale and masked
  cache_minus_->lengths[0] = keep;
  fed_.resize(size_t(keep));

  const int64_t V = proxy_->n_vocab;
  z_plus_.resize(size_t(V));
  z_minus_.resize(size_t(V));
  std::vector<int64_t> tok;
  for (int64_t c0 = keep; c0 < n; c0 += kFillChunk) {
    const int64_t c1 = std::min(n, c0 + kFillChunk), len = c1 - c0;
    tok.assign(context.begin() + c0, context.begin() + c1);
    // tok [1, len] -> each proxy's logits at the chunk's last token [1, V]; both caches advance by len.
    proxy_->plus->forward_last(tok.data(), 1, len, {0}, {len}, *cache_plus_, z_plus_.data());
    proxy_->minus->forward_last(tok.data(), 1, len, {0}, {len}, *cache_minus_, z_minus_.data());
    tokens_fed_ += len;
  }
  fed_.assign(context.begin(), context.end());
}

void AntidistillProcessor::process(std::span<const int32_t> context, float* logits, int64_t n_vocab) {
  check(n_vocab == proxy_->n_vocab, "antidistillation: the teacher has ", n_vocab, " tokens, the proxy in ",
        proxy_->dir, " ", proxy_->n_vocab);
  if (lambda_ == 0) return;
  advance(context);
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
