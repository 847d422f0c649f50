// retort/model/kv_cache.h — the KV cache of a libtorch model: one tensor per layer for k and v, on the
// model's device and in its dtype. Each row of a batch owns a slot; slots advance independently, so
// sequences of different lengths share one batch (see CausalLMImpl::forward_cached). The CPU kernels
// read it through KvSlots::view(); the torch-free runtime has its own KvBuffers (cpu_model.h).
#pragma once

#include <cstdint>
#include <vector>

#include <torch/torch.h>

#include "retort/model/cpu_model.h"
#include "retort/model/hparams.h"

namespace retort {

struct KvCache : public KvSlots {
  KvCache(const ModelHParams& hp, int64_t n_slots, int64_t max_len, torch::Device device,
          torch::ScalarType dtype);

  std::vector<torch::Tensor> k, v;  // per layer [n_slots, n_head_kv, max_len, head_dim], zero-initialized

  int64_t max_len() const override { return max_len_; }
  KvView view() override;  // CPU tensors only

 private:
  int64_t max_len_ = 0;
};

}  // namespace retort
