// retort/protect/antidistill.h — antidistillation sampling (Savani et al. 2025, "Antidistillation
// Sampling"; locuslab/antidistillation-sampling): the teacher samples tokens that make its traces less
// useful to a student trained on them, at little cost to their quality.
//
// A proxy student shares the teacher's tokenizer (a student retort distilled, e.g. a pruned SmolLM2).
// g = ∇θ L(θ) is the gradient of the proxy's distillation loss on held-out teacher traces
// (`retort antidistill prepare`, distill/antidistill_prepare.h). Sampling token x_{t+1} from
//
//   p̃(· | x_{1..t}) ∝ exp( z_T / τ  +  λ · Δ )                                  z_T, Δ: [V]
//   Δ = ( z_P(θ + εg) − z_P(θ − εg) ) / (2ε)   ≈  ⟨∇θ z_P(θ), g⟩   (central difference, error O(ε²))
//
// (z_T the teacher's logits, z_P the proxy's logits at the same context) favours tokens whose
// log-probability under the proxy rises along g, i.e. tokens a distillation step on them would take
// the proxy up its held-out loss. λ = 0 is plain sampling. Logits and log-probs differ by a constant
// over the vocabulary, so Δ of logits is Δ of log-probs after the softmax.
//
// Where the term goes in retort's pipeline (sampling.h: raw logits → process → ÷τ → top-k/p → draw):
// process() gets the raw z_T and adds τ·λ·Δ, so after the temperature the logits are exactly
// z_T/τ + λ·Δ as defined above (top-k/top-p then act on that). Greedy (τ = 0) has no such limit
// (argmax of z_T/τ + λΔ tends to argmax z_T as τ → 0), so at τ = 0 the term is added unscaled and the
// token is argmax(z_T + λΔ) — what the reference code's greedy setting (tau 0) does.
//
// Cost: the two perturbed proxies, θ+εg and θ−εg, keep a KV cache of each sequence (a slot in a pool
// shared by all sequences on this proxy) and are fed only the tokens new since the last call: two proxy
// decode steps per generated token (plus one prefill of the prompt in each). Under BatchDecoder (generate,
// serve) a step's rows go through each proxy in ONE batched forward (BatchedWork, logits_processor.h), so
// the proxies' weights are read once per step rather than once per row; the CPU kernels are
// batch-invariant, so a sequence gets the same bits alone or in any batch.
//
// On disk (written by prepare, read by load_antidistill): a directory with
//   antidistill.json   the manifest (kAntidistillManifest below)
//   proxy_plus.gguf    the proxy with θ + εg, float32
//   proxy_minus.gguf   the proxy with θ − εg, float32
// The perturbed weights are written as files at prepare time (rather than perturbing at load) so the
// server needs no gradient file, no libtorch, and reads both proxies in place from their mappings like
// any GGUF; float32, because ε·g is small against θ and would be lost in a quantized block.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "retort/decode/logits_processor.h"
#include "retort/decode/sampling.h"

namespace retort {

class RuntimeModel;
struct CheckpointInfo;
class AntidistillPool;  // the proxies' KV slots of all sequences (antidistill.cpp)

inline constexpr const char* kAntidistillManifest = "antidistill.json";
inline constexpr const char* kAntidistillFormat = "retort-antidistill";
inline constexpr int kAntidistillVersion = 1;

// The two perturbed proxies and the settings from the manifest; shared by every request, read-only.
struct AntidistillProxy {
  std::string dir;
  nlohmann::json manifest;
  double eps = 0;                               // ε: the proxies are θ ± εg
  std::shared_ptr<RuntimeModel> plus, minus;    // θ + εg, θ − εg
  int64_t n_vocab = 0, max_position = 0;
  // Every sequence's proxy KV caches, and the batched forward over them; grows with use (slots double
  // when all are taken, slot length doubles when a sequence outgrows it) and is never shrunk.
  std::shared_ptr<AntidistillPool> pool;
};

// Reads DIR/antidistill.json and loads both proxies. The manifest must name the teacher's tokenizer
// (hash and vocabulary size, from `teacher`); otherwise retort::Error naming the file, both tokenizers
// and the command that prepares a proxy for this teacher. Missing dir/files, a foreign or newer manifest
// -> retort::Error naming the path.
std::shared_ptr<const AntidistillProxy> load_antidistill_proxy(const std::string& dir, const CheckpointInfo& teacher);

// What the pool has done since the proxy was loaded: forwards of each proxy and the rows they carried
// (rows / forwards is the batch the proxies ran at; one sequence alone gives 1).
struct AntidistillStats {
  int64_t forwards = 0, rows = 0;
};
AntidistillStats antidistill_stats(const AntidistillProxy& proxy);

// One sequence's processor (per request: it keeps the sequence's proxy KV caches).
//   scale = τ·λ/(2ε) for τ > 0, λ/(2ε) for τ = 0 (see above); process() adds scale·(z₊ − z₋), z± [V]
//   the perturbed proxies' logits at the context, computed in float64 per entry and rounded once.
class AntidistillProcessor : public LogitsProcessor {
 public:
  AntidistillProcessor(std::shared_ptr<const AntidistillProxy> proxy, double lambda, double temperature);
  ~AntidistillProcessor() override;
  void process(std::span<const int32_t> context, float* logits, int64_t n_vocab) override;
  void batched_parts(std::vector<BatchedPart>& out) override;

  double scale() const { return scale_; }
  // The proxies' logits [V] at the last processed context (for tests): z₊ = proxy(θ + εg), z₋ = proxy(θ − εg).
  const std::vector<float>& last_plus() const { return z_plus_; }
  const std::vector<float>& last_minus() const { return z_minus_; }
  // Proxy tokens fed so far (each proxy); a context that extends the last one costs only its new tokens.
  int64_t tokens_fed() const { return tokens_fed_; }

 private:
  friend class AntidistillPool;  // brings the slot to a context and writes z_plus_/z_minus_ (under its lock)
  std::shared_ptr<const AntidistillProxy> proxy_;
  double lambda_ = 0, scale_ = 0;
  int64_t slot_ = -1;          // this sequence's slot in proxy_->pool; -1 until the first call
  std::vector<int32_t> fed_;   // the tokens the slot holds in both proxies' caches, in order
  std::vector<float> z_plus_, z_minus_;  // [V] at fed_ (empty before the first call)
  int64_t tokens_fed_ = 0;
};

// What a server keeps: the loaded proxies and λ; make() gives each request its own processor (null when
// λ = 0: nothing to add, no proxy work).
class AntidistillFactory : public LogitsProcessorFactory {
 public:
  AntidistillFactory(std::shared_ptr<const AntidistillProxy> proxy, double lambda);
  std::shared_ptr<LogitsProcessor> make(const SamplingParams& sampling) const override;
  const AntidistillProxy& proxy() const { return *proxy_; }
  double lambda() const { return lambda_; }
  // {"dir","lambda","eps","proxy":{sha256,...},"grad_norm"}: what a response or ledger may record.
  nlohmann::json describe() const;

 private:
  std::shared_ptr<const AntidistillProxy> proxy_;
  double lambda_;
};

// The server's and `retort generate --antidistill`'s entry point: load DIR (checked against the
// teacher's tokenizer) and make a factory for strength λ (finite, else retort::Error; λ > 0 protects,
// λ < 0 makes traces more useful to the proxy — a control for experiments).
std::shared_ptr<AntidistillFactory> load_antidistill(const std::string& dir, double lambda, const CheckpointInfo& teacher);

}  // namespace retort
