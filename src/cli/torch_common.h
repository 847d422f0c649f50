// src/cli/torch_common.h — helpers of the subcommands that run on libtorch (retort-torch only).
#pragma once

#include "cli/common.h"
#include "retort/model/loader.h"

namespace retort::cli {

// Sets the thread count (OpenMP and libtorch intra-op) and resolves device/dtype, then loads the model
// as a libtorch model. inference_only: for commands that only generate or score (capture): a GGUF's
// matrices stay as its blocks, with no dense copy (LoadOptions::inference_only).
LoadedModel load_for_cli(const ModelOptions& o, bool load_tokenizer = true, bool inference_only = false);

}  // namespace retort::cli
