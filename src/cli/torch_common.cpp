// Helpers of the libtorch subcommands (retort-torch).
#include "cli/torch_common.h"

#include <thread>

#include "retort/util/error.h"
#include "retort/util/parallel.h"

namespace retort::cli {

void apply_threads(int threads) {
  const int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  retort::set_num_threads(n);
  torch::set_num_threads(n);  // Debian's libtorch otherwise starts with one intra-op thread
}

LoadedModel load_for_cli(const ModelOptions& o, bool load_tokenizer, bool inference_only) {
  apply_threads(o.threads);
  LoadOptions lo;
  try {
    lo.device = torch::Device(o.device);
  } catch (const std::exception&) {
    fail("--device ", o.device, ": not a device (use cpu, cuda or cuda:N)");
  }
  if (lo.device.is_cuda() && !torch::cuda::is_available())
    fail("--device ", o.device, ": this build of retort has no CUDA (or no GPU is visible); use --device cpu");
  if (o.dtype == "bf16" || (o.dtype == "auto" && lo.device.is_cuda()))
    lo.dtype = torch::kBFloat16;
  else
    lo.dtype = torch::kFloat32;
  lo.load_tokenizer = load_tokenizer;
  lo.inference_only = inference_only;
  return load_model(o.model, lo);
}

}  // namespace retort::cli
