// retort/model/llama.h — the Llama family's libtorch modules (training, GPU): Llama 2/3 (incl. llama3 RoPE
// scaling), SmolLM/SmolLM2, Mistral, Qwen2/2.5 (q/k/v bias); grouped-query attention; tied or separate
// output embedding. Its CPU inference pass and tensor names are in llama_rows.cpp.
//
//   x = embed(tokens)
//   per layer:  h = x + o_proj(attn(rms_norm(x)))
//               x = h + down(silu(gate(rms_norm(h))) * up(rms_norm(h)))
//   logits = lm_head(rms_norm(x))
//
// RoPE is rotate-half (NeoX / Hugging Face layout); the GGUF loader un-permutes llama.cpp's
// interleaved q/k rows (gguf_permuted_heads) so one implementation serves both formats.
// Parameter names equal Hugging Face's (model.layers.N.self_attn.q_proj.weight, ...).
// The residual stream, norms, RoPE and softmax are float32; weights stay in their dtype.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/torch.h>

#include "retort/model/causal_lm.h"
#include "retort/model/family.h"

namespace retort {

// x * rsqrt(mean(x²) + eps) * w, computed in float32.
struct RmsNormImpl : torch::nn::Module {
  RmsNormImpl(int64_t n, double eps);
  torch::Tensor forward(const torch::Tensor& x);  // float32 [..., n]
  torch::Tensor weight;                           // [n]
  double eps;
};
TORCH_MODULE(RmsNorm);

struct AttentionImpl : torch::nn::Module {
  explicit AttentionImpl(const ModelHParams& hp);
  Proj q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
};
TORCH_MODULE(Attention);

struct MlpImpl : torch::nn::Module {
  explicit MlpImpl(const ModelHParams& hp);
  torch::Tensor forward(const torch::Tensor& x);  // down(silu(gate(x)) * up(x))
  Proj gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(Mlp);

struct DecoderLayerImpl : torch::nn::Module {
  explicit DecoderLayerImpl(const ModelHParams& hp);
  RmsNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention self_attn{nullptr};
  Mlp mlp{nullptr};
};
TORCH_MODULE(DecoderLayer);

// Holds embed_tokens, layers, norm under the name "model" (as transformers does).
struct LlamaBackboneImpl : torch::nn::Module {
  explicit LlamaBackboneImpl(const ModelHParams& hp);
  torch::Tensor embed_tokens;  // [n_vocab, n_embd], registered as "embed_tokens.weight"
  std::vector<DecoderLayer> layers;
  RmsNorm norm{nullptr};
};
TORCH_MODULE(LlamaBackbone);

class LlamaModelImpl : public CausalLMImpl {
 public:
  explicit LlamaModelImpl(const ModelHParams& hp);

  torch::Tensor forward_hidden(const torch::Tensor& tokens) override;
  const torch::Tensor& embedding_weight() const override { return model->embed_tokens; }
  const torch::Tensor& output_weight() const override { return lm_head ? lm_head->weight : model->embed_tokens; }

  LlamaBackbone model{nullptr};
  Proj lm_head{nullptr};  // null when tied: logits use model->embed_tokens

 protected:
  torch::Tensor cached_hidden_torch(const torch::Tensor& tokens, const CachedRows& rows, KvCache& cache,
                                    bool last_only) override;

 private:
  RopeTable rope_;
};
TORCH_MODULE(LlamaModel);

}  // namespace retort
