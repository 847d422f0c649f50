#include "retort/model/kv_cache.h"

#include "retort/util/error.h"

namespace retort {

KvCache::KvCache(const ModelHParams& hp, int64_t n_slots, int64_t max_len, torch::Device device,
                 torch::ScalarType dtype)
    : lengths(size_t(std::max<int64_t>(n_slots, 0)), 0), max_len_(max_len) {
  check(n_slots > 0, "kv cache: n_slots must be positive, got ", n_slots);
  check(max_len > 0, "kv cache: max_len must be positive, got ", max_len);
  auto opts = torch::TensorOptions().device(device).dtype(dtype);
  // Zeros, not empty: masked-out entries still enter probs @ V, and 0 * NaN garbage would be NaN.
  for (int64_t l = 0; l < hp.n_layer; ++l) {
    k.push_back(torch::zeros({n_slots, hp.n_head_kv, max_len, hp.head_dim}, opts));
    v.push_back(torch::zeros({n_slots, hp.n_head_kv, max_len, hp.head_dim}, opts));
  }
}

void KvCache::clear(int64_t slot) {
  check(slot >= 0 && slot < n_slots(), "kv cache: slot ", slot, " out of range [0, ", n_slots(), ")");
  lengths[size_t(slot)] = 0;
}

void KvCache::clear_all() {
  for (auto& n : lengths) n = 0;
}

}  // namespace retort
