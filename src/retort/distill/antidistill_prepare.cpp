// retort/distill/antidistill_prepare.cpp — g of the proxy's loss on teacher traces, and the perturbed
// proxies (see antidistill_prepare.h for the formulas).
#include "retort/distill/antidistill_prepare.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>

#include "retort/distill/export.h"
#include "retort/distill/signal_store.h"
#include "retort/model/causal_lm.h"
#include "retort/protect/antidistill.h"
#include "retort/protect/keys.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

namespace retort {

namespace fs = std::filesystem;
using nlohmann::json;

std::vector<AntidistillTrace> read_antidistill_traces(const std::string& store_dir, int64_t limit, json& info) {
  SignalStore store = SignalStore::open(store_dir);
  const StoreManifest& m = store.manifest();
  check(m.mode == "generate", "antidistillation: ", store_dir, " holds teacher-forced pairs (mode \"", m.mode,
        "\"), not the teacher's own samples; capture held-out traces with `retort capture --prompts HELDOUT.jsonl "
        "--out STORE` (generate mode) and pass that store");
  std::vector<AntidistillTrace> out;
  int64_t tokens = 0;
  for (int64_t i = 0; i < store.n_samples() && (limit <= 0 || int64_t(out.size()) < limit); ++i) {
    SignalSample s = store.sample(i);
    if (s.completion_len() <= 0 || s.prompt_len <= 0) continue;
    AntidistillTrace t;
    t.tokens.assign(s.tokens, s.tokens + s.n_tokens);
    t.prompt_len = s.prompt_len;
    tokens += s.completion_len();
    out.push_back(std::move(t));
  }
  check(!out.empty(), "antidistillation: ", store_dir, " has no sample with a completion to compute the gradient on");
  info = {{"store", fs::absolute(store_dir).string()},
          {"teacher", m.teacher},
          {"prompts", m.prompts},
          {"tokenizer_hash", m.tokenizer_hash},
          {"samples", int64_t(out.size())},
          {"tokens", tokens}};
  return out;
}

ProxyGradient proxy_loss_gradient(CausalLMImpl& proxy, const std::vector<AntidistillTrace>& traces) {
  check(!traces.empty(), "antidistillation: no traces to compute the gradient on");
  const ModelHParams& hp = proxy.hparams();
  ProxyGradient g;
  std::vector<torch::Tensor> params;
  for (auto& p : proxy.named_parameters()) {
    g.names.push_back(p.key());
    params.push_back(p.value());
    g.grads.push_back(torch::zeros_like(p.value(), torch::kFloat32));
  }
  const bool was_training = proxy.is_training();
  proxy.eval();  // no dropout in retort's families; eval() states that g is taken at the served proxy
  std::vector<bool> had_grad(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    had_grad[i] = params[i].requires_grad();
    params[i].set_requires_grad(true);
  }
  double loss_sum = 0;
  for (const AntidistillTrace& t : traces) {
    const int64_t T = int64_t(t.tokens.size()), P = t.prompt_len;
    check(P >= 1 && P < T, "antidistillation: a trace needs a prompt and at least one completion token");
    check(hp.max_position <= 0 || T <= hp.max_position, "antidistillation: a trace of ", T,
          " tokens is longer than the proxy's context (", hp.max_position, ")");
    for (int32_t id : t.tokens)
      check(id >= 0 && id < hp.n_vocab, "antidistillation: token id ", id, " is outside the proxy's vocabulary (",
            hp.n_vocab, ")");
    auto ids = torch::tensor(std::vector<int64_t>(t.tokens.begin(), t.tokens.end()), torch::kInt64).view({1, T});
    // hidden [1, T, E]; the completion is predicted from positions P-1 .. T-2: logits [C, V], targets [C].
    auto hidden = proxy.forward_hidden(ids.to(proxy.device()));
    auto logits = proxy.lm_logits(hidden[0].slice(0, P - 1, T - 1));
    auto targets = ids[0].slice(0, P, T).to(logits.device());
    auto loss = torch::nn::functional::cross_entropy(logits, targets);  // ℓ_n: mean over the C_n tokens
    auto grads = torch::autograd::grad({loss}, params, /*grad_outputs=*/{}, /*retain_graph=*/false,
                                       /*create_graph=*/false, /*allow_unused=*/true);
    for (size_t i = 0; i < params.size(); ++i)
      if (grads[i].defined()) g.grads[i].add_(grads[i].to(torch::kCPU, torch::kFloat32));
    loss_sum += loss.item<double>();
    g.tokens += T - P;
  }
  for (size_t i = 0; i < params.size(); ++i) params[i].set_requires_grad(had_grad[i]);
  if (was_training) proxy.train();
  g.traces = int64_t(traces.size());
  g.mean_loss = loss_sum / double(g.traces);
  double gsq = 0, psq = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    g.grads[i].div_(double(g.traces));
    gsq += g.grads[i].to(torch::kFloat64).square().sum().item<double>();
    psq += params[i].detach().to(torch::kCPU, torch::kFloat64).square().sum().item<double>();
    g.n_params += params[i].numel();
  }
  g.grad_norm = std::sqrt(gsq);
  g.param_norm = std::sqrt(psq);
  return g;
}

double antidistill_eps(const ProxyGradient& g, double eps_rel) {
  check(eps_rel > 0 && eps_rel < 1, "antidistillation: --eps-rel must be in (0, 1), got ", eps_rel);
  check(g.grad_norm > 0 && std::isfinite(g.grad_norm), "antidistillation: the proxy's gradient on the traces is ",
        g.grad_norm, "; nothing to perturb along (are the traces empty, or the proxy's loss flat?)");
  return eps_rel * g.param_norm / g.grad_norm;
}

