// retort/distill/adamw.h — AdamW with its state in our hands (m, v float32 per parameter),
// so checkpoints can store it and a resumed run continues bit for bit.
//
// One step t (1-based) for a parameter p with gradient g — PyTorch's torch.optim.AdamW
// (single-tensor path, amsgrad off, maximize off):
//   p ← p · (1 − lr · λ)                 decoupled weight decay; λ = 0 for 1-D params (norms, biases)
//   m ← m + (1 − β₁)(g − m)              (= β₁ m + (1 − β₁) g, PyTorch's lerp)
//   v ← β₂ v + (1 − β₂) g²
//   p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
// Parameters without a gradient in a step are left alone (their m, v too), as PyTorch does.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

namespace retort {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.0;  // λ, applied to parameters with dim() >= 2 only
};

class AdamW {
 public:
  struct Param {
    std::string name;
    torch::Tensor value;  // the model's parameter (float32), updated in place
    torch::Tensor m, v;   // same shape, float32, zero-initialized
    bool decay = false;   // dim() >= 2
  };

  // Every parameter must be float32 (the master weights). Names must be unique.
  AdamW(const std::vector<std::pair<std::string, torch::Tensor>>& named_params, AdamWConfig cfg);

  void step(double lr);  // one update from each parameter's .grad()
  void zero_grad();      // drop the gradients (undefined, as set_to_none=True)
  int64_t steps() const { return t_; }
  void set_steps(int64_t t) { t_ = t; }  // with m, v set in place: state received from another rank
  const AdamWConfig& config() const { return cfg_; }
  const std::vector<Param>& params() const { return params_; }

  // optimizer.safetensors: "m.<name>", "v.<name>" F32 and "step" I64 [1], written atomically.
  void save(const std::string& path) const;
  // Restores m, v and the step count; a missing tensor or a shape that disagrees -> retort::Error
  // naming the file and the tensor.
  void load(const std::string& path);

 private:
  AdamWConfig cfg_;
  std::vector<Param> params_;
  int64_t t_ = 0;
};

// Global L2 norm of the gradients, ‖(‖g₁‖, ‖g₂‖, …)‖ as torch.nn.utils.clip_grad_norm_ takes it;
// when max_norm > 0 the gradients are multiplied by min(1, max_norm / (norm + 1e-6)).
// Returns the norm before clipping. Parameters without gradient are skipped.
double clip_grad_norm(const std::vector<AdamW::Param>& params, double max_norm);

}  // namespace retort
