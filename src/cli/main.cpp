// The `retort` command: one binary, one subcommand per verb (see cmd_*.cpp).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <thread>

#include "cli/common.h"
#include "retort/util/error.h"

namespace retort::cli {

void add_model_options(CLI::App& sub, ModelOptions& o) {
  sub.add_option("-m,--model", o.model,
                 "model: a .gguf file, a Hugging Face checkpoint directory, or a short name in the model cache")
      ->capture_default_str();
  sub.add_option("-t,--threads", o.threads, "CPU threads (0 = all cores)")->capture_default_str();
  sub.add_option("--device", o.device, "cpu, cuda or cuda:N")->capture_default_str();
  sub.add_option("--dtype", o.dtype, "weights dtype: auto (f32 on CPU, bf16 on CUDA), f32, bf16")
      ->check(CLI::IsMember({"auto", "f32", "bf16"}))
      ->capture_default_str();
}

void apply_threads(int threads) {
  int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(n);
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

int main(int argc, char** argv) {
  CLI::App app{"retort — distill, serve and audit LLMs on one native runtime"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "retort 0.1.0");
  retort::cli::register_inspect(app);
  retort::cli::register_tokenize(app);
  retort::cli::register_generate(app);
  retort::cli::register_chat(app);
  retort::cli::register_watermark(app);
  retort::cli::register_distill(app);
  retort::cli::register_capture(app);
  retort::cli::register_eval(app);
  retort::cli::register_export(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const retort::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const c10::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error (libtorch): %s\n", e.what_without_backtrace());
    return 2;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  return 0;
}
