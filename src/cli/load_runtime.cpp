// load_cli_model for `retort`: the runtime without libtorch (CPU).
#include <thread>

#include "cli/common.h"
#include "retort/util/error.h"
#include "retort/util/parallel.h"

namespace retort::cli {

void apply_threads(int threads) {
  retort::set_num_threads(threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
}

bool needs_torch(const ModelOptions& o) { return o.device != "cpu"; }

CliModel load_cli_model(const ModelOptions& o, bool load_tokenizer) {
  apply_threads(o.threads);
  check(!needs_torch(o), "--device ", o.device, ": this command runs on the CPU in `retort`; GPU runs go through "
        "retort-torch (retort hands them over when it is installed beside it)");
  RuntimeLoadOptions lo;
  lo.load_tokenizer = load_tokenizer;
  lo.bf16 = o.dtype == "bf16";
  auto m = std::make_shared<RuntimeLoaded>(load_runtime_model(o.model, lo));
  CliModel out;
  out.lm = m->model.get();
  out.info = m;
  return out;
}

}  // namespace retort::cli
