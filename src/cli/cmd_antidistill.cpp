// `retort antidistill prepare --proxy STUDENT --teacher MODEL --traces STORE_OR_PROMPTS --out DIR`: the
// offline half of antidistillation sampling (distill/antidistill_prepare.h). The gradient g of the proxy's
// loss on held-out teacher traces, and DIR with the proxy at θ ± εg for `retort generate --antidistill DIR`
// and `retort serve` (protect/antidistill.h).
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "cli/torch_common.h"
#include "retort/distill/antidistill_prepare.h"
#include "retort/distill/capture.h"
#include "retort/distill/export.h"
#include "retort/util/error.h"

namespace retort::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct PrepareArgs {
  std::string proxy, teacher = "smollm2-135m-instruct", traces, out;
  int64_t limit = 64;
  double eps = 0, eps_rel = kAntidistillEpsRel;
  int threads = 0;
  // Capturing traces from a prompts file.
  SamplingParams sampling;
  int64_t max_tokens = 256;
};

void prepare(PrepareArgs& a) {
  check(!a.proxy.empty() && !a.traces.empty() && !a.out.empty(), "antidistill prepare: --proxy, --traces and --out are required");
  check(a.limit >= 0, "--limit must be >= 0");
  check(a.eps >= 0, "--eps must be >= 0 (0 = from --eps-rel)");
  check(fs::exists(a.traces), "antidistill prepare: --traces ", a.traces,
        " not found (give a signal store dir from `retort capture`, or a prompts JSONL to capture held-out traces from)");
  apply_threads(a.threads);

  // The teacher's tokenizer is the one the proxy must share; its weights load only to capture traces.
  const bool from_prompts = !fs::is_directory(a.traces);
  CheckpointInfo teacher = read_checkpoint_info(a.teacher, /*load_tokenizer=*/true);
  check(teacher.tokenizer != nullptr, "antidistill prepare: the teacher ", teacher.path, " has no tokenizer");
  ModelOptions po;
  po.model = a.proxy;
  po.threads = a.threads;
  po.dtype = "f32";
  LoadOptions lo;
  lo.quantized_decode = false;  // g and θ ± εg need the dense float32 weights only
  LoadedModel proxy = load_model(a.proxy, lo);
  check(proxy.tokenizer != nullptr, "antidistill prepare: the proxy ", proxy.path, " has no tokenizer");
  check(proxy.tokenizer->hash() == teacher.tokenizer->hash() && proxy.hparams.n_vocab == teacher.hparams.n_vocab,
        "antidistill prepare: the proxy ", proxy.path, " (tokenizer ", proxy.tokenizer->hash(), ", ",
        proxy.hparams.n_vocab, " tokens) does not share the teacher's tokenizer (", teacher.path, ": ",
        teacher.tokenizer->hash(), ", ", teacher.hparams.n_vocab,
        " tokens); use a student distilled from this teacher (`retort distill --teacher ", a.teacher, "`)");

  // Traces: a store as given, or captured from the prompts into DIR/traces (built in the staging dir).
  const std::string stage = antidistill_stage_dir(a.out);
  std::string store = a.traces;
  if (from_prompts) {
    CaptureOptions c;
    c.prompts_path = a.traces;
    c.out_dir = (fs::path(stage) / "traces").string();
    c.sampling = a.sampling;
    c.max_tokens = a.max_tokens;
    c.limit = a.limit;
    c.k = 1;
    check_prompts_file(c);
    fs::create_directories(stage);
    LoadedModel t = load_for_cli(ModelOptions{a.teacher, a.threads, "cpu", "f32"}, true, /*inference_only=*/true);
    capture(t, a.teacher, c);
    store = c.out_dir;
  }
  json traces_info;
  std::vector<AntidistillTrace> traces = read_antidistill_traces(store, a.limit, traces_info);
  check(traces_info["tokenizer_hash"] == teacher.tokenizer->hash(), "antidistill prepare: the traces in ", store,
        " were captured with tokenizer ", traces_info["tokenizer_hash"].dump(), ", not the teacher's (",
        teacher.tokenizer->hash(), "); capture held-out traces from ", a.teacher);
  if (from_prompts) traces_info["store"] = "traces";  // inside DIR once published

  std::fprintf(stderr, "[gradient of %s on %zu traces (%lld tokens)...]\n", proxy.path.c_str(), traces.size(),
               (long long)traces_info["tokens"].get<int64_t>());
  auto t0 = std::chrono::steady_clock::now();
  ProxyGradient g = proxy_loss_gradient(*proxy.model, traces);
  const double grad_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double eps = a.eps > 0 ? a.eps : antidistill_eps(g, a.eps_rel);

  ExportInfo info;
  info.chat_template = proxy.chat_template;
  info.eos_ids = proxy.eos_ids;
  info.generation_defaults = proxy.generation_defaults;
  info.provenance = {{"source", proxy.path}, {"antidistill", "proxy perturbed along its loss gradient"}};
  json extra = {{"proxy", {{"spec", a.proxy}, {"path", fs::absolute(proxy.path).string()},
                           {"sha256", model_sha256(proxy.path)}, {"arch", proxy.hparams.arch},
                           {"n_layer", proxy.hparams.n_layer}, {"n_embd", proxy.hparams.n_embd}}},
                {"teacher", {{"spec", a.teacher}, {"path", teacher.path}, {"sha256", model_sha256(teacher.path)}}},
                {"traces", traces_info},
                {"eps_source", a.eps > 0 ? "--eps" : "eps_rel * param_norm / grad_norm"}};
  json m = write_antidistill_dir(*proxy.model, *proxy.tokenizer, info, g, eps, a.eps > 0 ? 0.0 : a.eps_rel, a.out, extra,
                                 /*probe=*/traces[0].tokens);
  json summary = {{"out", a.out},          {"eps", eps},
                  {"grad_norm", g.grad_norm}, {"param_norm", g.param_norm},
                  {"mean_loss", g.mean_loss}, {"traces", g.traces},
                  {"tokens", g.tokens},       {"gradient_seconds", grad_secs},
                  {"delta_std", m["delta_std"]}};
  std::cout << summary.dump() << "\n";
}

}  // namespace

