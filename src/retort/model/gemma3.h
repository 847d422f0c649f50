// retort/model/gemma3.h — Gemma 3 (text), the libtorch modules (training, GPU): Hugging Face
// Gemma3ForCausalLM / llama.cpp LLM_ARCH_GEMMA3. Its CPU inference pass and tensor names are in
// gemma3_rows.cpp.
//
//   x = embed(tokens) * sqrt(n_embd)
//   per layer l:
//     h = rms_norm_in(x);  q, k, v = h Wq, h Wk, h Wv;  q, k = rms_norm_q(q), rms_norm_k(k) per head
//     q, k = rope(q, k)    local layers: theta_local, no scaling; global layers: theta + scaling
//     a = softmax(q·kᵀ * query_scale + mask) v   local layers see the last sliding_window keys only
//     x = x + rms_norm_post_attn(a Wo)
//     x = x + rms_norm_post_ffn(down(gelu_tanh(gate(h')) * up(h'))),  h' = rms_norm_pre_ffn(x)
//   logits = rms_norm_final(x) · embedᵀ (tied)
//
// Every norm is x * rsqrt(mean(x²) + eps) * (1 + w) in float32: checkpoints store w (Hugging Face),
// GGUF files store 1 + w (gguf_offset undoes it on load, as transformers' GGUF loader does). Layer l
// is local iff hparams().is_local(l) (every layer but each 6th in Gemma 3). Parameter names equal
// Hugging Face's; no q/k row permutation in GGUF (Gemma's RoPE is rotate-half in both).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include <torch/torch.h>

#include "retort/model/causal_lm.h"
#include "retort/model/family.h"

namespace retort {

// x * rsqrt(mean(x²) + eps) * (1 + w), float32.
struct Gemma3RmsNormImpl : torch::nn::Module {
  Gemma3RmsNormImpl(int64_t n, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;  // [n], w (not 1 + w)
  double eps;
};
TORCH_MODULE(Gemma3RmsNorm);

struct Gemma3AttentionImpl : torch::nn::Module {
  explicit Gemma3AttentionImpl(const ModelHParams& hp);
  Proj q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  Gemma3RmsNorm q_norm{nullptr}, k_norm{nullptr};  // over head_dim, shared by the heads
};
TORCH_MODULE(Gemma3Attention);

struct Gemma3MlpImpl : torch::nn::Module {
  explicit Gemma3MlpImpl(const ModelHParams& hp);
  torch::Tensor forward(const torch::Tensor& x);  // down(gelu_tanh(gate(x)) * up(x))
  Proj gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(Gemma3Mlp);

struct Gemma3LayerImpl : torch::nn::Module {
  explicit Gemma3LayerImpl(const ModelHParams& hp);
  Gemma3RmsNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Gemma3RmsNorm pre_feedforward_layernorm{nullptr}, post_feedforward_layernorm{nullptr};
  Gemma3Attention self_attn{nullptr};
  Gemma3Mlp mlp{nullptr};
};
TORCH_MODULE(Gemma3Layer);

struct Gemma3BackboneImpl : torch::nn::Module {
  explicit Gemma3BackboneImpl(const ModelHParams& hp);
  torch::Tensor embed_tokens;  // [n_vocab, n_embd], "embed_tokens.weight" (unscaled)
  std::vector<Gemma3Layer> layers;
  Gemma3RmsNorm norm{nullptr};
};
TORCH_MODULE(Gemma3Backbone);

class Gemma3ModelImpl : public CausalLMImpl {
 public:
  explicit Gemma3ModelImpl(const ModelHParams& hp);

  torch::Tensor forward_hidden(const torch::Tensor& tokens) override;
  const torch::Tensor& embedding_weight() const override { return model->embed_tokens; }
  const torch::Tensor& output_weight() const override { return lm_head ? lm_head->weight : model->embed_tokens; }

  Gemma3Backbone model{nullptr};
  Proj lm_head{nullptr};  // null when tied (Gemma 3 always is)

 protected:
  torch::Tensor cached_hidden_torch(const torch::Tensor& tokens, const CachedRows& rows, KvCache& cache,
                                    bool last_only) override;

 private:
  // The embedding scale sqrt(n_embd), rounded to float32 as transformers' buffer holds it.
  float embed_scale() const;
  // One layer on libtorch ops (forward_hidden and the cached libtorch pass). cos/sin/mask by layer kind
  // (index 0 global, 1 local); kv(l, k, v) takes this pass's k, v [B, T, Hkv, D] (after norm and RoPE,
  // v as projected) and returns the keys and values to attend to, [B, Hkv, L, D].
  struct TorchPass {
    torch::Tensor cos[2], sin[2], mask[2];
    std::function<std::pair<torch::Tensor, torch::Tensor>(int64_t, const torch::Tensor&, const torch::Tensor&)> kv;
  };
  torch::Tensor layer_torch(int64_t l, const torch::Tensor& x, const TorchPass& pass);
  RopeTable rope_global_, rope_local_;
};
TORCH_MODULE(Gemma3Model);

}  // namespace retort
