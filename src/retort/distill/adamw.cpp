#include "retort/distill/adamw.h"

#include <cmath>
#include <set>

#include "retort/io/safetensors.h"
#include "retort/util/error.h"

namespace retort {

AdamW::AdamW(const std::vector<std::pair<std::string, torch::Tensor>>& named_params, AdamWConfig cfg) : cfg_(cfg) {
  check(cfg.beta1 >= 0 && cfg.beta1 < 1, "AdamW beta1 must be in [0, 1), got ", cfg.beta1);
  check(cfg.beta2 >= 0 && cfg.beta2 < 1, "AdamW beta2 must be in [0, 1), got ", cfg.beta2);
  check(cfg.eps > 0, "AdamW eps must be > 0, got ", cfg.eps);
  check(cfg.weight_decay >= 0, "AdamW weight decay must be >= 0, got ", cfg.weight_decay);
  std::set<std::string> seen;
  for (const auto& [name, p] : named_params) {
    check(seen.insert(name).second, "AdamW: parameter ", name, " given twice");
    check(p.scalar_type() == torch::kFloat32, "AdamW: parameter ", name,
          " must be float32 (master weights), it is ", c10::toString(p.scalar_type()));
    Param q;
    q.name = name;
    q.value = p;
    q.m = torch::zeros_like(p, torch::MemoryFormat::Contiguous);
    q.v = torch::zeros_like(p, torch::MemoryFormat::Contiguous);
    q.decay = p.dim() >= 2;
    params_.push_back(std::move(q));
  }
}

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  ++t_;
  const double b1 = cfg_.beta1, b2 = cfg_.beta2;
  const double bias1 = 1 - std::pow(b1, double(t_));
  const double bias2_sqrt = std::sqrt(1 - std::pow(b2, double(t_)));
  const double step_size = lr / bias1;
  for (auto& p : params_) {
    const auto& g = p.value.grad();
    if (!g.defined()) continue;
    if (p.decay && cfg_.weight_decay != 0) p.value.mul_(1 - lr * cfg_.weight_decay);
    p.m.lerp_(g, 1 - b1);
    p.v.mul_(b2).addcmul_(g, g, 1 - b2);
    auto denom = (p.v.sqrt() / bias2_sqrt).add_(cfg_.eps);
    p.value.addcdiv_(p.m, denom, -step_size);
  }
}

void AdamW::zero_grad() {
  for (auto& p : params_) p.value.mutable_grad() = torch::Tensor();
}

void AdamW::save(const std::string& path) const {
  std::vector<torch::Tensor> keep;  // CPU contiguous copies alive until written
  std::vector<SafetensorsWriteTensor> out;
  keep.reserve(2 * params_.size());
  for (const auto& p : params_) {
    for (int which = 0; which < 2; ++which) {
      keep.push_back((which == 0 ? p.m : p.v).to(torch::kCPU).contiguous());
      const auto& t = keep.back();
      out.push_back({(which == 0 ? "m." : "v.") + p.name, DType::F32, t.sizes().vec(), t.data_ptr(),
                     size_t(t.numel()) * sizeof(float)});
    }
  }
  int64_t step = t_;
  out.push_back({"step", DType::I64, {1}, &step, sizeof(step)});
  write_safetensors(path, out, {{"format", "retort-adamw"}, {"version", "1"}});
}

void AdamW::load(const std::string& path) {
  auto f = SafetensorsFile::open(path);
  const auto* st = f.find("step");
  check(st != nullptr && st->n_elements() == 1, "optimizer state ", path, ": tensor \"step\" missing or not [1]");
  int64_t step = 0;
  f.read_i64(*st, &step);
  check(step >= 0, "optimizer state ", path, ": negative step ", step);
  // Check everything before changing anything.
  for (const auto& p : params_)
    for (const char* prefix : {"m.", "v."}) {
      const auto* t = f.find(prefix + p.name);
      check(t != nullptr, "optimizer state ", path, ": tensor ", prefix, p.name,
            " missing (was the checkpoint made for another student?)");
      check(t->shape == p.value.sizes().vec(), "optimizer state ", path, ": tensor ", prefix, p.name, " has shape ",
            torch::IntArrayRef(t->shape), ", the parameter has ", p.value.sizes());
      check(t->dtype == DType::F32, "optimizer state ", path, ": tensor ", prefix, p.name, " is ",
            dtype_name(t->dtype), ", expected F32");
    }
  for (auto& p : params_)
    for (int which = 0; which < 2; ++which) {
      const auto* t = f.find((which == 0 ? "m." : "v.") + p.name);
      auto cpu = torch::empty(t->shape, torch::kFloat32);
      f.read_f32(*t, cpu.data_ptr<float>());
      torch::NoGradGuard no_grad;
      (which == 0 ? p.m : p.v).copy_(cpu);
    }
  t_ = step;
}

double clip_grad_norm(const std::vector<AdamW::Param>& params, double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> norms;
  for (const auto& p : params)
    if (p.value.grad().defined()) norms.push_back(p.value.grad().norm(2).to(torch::kFloat32));
  if (norms.empty()) return 0;
  auto total = torch::stack(norms).norm(2);
  const double norm = total.item<double>();
  if (max_norm > 0) {
    // Multiply always by the clamped coefficient (1.0 when under the limit), as PyTorch does.
    auto coef = torch::clamp_max(max_norm / (total + 1e-6), 1.0);
    for (const auto& p : params)
      if (p.value.grad().defined()) p.value.grad().mul_(coef.to(p.value.grad().device()));
  }
  return norm;
}

}  // namespace retort
