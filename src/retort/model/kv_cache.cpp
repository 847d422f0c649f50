#include "retort/model/kv_cache.h"

#include "retort/util/error.h"

namespace retort {

KvCache::KvCache(const ModelHParams& hp, int64_t n_slots, int64_t max_len, torch::Device device,
                 torch::ScalarType dtype)
    : max_len_(max_len) {
  check(n_slots > 0, "kv cache: n_slots must be positive, got ", n_slots);
  check(max_len > 0, "kv cache: max_len must be positive, got ", max_len);
  lengths.assign(size_t(n_slots), 0);
  auto opts = torch::TensorOptions().device(device).dtype(dtype);
  // Zeros, not empty: masked-out entries still enter probs @ V, and 0 * NaN garbage would be NaN.
  for (int64_t l = 0; l < hp.n_layer; ++l) {
    k.push_back(torch::zeros({n_slots, hp.n_head_kv, max_len, hp.head_dim}, opts));
    v.push_back(torch::zeros({n_slots, hp.n_head_kv, max_len, hp.head_dim}, opts));
  }
}

KvView KvCache::view() {
  KvView out;
  out.max_len = max_len_;
  for (size_t l = 0; l < k.size(); ++l) {
    check(k[l].device().is_cpu() && k[l].is_contiguous() && v[l].is_contiguous(),
          "kv cache: the CPU kernels need a contiguous CPU cache");
    out.bf16 = k[l].scalar_type() == torch::kBFloat16;
    out.k.push_back(k[l].data_ptr());
    out.v.push_back(v[l].data_ptr());
  }
  return out;
}

}  // namespace retort