namespace {
// An absolute path without a trailing slash ("out/" -> "/cwd/out").
std::string dir_path(const std::string& dir) {
  fs::path p = fs::absolute(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.string();
}
}  // namespace

std::string antidistill_stage_dir(const std::string& dir) { return dir_path(dir) + ".tmp." + std::to_string(::getpid()); }

std::string model_sha256(const std::string& path) {
  auto file_sha = [](const std::string& f) {
    MappedFile m(f);
    return sha256_hex(m.data(), m.size());
  };
  if (!fs::is_directory(path)) return file_sha(path);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(path)) {
    const auto ext = e.path().extension().string();
    if (e.is_regular_file() && (ext == ".safetensors" || ext == ".json")) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  std::string lines;
  for (const auto& f : files) lines += f.filename().string() + " " + file_sha(f.string()) + "\n";
  return sha256_hex(reinterpret_cast<const uint8_t*>(lines.data()), lines.size());
}

json write_antidistill_dir(CausalLMImpl& proxy, const Tokenizer& tok, const ExportInfo& info, const ProxyGradient& g,
                           double eps, double eps_rel, const std::string& dir, const json& extra,
                           const std::vector<int32_t>& probe) {
  check(std::isfinite(eps) && eps > 0, "antidistillation: eps must be a positive number, got ", eps);
  check(tok.n_vocab() <= proxy.hparams().n_vocab, "antidistillation: the tokenizer has ", tok.n_vocab(),
        " tokens, more than the proxy's ", proxy.hparams().n_vocab);
  std::vector<torch::Tensor> params;
  for (auto& p : proxy.named_parameters()) params.push_back(p.value());
  check(params.size() == g.grads.size(), "antidistillation: the gradient has ", g.grads.size(),
        " tensors, the proxy ", params.size(), " parameters");

  const std::string stage = antidistill_stage_dir(dir);
  fs::create_directories(stage);
  double delta_std = 0;
  try {
    // θ kept aside; the proxy is set to fl32(θ ± εg), exported, and put back to θ exactly.
    torch::NoGradGuard ng;
    std::vector<torch::Tensor> theta;
    for (auto& p : params) theta.push_back(p.detach().clone());
    torch::Tensor probe_ids;  // [1, T]
    if (!probe.empty())
      probe_ids = torch::tensor(std::vector<int64_t>(probe.begin(), probe.end()), torch::kInt64).view({1, -1}).to(proxy.device());
    auto write = [&](double sign, const std::string& name) {
      for (size_t i = 0; i < params.size(); ++i)
        params[i].copy_(theta[i].to(torch::kFloat32) + (sign * eps) * g.grads[i].to(params[i].device()));
      export_gguf(proxy, tok, info, (fs::path(stage) / name).string(), "f32");
      return probe.empty() ? torch::Tensor() : proxy.forward(probe_ids)[0].to(torch::kCPU, torch::kFloat64);  // [T, V]
    };
    auto z_plus = write(+1, "proxy_plus.gguf");
    auto z_minus = write(-1, "proxy_minus.gguf");
    if (!probe.empty()) delta_std = ((z_plus - z_minus) / (2 * eps)).std(/*dim=*/1).mean().item<double>();
    for (size_t i = 0; i < params.size(); ++i) params[i].copy_(theta[i]);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(stage, ec);
    throw;
  }

  char when[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  json m = {{"format", kAntidistillFormat},
            {"version", kAntidistillVersion},
            {"created", when},
            {"tokenizer_hash", tok.hash()},
            {"n_vocab", proxy.hparams().n_vocab},
            {"eps", eps},
            {"eps_rel", eps_rel},
            {"grad_norm", g.grad_norm},
            {"param_norm", g.param_norm},
            {"n_params", g.n_params},
            {"loss", {{"kind", "ce"},
                      {"definition", "mean over traces of the mean NLL of the teacher's completion tokens under the proxy"},
                      {"mean", g.mean_loss},
                      {"traces", g.traces},
                      {"tokens", g.tokens}}},
            {"delta_std", probe.empty() ? json() : json(delta_std)},
            {"files", {{"plus", "proxy_plus.gguf"}, {"minus", "proxy_minus.gguf"}}},
            {"formula", "sample from softmax(z_T/tau + lambda/(2 eps) (z(theta + eps g) - z(theta - eps g)))"}};
  for (auto it = extra.begin(); it != extra.end(); ++it) m[it.key()] = it.value();
  write_file_atomic((fs::path(stage) / kAntidistillManifest).string(), m.dump(2) + "\n");

  // Publish: an existing dir is moved aside and removed only once the new one is in place.
  std::error_code ec;
  const std::string target = dir_path(dir);
  const std::string old = stage + ".old";
  const bool existed = fs::exists(target, ec);
  if (existed) {
    fs::remove_all(old, ec);
    fs::rename(target, old, ec);
    check(!ec, "antidistillation: cannot move the existing ", dir, " aside (", ec.message(), ")");
  }
  fs::rename(stage, target, ec);
  if (ec) {
    std::error_code ec2;
    if (existed) fs::rename(old, target, ec2);
    fail("antidistillation: cannot rename ", stage, " to ", dir, " (", ec.message(), ")");
  }
  if (existed) fs::remove_all(old, ec);
  return m;
}

}  // namespace retort
