// The `retort` command: one subcommand per verb (see cmd_*.cpp).
//
// Two binaries are built from this file. `retort` runs what needs no libtorch — tokenize, inspect,
// generate, chat, watermark — in a process that never loads it (libtorch brings ~290 shared libraries and
// ~150 MiB of resident memory before any model). Subcommands that train or run on a GPU (capture,
// distill, eval, export; any --device other than cpu) are handed to `retort-torch`, installed beside it,
// which has every subcommand: `retort distill ...` is exactly `retort-torch distill ...`.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <string>
#include <vector>

#include "cli/common.h"
#include "retort/util/error.h"
#ifdef RETORT_CLI_TORCH
#include <c10/util/Exception.h>
#endif

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

namespace {

// The subcommands only retort-torch runs, with the one-line help `retort --help` shows for them.
const std::pair<const char*, const char*> kTorchCommands[] = {
    {"capture", "capture a teacher's answers and top-k logprobs into a signal store (runs in retort-torch)"},
    {"distill", "train a student from a teacher's signal (runs in retort-torch)"},
    {"eval", "evaluate a student against its teacher on a held-out store (runs in retort-torch)"},
    {"export", "export a model as a Hugging Face directory or GGUF (runs in retort-torch)"},
    {"antidistill", "prepare antidistillation sampling: a proxy student perturbed along its loss gradient (runs in retort-torch)"},
};

#ifndef RETORT_CLI_TORCH
// The subcommand this command line runs, and whether it needs libtorch (a torch-only subcommand, or a
// --device other than cpu).
bool wants_torch(int argc, char** argv) {
  if (argc < 2) return false;
  for (const auto& [name, help] : kTorchCommands)
    if (std::strcmp(argv[1], name) == 0) return true;
  for (int i = 2; i < argc; ++i) {
    if (std::strcmp(argv[i], "--device") == 0 && i + 1 < argc && std::strcmp(argv[i + 1], "cpu") != 0) return true;
    if (std::strncmp(argv[i], "--device=", 9) == 0 && std::strcmp(argv[i] + 9, "cpu") != 0) return true;
  }
  return false;
}

// Replaces this process with retort-torch (beside this binary, or $RETORT_TORCH), same arguments.
[[noreturn]] void exec_torch(int argc, char** argv) {
  std::string path;
  if (const char* env = std::getenv("RETORT_TORCH"); env && *env) {
    path = env;
  } else {
    std::error_code ec;
    const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
    path = (ec ? std::filesystem::path(argv[0]) : self).parent_path() / "retort-torch";
  }
  std::vector<char*> args(argv, argv + argc);
  args[0] = path.data();
  args.push_back(nullptr);
  ::execv(path.c_str(), args.data());
  std::fprintf(stderr,
               "error: this subcommand (or --device) runs on libtorch, in retort-torch, which could not be started "
               "at %s (%s); build it (scripts/setup.sh builds both) or set RETORT_TORCH to its path\n",
               path.c_str(), std::strerror(errno));
  std::exit(2);
}
#endif

}  // namespace
}  // namespace retort::cli

int main(int argc, char** argv) {
  using namespace retort::cli;
#ifndef RETORT_CLI_TORCH
  if (wants_torch(argc, argv)) exec_torch(argc, argv);
#endif
  CLI::App app{"retort — distill, serve and audit LLMs on one native runtime"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "retort 0.1.0");
  register_inspect(app);
  register_tokenize(app);
  register_generate(app);
  register_chat(app);
  register_watermark(app);
  register_keys(app);
  register_monitor(app);
  register_serve(app);
  register_audit(app);
  register_demo(app);
#ifdef RETORT_CLI_TORCH
  register_distill(app);
  register_capture(app);
  register_eval(app);
  register_export(app);
  register_antidistill(app);
#else
  for (const auto& [name, help] : kTorchCommands) app.add_subcommand(name, help)->allow_extras();
#endif
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const retort::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
#ifdef RETORT_CLI_TORCH
  } catch (const c10::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error (libtorch): %s\n", e.what_without_backtrace());
    return 2;
#endif
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  return 0;
}
