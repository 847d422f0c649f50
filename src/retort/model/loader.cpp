#include "retort/model/loader.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <set>

#include <ATen/Parallel.h>

#include "retort/io/ggml_quants.h"
#include "retort/io/gguf.h"
#include "retort/io/hf_checkpoint.h"
#include "retort/io/safetensors.h"
#include "retort/model/family.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

namespace fs = std::filesystem;

namespace retort {

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// One parameter to fill: where it comes from and how.
struct WeightJob {
  torch::Tensor param;
  std::string src;        // tensor name in the checkpoint
  int64_t unpermute = 0;  // > 0: undo llama.cpp's q/k row permutation with this many heads
  float offset = 0;       // added to every stored value (Gemma's GGUF norms store 1 + w)
};

// Rows of one head in llama.cpp order are (i, j) pairs, i < head_dim/2, j < 2; the Hugging Face
// order is (j, i). w [n_head * head_dim, ...] -> same shape, rows reordered.
torch::Tensor unpermute_rows(const torch::Tensor& w, int64_t n_head) {
  auto sizes = w.sizes().vec();
  const int64_t head_dim = sizes[0] / n_head;
  std::vector<int64_t> v = {n_head, head_dim / 2, 2};
  for (size_t d = 1; d < sizes.size(); ++d) v.push_back(sizes[d]);
  return w.reshape(v).transpose(1, 2).reshape(sizes).contiguous();
}

// Fill every job in parallel: read float32 (directly into the parameter when it is float32 on
// the CPU and needs no reordering), reorder, copy.
void run_jobs(std::vector<WeightJob>& jobs, const std::function<void(const std::string&, float*)>& read) {
  torch::NoGradGuard no_grad;
  std::vector<std::exception_ptr> errors(jobs.size());
  at::parallel_for(0, int64_t(jobs.size()), 1, [&](int64_t begin, int64_t end) {
    torch::NoGradGuard no_grad_here;  // grad mode is per thread: the workers' own is on
    for (int64_t i = begin; i < end; ++i) {
      auto& job = jobs[size_t(i)];
      try {
        auto& p = job.param;
        bool direct = p.device().is_cpu() && p.scalar_type() == torch::kFloat32 && p.is_contiguous() &&
                      job.unpermute == 0;
        if (direct) {
          read(job.src, p.data_ptr<float>());
          if (job.offset != 0) p.add_(job.offset);
        } else {
          auto tmp = torch::empty(p.sizes(), torch::kFloat32);
          read(job.src, tmp.data_ptr<float>());
          if (job.offset != 0) tmp.add_(job.offset);
          if (job.unpermute > 0) tmp = unpermute_rows(tmp, job.unpermute);
          p.copy_(tmp);
        }
      } catch (...) {
        errors[size_t(i)] = std::current_exception();
      }
    }
  });
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// The kernels' format for a ggml block type, if they read it (dense F32/BF16 stay dense parameters).
std::optional<cpu::WeightFormat> kernel_format(uint32_t ggml_type) {
  cpu::WeightFormat f;
  if (!cpu::weight_format_of_ggml(ggml_type, &f) || !cpu::is_quantized(f)) return std::nullopt;
  return f;
}

}  // namespace

void load_weights_gguf(CausalLMImpl& model, const GgufFile& f) {
  const std::set<const c10::TensorImpl*> hollow = [&] {
    std::set<const c10::TensorImpl*> s;
    if (!model.dense())
      for (const auto& p : model.parameters())
        if (p.dim() == 2 && p.numel() > 1 && p.stride(0) == 0) s.insert(p.unsafeGetTensorImpl());
    return s;
  }();
  std::vector<WeightJob> jobs;
  for (auto& p : model.named_parameters()) {
    std::string src = model.gguf_name(p.key());
    TORCH_CHECK(!src.empty(), "no GGUF name for parameter ", p.key());
    const GgufTensorInfo* t = f.find_tensor(src);
    check(t != nullptr, "gguf ", f.path(), ": tensor ", src, " is missing (expected shape ",
          shape_str(p.value().sizes().vec()), ")");
    check(t->shape() == p.value().sizes().vec(), "gguf ", f.path(), ": tensor ", src, " has shape ",
          shape_str(t->shape()), ", expected ", shape_str(p.value().sizes().vec()), " from the hyperparameters");
    if (hollow.count(p.value().unsafeGetTensorImpl())) continue;  // read by the kernels from its blocks
    jobs.push_back({p.value(), src, model.gguf_permuted_heads(p.key()), model.gguf_offset(p.key())});
  }
  run_jobs(jobs, [&](const std::string& name, float* dst) { f.read_f32(*f.find_tensor(name), dst); });
}

int64_t attach_gguf_blocks(CausalLMImpl& model, const GgufFile& f, bool only_copy) {
  int64_t n = 0;
  const torch::Tensor& embedding = model.embedding_weight();
  const bool tied = &model.output_weight() == &embedding;
  for (auto& p : model.named_parameters()) {
    const torch::Tensor& w = p.value();
    if (w.dim() != 2 || model.gguf_offset(p.key()) != 0) continue;
    // The embedding is read as blocks only when inference-only (its rows are dequantized per token) or
    // as the tied output head.
    if (w.is_same(embedding) && !only_copy && !tied) continue;
    const GgufTensorInfo* t = f.find_tensor(model.gguf_name(p.key()));
    if (t == nullptr) continue;
    const auto format = kernel_format(t->type);
    if (!format || w.size(1) % cpu::weight_block_elems(*format) != 0) continue;
    const int64_t rows = w.size(0), row_bytes = cpu::weight_row_bytes(*format, w.size(1));
    check(int64_t(t->nbytes) == rows * row_bytes, "gguf ", f.path(), ": tensor ", t->name, " has ", t->nbytes,
          " bytes, expected ", rows * row_bytes);
    const uint8_t* src = f.tensor_data(*t);
    // llama.cpp's q/k row order within a head is (i, j), i < head_dim/2, j < 2; ours is (j, i): such
    // rows get a reordered copy, every other matrix is read in place from the file's mapping.
    const int64_t heads = model.gguf_permuted_heads(p.key());
    if (heads == 0 && f.mapping() != nullptr) {
      model.attach_kernel_weight(w, *format, src, f.mapping(), only_copy);
    } else {
      auto blocks = std::make_shared<std::vector<uint8_t>>(size_t(rows * row_bytes));
      const int64_t hd = heads > 0 ? rows / heads : 0;
      for (int64_t r = 0; r < rows; ++r) {
        int64_t from = r;
        if (heads > 0) {
          const int64_t h = r / hd, j = (r % hd) / (hd / 2), i = r % (hd / 2);
          from = h * hd + i * 2 + j;
        }
        std::memcpy(blocks->data() + r * row_bytes, src + from * row_bytes, size_t(row_bytes));
      }
      model.attach_kernel_weight(w, *format, blocks->data(), blocks, only_copy);
    }
    ++n;
  }
  return n;
}

void load_weights_hf(CausalLMImpl& model, const HfCheckpoint& ckpt) {
  std::vector<WeightJob> jobs;
  for (auto& p : model.named_parameters()) {
    const std::string& name = p.key();
    const SafetensorsTensorInfo* t = ckpt.find_tensor(name);
    check(t != nullptr, ckpt.dir(), ": tensor ", name, " is missing (expected shape ",
          shape_str(p.value().sizes().vec()), ")",
          name == "lm_head.weight" ? "; if the output embedding is tied, set tie_word_embeddings in config.json" : "");
    check(t->shape == p.value().sizes().vec(), ckpt.dir(), ": tensor ", name, " in ",
          ckpt.file_of(name).path(), " has shape ", shape_str(t->shape), ", expected ",
          shape_str(p.value().sizes().vec()), " from config.json");
    jobs.push_back({p.value(), name, 0, 0});
  }
  run_jobs(jobs, [&](const std::string& name, float* dst) { ckpt.read_f32(name, dst); });
}

LoadedModel load_model(const std::string& spec, const LoadOptions& opts) {
  auto t0 = std::chrono::steady_clock::now();
  LoadedModel out;
  static_cast<CheckpointInfo&>(out) = read_checkpoint_info(spec, opts.load_tokenizer);
  {
    ParamDtypeScope scope(opts.dtype);
    out.model = make_causal_lm(out.hparams);
  }
  std::optional<GgufFile> gguf;
  if (out.format == "hf") {
    load_weights_hf(*out.model, HfCheckpoint::open(out.path));
  } else {
    gguf.emplace(GgufFile::open(out.path));
    // Inference only: the matrices the kernels read stay blocks in the mapping, never dense.
    if (opts.inference_only && opts.device.is_cpu()) attach_gguf_blocks(*out.model, *gguf, /*only_copy=*/true);
    load_weights_gguf(*out.model, *gguf);
  }
  if (opts.device != torch::Device(torch::kCPU)) out.model->to(opts.device, opts.dtype);
  if (gguf && opts.quantized_decode && !opts.inference_only && opts.device.is_cpu())
    attach_gguf_blocks(*out.model, *gguf, /*only_copy=*/false);
  out.model->eval();
  out.load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

}  // namespace retort
