// retort/distill/antidistill_prepare.h — the offline half of antidistillation sampling
// (protect/antidistill.h): the gradient g of a proxy student's distillation loss on held-out teacher
// traces, and the directory the sampler reads (the proxy at θ + εg and θ − εg, and a manifest).
//
// Loss (as the reference code's save_grad.py): per trace n, the mean over its completion tokens of the
// proxy's negative log-likelihood of the teacher's sampled token (cross-entropy / SFT on the teacher's
// traces, the prompt unscored), and g is its mean over traces:
//   ℓ_n(θ) = −(1/C_n) Σ_{t ∈ completion(n)} log q_θ(x_t | x_<t),     g = (1/N) Σ_n ∇θ ℓ_n(θ)
// over every parameter of the proxy (embeddings included; a tied head's gradient lands on the embedding).
//
// Step size: the reference code uses an absolute ε = 1e-2 on its gradient scale. Because ‖g‖ varies by
// orders of magnitude with the proxy and the data, retort sets it relative to the sizes it perturbs:
//   ε = eps_rel · ‖θ‖ / ‖g‖,   so ‖εg‖ = eps_rel · ‖θ‖    (Frobenius norms over all parameters)
// with eps_rel = kAntidistillEpsRel = 1e-4 by default. Two errors compete in the float32 proxies' central
// difference against ⟨∇θ z, g⟩: truncation ∝ eps_rel² and rounding ∝ u·max|z| / ε (u = 2^-24).
// tests/test_antidistill.cpp measures both on a tiny random Llama against a float64 directional derivative:
// max error / max|⟨∇z, g⟩| = 1.1e-4 at 1e-4 (rounding), 8.6e-4 at 1e-3 and 8e-2 at 1e-2 (truncation, ×100 per
// ×10). The reference code's absolute ε = 1e-2 is, on the quickstart proxy (‖g‖ = 2.46 on 32 held-out
// traces, ‖θ‖ = 1789), eps_rel = 1.4e-5: a relative step of the same order. An explicit ε (`--eps`)
// overrides it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

namespace retort {

inline constexpr double kAntidistillEpsRel = 1e-4;

class CausalLMImpl;
class Tokenizer;
struct ExportInfo;

// One teacher trace: prompt followed by the teacher's completion.
struct AntidistillTrace {
  std::vector<int32_t> tokens;
  int64_t prompt_len = 0;  // tokens[0 .. prompt_len) are the prompt (not scored); at least one completion token follows
};

// The traces of a signal store (`retort capture`, generate mode: the teacher's own samples), in store order,
// the first `limit` (0 = all) with a completion. `info` gets {"store","teacher","prompts","tokenizer_hash",
// "samples","tokens"} for the manifest. A store of another mode or without traces -> retort::Error.
std::vector<AntidistillTrace> read_antidistill_traces(const std::string& store_dir, int64_t limit, nlohmann::json& info);

struct ProxyGradient {
  std::vector<std::string> names;    // the proxy's named_parameters(), in order
  std::vector<torch::Tensor> grads;  // g per parameter, float32, shaped like the parameter
  double mean_loss = 0;              // (1/N) Σ ℓ_n at θ
  int64_t traces = 0, tokens = 0;    // N, Σ C_n
  double grad_norm = 0, param_norm = 0;  // ‖g‖, ‖θ‖ (float64 sums)
  int64_t n_params = 0;
};

// g for `proxy` on `traces` (one trace per forward/backward; the proxy's parameters and their .grad are left
// as found). Traces longer than the proxy's context -> retort::Error.
ProxyGradient proxy_loss_gradient(CausalLMImpl& proxy, const std::vector<AntidistillTrace>& traces);

// ε = eps_rel · ‖θ‖ / ‖g‖ (retort::Error when g is zero or eps_rel is not in (0, 1)).
double antidistill_eps(const ProxyGradient& g, double eps_rel);

// Writes DIR atomically (built as DIR.tmp.<pid>, then renamed over any old DIR): proxy_plus.gguf
// (θ + εg) and proxy_minus.gguf (θ − εg) as float32 GGUF with the proxy's tokenizer, and antidistill.json
// with ε, ‖g‖, ‖θ‖, the loss, the tokenizer hash and vocabulary size, and `extra` merged in (proxy identity,
// traces). The perturbed weights are fl32(θ + εg) computed in float32; the proxy is left at θ.
// `probe` (optional, a trace's tokens): the manifest also gets "delta_std", the spread over the vocabulary of
// Δ = (z(θ+εg) − z(θ−εg)) / (2ε) on it (libtorch forward, mean over positions of the std over tokens) — the
// scale to choose λ by: the term λ·Δ moves logits by about λ·delta_std nats.
// The temp dir is antidistill_stage_dir(dir); a caller may create it and put more files there first (the CLI
// captures traces into it), and they are published with the rest.
// Returns the manifest written.
nlohmann::json write_antidistill_dir(CausalLMImpl& proxy, const Tokenizer& tok, const ExportInfo& info,
                                     const ProxyGradient& g, double eps, double eps_rel, const std::string& dir,
                                     const nlohmann::json& extra, const std::vector<int32_t>& probe = {});

// The temp dir write_antidistill_dir builds `dir` in (so a caller can put more files there first).
std::string antidistill_stage_dir(const std::string& dir);

// sha256 of a model: of its GGUF file, or of "name sha256\n" lines over a Hugging Face directory's
// *.safetensors and *.json files in name order (as the signal store records a teacher).
std::string model_sha256(const std::string& path);

}  // namespace retort
