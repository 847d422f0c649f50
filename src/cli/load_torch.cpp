// load_cli_model for `retort-torch`: the runtime on the CPU (as `retort` does), libtorch on a GPU.
#include "cli/common.h"
#include "cli/torch_common.h"
#include "retort/util/error.h"

namespace retort::cli {

bool needs_torch(const ModelOptions& o) { return false; }  // this binary runs everything

CliModel load_cli_model(const ModelOptions& o, bool load_tokenizer) {
  CliModel out;
  if (o.device == "cpu") {
    apply_threads(o.threads);
    RuntimeLoadOptions lo;
    lo.load_tokenizer = load_tokenizer;
    lo.bf16 = o.dtype == "bf16";
    auto m = std::make_shared<RuntimeLoaded>(load_runtime_model(o.model, lo));
    out.lm = m->model.get();
    out.info = m;
    return out;
  }
  auto m = std::make_shared<LoadedModel>(load_for_cli(o, load_tokenizer));
  out.lm = m->model.get();
  out.info = m;
  return out;
}

}  // namespace retort::cli