void register_antidistill(CLI::App& app) {
  CLI::App* ad = app.add_subcommand("antidistill", "antidistillation sampling: prepare a proxy student's perturbed copies");
  ad->require_subcommand(1);
  auto a = std::make_shared<PrepareArgs>();
  CLI::App* sub = ad->add_subcommand(
      "prepare", "compute g, the gradient of a proxy student's loss on held-out teacher traces, and write DIR with the "
                 "proxy at θ ± εg for `retort generate --antidistill DIR` / `retort serve`");
  sub->add_option("--proxy", a->proxy, "proxy student on the teacher's tokenizer (.gguf, HF dir or a distill checkpoint)")
      ->required();
  sub->add_option("--teacher", a->teacher, "the teacher whose tokenizer the proxy shares (and that captures traces)")
      ->capture_default_str();
  sub->add_option("--traces", a->traces,
                  "held-out teacher traces: a signal store (`retort capture`, generate mode), or a prompts JSONL to "
                  "capture them from with the teacher (kept in DIR/traces)")
      ->required();
  sub->add_option("-o,--out", a->out, "output directory (replaced atomically)")->required();
  sub->add_option("--limit", a->limit, "traces to use (0 = all)")->capture_default_str();
  sub->add_option("--eps-rel", a->eps_rel, "step size relative to the weights: ε = eps_rel·‖θ‖/‖g‖")->capture_default_str();
  sub->add_option("--eps", a->eps, "absolute ε (overrides --eps-rel; 0 = off)")->capture_default_str();
  sub->add_option("-t,--threads", a->threads, "CPU threads (0 = all cores)")->capture_default_str();
  add_sampling_options(*sub, a->sampling, a->max_tokens);
  sub->callback([a] { prepare(*a); });
}

}  // namespace retort::cli
