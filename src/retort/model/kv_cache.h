// retort/model/kv_cache.h — slot-based key/value cache for batched decoding.
//
// Each row of a batch owns a slot; slots advance independently, so sequences of
// different lengths share one batch (see CausalLMImpl::forward_cached).
#pragma once

#include <cstdint>
#include <vector>

#include <torch/torch.h>

#include "retort/model/hparams.h"

namespace retort {

struct KvCache {
  KvCache(const ModelHParams& hp, int64_t n_slots, int64_t max_len, torch::Device device,
          torch::ScalarType dtype);

  std::vector<torch::Tensor> k, v;  // per layer [n_slots, n_head_kv, max_len, head_dim], zero-initialized
  std::vector<int64_t> lengths;     // per slot: tokens already cached

  int64_t n_slots() const { return int64_t(lengths.size()); }
  int64_t max_len() const { return max_len_; }
  void clear(int64_t slot);  // lengths[slot] = 0 (stale entries stay finite and are masked)
  void clear_all();

 private:
  int64_t max_len_ = 0;
};

}  // namespace retort
