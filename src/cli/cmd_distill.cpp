// `retort distill`: train a student on a teacher's signal, or (no --data / --config FILE) run the
// whole main job: capture → student → KD + SFT baseline → eval → export → table.
#include <cstdio>
#include <filesystem>
#include <unistd.h>

#include "cli/torch_common.h"
#include "retort/distill/distributed.h"
#include "retort/distill/pipeline.h"
#include "retort/distill/signal_store.h"
#include "retort/distill/student.h"
#include "retort/distill/text_store.h"
#include "retort/distill/trainer.h"
#include "retort/distill/xtok_data.h"
#include "retort/io/hf_checkpoint.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

namespace fs = std::filesystem;

namespace retort::cli {

namespace {

struct DistillArgs {
  std::string config, teacher, data, eval_data, student, loss = "fkl", out;
  std::string train_prompts, heldout_prompts, losses, tasks;
  int64_t train_limit = -1, heldout_limit = -1, capture_max_tokens = -1;
  int threads = 0;
  std::string device = "cpu";
  bool quiet = false, no_t2 = false;
  int nproc = 1;                  // --nproc: ranks started on this machine
  double dist_timeout = 60;       // seconds
  double bucket_mb = 25;
  bool no_overlap = false;
  std::string xtok_merge = "first";
  PipelineOptions::Api api;  // --teacher-url ...: the main job from a teacher behind an API
  TrainerConfig t;
};

// The directory the `retort` binary lives in: default prompts are found relative to it
// (build/retort -> ../data/prompts) when not relative to the working directory.
std::string exe_dir() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string() : p.parent_path().string();
}

std::string find_repo_file(const std::string& rel) {
  if (fs::exists(rel)) return rel;
  const std::string d = exe_dir();
  for (const char* up : {"/..", "/../.."}) {
    auto cand = fs::path(d + up) / rel;
    if (fs::exists(cand)) return fs::weakly_canonical(cand).string();
  }
  return rel;
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  size_t a = 0;
  while (a <= s.size()) {
    size_t b = s.find(',', a);
    if (b == std::string::npos) b = s.size();
    if (b > a) out.push_back(s.substr(a, b - a));
    a = b + 1;
  }
  return out;
}

void run_pipeline_mode(const DistillArgs& a, CLI::App& sub) {
  PipelineOptions o;
  if (!a.config.empty()) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_file(a.config));
    } catch (const nlohmann::json::exception& e) {
      fail("--config ", a.config, ": not valid JSON (", e.what(), ")");
    }
    // Relative paths in a config under configs/ are relative to the repository root.
    const fs::path cdir = fs::absolute(a.config).parent_path();
    o = PipelineOptions::from_json(j, a.config, (cdir / "..").lexically_normal().string());
  } else {
    o.train_prompts = find_repo_file(o.train_prompts);
    o.heldout_prompts = find_repo_file(o.heldout_prompts);
  }
  // Flags given on the command line override the config.
  auto given = [&](const char* name) { return sub.get_option(name)->count() > 0; };
  if (given("--teacher")) o.teacher = a.teacher;
  if (given("--teacher-url")) {
    check(!given("--teacher"), "distill: give --teacher MODEL (a local teacher) or --teacher-url URL (one behind an "
                               "API), not both");
    const bool had_api = !o.api.url.empty();
    o.api.url = a.api.url;
    if (!had_api && !given("--losses")) o.losses = {"ce", "gold"};
    if (!had_api && !given("--lr")) o.train.lr = kApiStudentLr;  // a pretrained student (pipeline.h)
  }
  if (given("--teacher-model")) o.api.model = a.api.model;
  if (given("--api-key-env")) o.api.api_key_env = a.api.api_key_env;
  if (given("--concurrency")) o.api.concurrency = a.api.concurrency;
  if (given("--rpm")) o.api.rpm = a.api.rpm;
  if (given("--timeout")) o.api.timeout_s = a.api.timeout_s;
  if (given("--max-retries")) o.api.max_retries = a.api.max_retries;
  for (const char* f : {"--teacher-model", "--api-key-env", "--concurrency", "--rpm", "--timeout", "--max-retries"})
    check(!given(f) || !o.api.url.empty(), "distill: ", f, " belongs to a teacher behind an API: give --teacher-url");
  if (given("--out")) o.out = a.out;
  if (given("--student")) o.student = a.student;
  if (given("--train-prompts")) o.train_prompts = a.train_prompts;
  if (given("--heldout-prompts")) o.heldout_prompts = a.heldout_prompts;
  if (given("--losses")) o.losses = split_commas(a.losses);
  if (given("--train-limit")) o.train_limit = a.train_limit;
  if (given("--heldout-limit")) o.heldout_limit = a.heldout_limit;
  if (given("--capture-max-tokens")) o.max_tokens = a.capture_max_tokens;
  if (given("--tasks")) o.tasks = a.tasks == "none" ? "" : a.tasks;
  if (given("--steps")) o.train.steps = a.t.steps;
  if (given("--batch")) o.train.batch = a.t.batch;
  if (given("--lr")) o.train.lr = a.t.lr;
  if (given("--max-seq")) o.train.max_seq = a.t.max_seq;
  if (given("--seed")) o.train.seed = a.t.seed;
  if (given("--eval-every")) o.train.eval_every = a.t.eval_every;
  if (given("--eval-samples")) o.train.eval_samples = a.t.eval_samples;
  if (given("--accum")) o.train.accum = a.t.accum;
  if (given("--warmup")) o.train.warmup = a.t.warmup;
  if (given("--min-lr-ratio")) o.train.min_lr_ratio = a.t.min_lr_ratio;
  if (given("--weight-decay")) o.train.weight_decay = a.t.weight_decay;
  if (given("--beta1")) o.train.beta1 = a.t.beta1;
  if (given("--beta2")) o.train.beta2 = a.t.beta2;
  if (given("--eps")) o.train.eps = a.t.eps;
  if (given("--clip")) o.train.clip = a.t.clip;
  if (given("--temperature")) o.train.loss.temperature = a.t.loss.temperature;
  if (given("--beta")) o.train.loss.beta = a.t.loss.beta;
  if (given("--alpha")) o.train.loss.alpha = a.t.loss.alpha;
  if (given("--no-t2")) o.train.loss.t2_scale = false;
  if (given("--dense")) o.train.dense = true;
  if (given("--lambda")) o.train.on_policy_lambda = a.t.on_policy_lambda;
  if (given("--on-policy-max-tokens")) o.train.on_policy_max_tokens = a.t.on_policy_max_tokens;
  if (given("--on-policy-temperature")) o.train.on_policy_temperature = a.t.on_policy_temperature;
  if (given("--chunk-rows")) o.train.chunk_rows = a.t.chunk_rows;
  if (given("--save-every")) o.train.save_every = a.t.save_every;
  check(!given("--loss"), "distill: the main job trains every loss in --losses (e.g. --losses ce,fkl); --loss is for "
                          "training on a store (--data)");
  if (given("--device")) o.device = a.device;
  if (given("--threads")) o.threads = a.threads;
  o.progress = !a.quiet;
  check(a.nproc == 1 && !DistEnv::from_environment().from_env,
        "distill: --nproc / WORLD_SIZE train one run on several processes; the main job (no --data) runs "
        "in one process — train its stores with `retort distill --data STORE ... --nproc N` instead");
  apply_threads(o.threads);
  run_pipeline(o);
}

void run_trainer_mode(const DistillArgs& a, bool threads_given) {
  check(!a.out.empty(), "--out DIR is required with --data");
  const DistEnv env = DistEnv::from_environment();
  if (a.nproc > 1 && !env.from_env) {
    launch_local_ranks(a.nproc, threads_given);  // each rank runs this function again, with RANK set
    std::printf("distill --nproc %d: all ranks finished; model: %s/final   metrics: %s/metrics.jsonl\n", a.nproc,
                a.out.c_str(), a.out.c_str());
    return;
  }
  check(a.nproc <= 1 || a.nproc == env.world_size, "--nproc ", a.nproc, " disagrees with WORLD_SIZE=",
        env.world_size, " set by the launcher; leave --nproc out under torchrun / srun");
  std::unique_ptr<Distributed> dist;
  if (env.world_size > 1) {
    DistOptions dopt;
    check(a.dist_timeout > 0, "--dist-timeout must be > 0 seconds, got ", a.dist_timeout);
    check(a.bucket_mb > 0, "--bucket-mb must be > 0, got ", a.bucket_mb);
    dopt.timeout = std::chrono::milliseconds(int64_t(a.dist_timeout * 1000));
    dopt.bucket_bytes = int64_t(a.bucket_mb * 1048576.0);
    dopt.overlap = !a.no_overlap;
    dist = std::make_unique<Distributed>(env, dopt, torch::Device(a.device));
  }
  const bool root = !dist || dist->is_root();
  check(!a.student.empty(), "--student SPEC|DIR is required with --data (e.g. layers=8,hidden=256,heads=4,kv_heads=2,ffn=768)");
  ModelOptions mo;
  mo.threads = a.threads;
  mo.device = a.device;
  const torch::Device dev(a.device);

  // A text store (a teacher behind an API, tokenizer unknown): the student learns across tokenizers.
  const bool text_store = TextStore::is_text_store(a.data);
  std::optional<SignalStore> data_store, eval_store;
  if (!text_store) data_store.emplace(SignalStore::open(a.data));
  if (!a.eval_data.empty()) {
    check(TextStore::is_text_store(a.eval_data) == text_store, "--eval-data ", a.eval_data, " is a ",
          text_store ? "signal store" : "text store", " but --data ", a.data, " is a ",
          text_store ? "text store" : "signal store", "; give held-out data of the same kind");
    if (!text_store) eval_store.emplace(SignalStore::open(a.eval_data));
  }

  const bool student_is_model =
      fs::is_directory(a.student) || (a.student.size() > 5 && a.student.substr(a.student.size() - 5) == ".gguf");
  // Across tokenizers: a text store, or a signal store whose tokenizer is not the student's (a model with its own).
  bool cross = text_store;
  if (!text_store && student_is_model) {
    const CheckpointInfo si = read_checkpoint_info(a.student, /*load_tokenizer=*/true);
    cross = si.tokenizer != nullptr && si.tokenizer->hash() != data_store->manifest().tokenizer_hash;
    if (cross && eval_store)
      check(eval_store->manifest().tokenizer_hash == data_store->manifest().tokenizer_hash, "--eval-data ", a.eval_data,
            " was captured with another tokenizer than --data ", a.data);
  }
  TrainerConfig cfg = a.t;
  cfg.cross_tokenizer = cross;
  if (cross && (a.loss == "uld" || a.loss == "gold")) {
    cfg.xtok_loss = a.loss;
    cfg.loss.kind = LossKind::CE;
    check(a.xtok_merge == "first" || a.xtok_merge == "last", "--xtok-merge must be first or last, got ", a.xtok_merge);
    cfg.xtok.merge = a.xtok_merge == "first" ? SpanMerge::First : SpanMerge::Last;
    cfg.xtok.student_temperature = cfg.xtok.teacher_temperature = a.t.loss.temperature;
    cfg.xtok.beta = a.t.loss.beta;
  } else {
    check(a.loss != "uld" && a.loss != "gold", "--loss ", a.loss, " distills across tokenizers: --data must be a text "
          "store (retort capture --teacher-url without --teacher-tokenizer) or a store captured with another "
          "tokenizer than the student's, but ", a.data, " shares the student's; train it with ce, fkl, rkl, jsd, skl, "
          "srkl or tvd");
    cfg.loss.kind = loss_kind_from_name(a.loss);
  }
  cfg.loss.t2_scale = !a.no_t2;
  cfg.progress = !a.quiet && root;

  std::optional<LoadedModel> teacher;
  if (!a.teacher.empty()) {
    mo.model = a.teacher;
    teacher.emplace(load_for_cli(mo));
  } else {
    apply_threads(a.threads);
  }

  TrainerInputs in;
  std::shared_ptr<Tokenizer> tok;
  ExportInfo info;
  nlohmann::json student_desc;
  if (student_is_model) {
    // Continue training an existing model (an HF dir, a checkpoint, or a GGUF).
    LoadOptions lo;
    lo.device = dev;
    lo.dtype = torch::kFloat32;
    LoadedModel sm = load_model(a.student, lo);
    check(sm.tokenizer != nullptr, "--student ", a.student, ": the model has no tokenizer");
    in.student = sm.model;
    tok = sm.tokenizer;
    info.chat_template = sm.chat_template;
    info.eos_ids = sm.eos_ids;
    info.generation_defaults = sm.generation_defaults;
    student_desc = {{"from", sm.path}};
  } else {
    check(!cross, "--student ", a.student, ": across tokenizers the student must be a model with its own "
          "tokenizer (an HF dir, a checkpoint or a GGUF, e.g. the gemma3-270m of the model cache), not a config");
    check(teacher.has_value(), "--student ", a.student, ": a student made from a config needs the teacher (--teacher MODEL)");
    StudentConfig sc;
    if (a.student.size() > 5 && a.student.substr(a.student.size() - 5) == ".json") {
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(read_file(a.student));
      } catch (const nlohmann::json::exception& e) {
        fail("--student ", a.student, ": not valid JSON (", e.what(), ")");
      }
      sc = StudentConfig::from_json(j, a.student);
    } else {
      sc = StudentConfig::parse(a.student);
    }
    auto hp = student_hparams(teacher->hparams, sc);
    if (sc.init == "prune") {
      // Calibration: the first samples of the training store, cut to a common length.
      std::vector<int64_t> ids;
      int64_t rows = 0, len = 64;
      for (int64_t i = 0; i < data_store->n_samples() && rows < 16; ++i) {
        auto s = data_store->sample(i);
        if (s.n_tokens < len) continue;
        ids.insert(ids.end(), s.tokens, s.tokens + len);
        ++rows;
      }
      check(rows > 0, "--student ", a.student, ": pruning needs calibration samples of >= ", len, " tokens in ", a.data);
      torch::NoGradGuard no_grad;
      in.student = prune_from_teacher(*teacher, hp, torch::tensor(ids, torch::kInt64).view({rows, len}), sc.keep);
    } else {
      in.student = make_random_student(hp, sc.seed);
    }
    tok = teacher->tokenizer;
    info.chat_template = teacher->chat_template;
    info.eos_ids = teacher->eos_ids;
    info.generation_defaults = teacher->generation_defaults;
    student_desc = sc.to_json();
  }
  in.student->to(dev, torch::kFloat32);
  in.tokenizer = tok.get();
  info.provenance = {{"teacher", a.teacher}, {"data", a.data}, {"loss", a.loss}, {"student", student_desc}};
  in.export_info = info;
  in.provenance = info.provenance;
  in.data = cross ? nullptr : data_store ? &*data_store : nullptr;
  in.eval_data = cross ? nullptr : eval_store ? &*eval_store : nullptr;
  std::optional<XTokData> xtok_data, xtok_eval;
  if (cross) {
    CheckpointInfo sinfo;  // the student's tokenizer and chat template, for its own encoding of the prompts
    sinfo.path = a.student;
    sinfo.tokenizer = tok;
    sinfo.chat_template = info.chat_template;
    sinfo.eos_ids = info.eos_ids;
    auto report = [&](const char* what, const XTokData& d) {
      if (!root) return;
      std::fprintf(stderr, "%s %s: %zu samples for the student's tokenizer, %zu skipped", what, d.dir.c_str(),
                   d.examples.size(), d.skipped.size());
      if (!d.skipped.empty()) std::fprintf(stderr, " (e.g. %s: %s)", d.skipped.front().where.c_str(), d.skipped.front().reason.c_str());
      if (d.k > 0) std::fprintf(stderr, "; %.1f%% of the teacher's top-%lld tokens are student tokens", 100 * d.matched_share,
                                static_cast<long long>(d.k));
      std::fprintf(stderr, "\n");
    };
    xtok_data.emplace(text_store ? make_xtok_data(TextStore::open(a.data), sinfo) : make_xtok_data(*data_store, sinfo));
    report("data", *xtok_data);
    if (!a.eval_data.empty()) {
      xtok_eval.emplace(text_store ? make_xtok_data(TextStore::open(a.eval_data), sinfo)
                                   : make_xtok_data(*eval_store, sinfo));
      report("eval data", *xtok_eval);
    }
    in.xtok_data = &*xtok_data;
    in.xtok_eval = xtok_eval ? &*xtok_eval : nullptr;
    in.provenance["cross_tokenizer"] = xtok_data->summary();
  }
  in.teacher = teacher ? &*teacher : nullptr;
  in.dist = dist.get();

  TrainResult r;
  if (dist) {
    try {
      r = train(in, cfg, a.out);
    } catch (const std::exception& e) {
      // Leave at once: Gloo's threads may still wait on a dead peer, and destructors would wait for them.
      const auto* ce = dynamic_cast<const c10::Error*>(&e);
      std::fflush(stdout);
      std::fprintf(stderr, "error: [rank %d/%d] %s\n", env.rank, env.world_size, ce ? ce->what_without_backtrace() : e.what());
      std::fflush(stderr);
      ::_exit(1);
    }
    if (!root) return;
  } else {
    r = train(in, cfg, a.out);
  }
  std::printf("trained %lld steps (from step %lld): %lld tokens in %.1f s (%.0f tok/s), last loss %.4f\n",
              static_cast<long long>(r.steps), static_cast<long long>(r.start_step), static_cast<long long>(r.tokens),
              r.seconds, r.tokens_per_s, r.last_loss);
  if (!r.xtok_eval.is_null()) {
    const auto& e = r.xtok_eval;
    auto num = [](const nlohmann::json& v) { return v.is_number() ? v.get<double>() : NAN; };
    std::printf("held-out (student tokens): nll/byte %.4f  bits/byte %.4f  teacher nll/byte %.4f  top-1 agreement %.4f "
                "(%lld positions)\n", num(e["nll_per_byte"]), num(e["bits_per_byte"]), num(e["teacher_nll_per_byte"]),
                num(e["top1_agree"]), static_cast<long long>(e["agree_positions"].get<int64_t>()));
  }
  if (r.eval)
    std::printf("held-out: nll %.4f  ppl %.2f  top-1 agreement %.4f  KL %.4f\n", r.eval->nll, r.eval->ppl,
                r.eval->top1_agree, r.eval->kl);
  std::printf("model: %s/final   metrics: %s/metrics.jsonl   report: %s/report.html\n", a.out.c_str(), a.out.c_str(),
              a.out.c_str());
}

}  // namespace

void register_distill(CLI::App& app) {
  auto a = std::make_shared<DistillArgs>();
  auto* sub = app.add_subcommand(
      "distill",
      "train a student on a teacher's captured signal; with no --data, run the main job "
      "(capture, student, KD vs SFT, eval, export) — configs/quickstart.json");
  auto& t = a->t;
  sub->add_option("--config", a->config, "main-job config (JSON), e.g. configs/quickstart.json");
  sub->add_option("--teacher", a->teacher, "teacher model (needed for students made from a config, --dense, --lambda)");
  sub->add_option("--teacher-url", a->api.url,
                  "main job from a teacher behind an OpenAI-compatible API (base URL, e.g. http://host:8080/v1): text "
                  "stores, a --student MODEL with its own tokenizer, losses ce,gold by default");
  sub->add_option("--teacher-model", a->api.model, "with --teacher-url: the model name sent to the API");
  sub->add_option("--api-key-env", a->api.api_key_env, "with --teacher-url: the environment variable holding the API key");
  sub->add_option("--concurrency", a->api.concurrency, "with --teacher-url: requests in flight")->capture_default_str();
  sub->add_option("--rpm", a->api.rpm, "with --teacher-url: client-side limit on requests per minute (0 = none)")
      ->capture_default_str();
  sub->add_option("--timeout", a->api.timeout_s, "with --teacher-url: seconds one request may take")->capture_default_str();
  sub->add_option("--max-retries", a->api.max_retries, "with --teacher-url: retries per request")->capture_default_str();
  sub->add_option("--data", a->data, "signal store to train on (retort capture); without it, the main job runs");
  sub->add_option("--eval-data", a->eval_data, "held-out signal store for periodic evaluation");
  sub->add_option("--student", a->student,
                  "student: \"layers=8,hidden=256,heads=4,kv_heads=2,ffn=768,init=prune\", a JSON file, "
                  "or a model (HF dir / checkpoint / GGUF) to continue from");
  sub->add_option("--loss", a->loss,
                  "ce | fkl | rkl | jsd | skl | srkl | tvd; on a text store (another tokenizer): ce (SFT on the "
                  "teacher's text) | uld | gold")
      ->capture_default_str();
  sub->add_option("--xtok-merge", a->xtok_merge, "uld/gold: which row of a multi-token span carries it: first | last")
      ->capture_default_str();
  sub->add_option("--xtok-ce-weight", t.xtok_ce_weight, "uld/gold: weight of CE on the teacher's text")
      ->capture_default_str();
  sub->add_option("--xtok-weight", t.xtok_weight, "uld/gold: weight of the span loss")->capture_default_str();
  sub->add_option("--xtok-matched-weight", t.xtok.matched_weight,
                  "gold: weight of the exact part (tokens both vocabularies have); default: the store's matched share");
  sub->add_option("--out", a->out, "output directory (main job default: $RETORT_HOME/runs/quickstart)");
  sub->add_option("--temperature", t.loss.temperature, "distillation temperature τ")->capture_default_str();
  sub->add_option("--beta", t.loss.beta, "JSD β")->capture_default_str();
  sub->add_option("--alpha", t.loss.alpha, "skew KL α")->capture_default_str();
  sub->add_flag("--no-t2", a->no_t2, "do not multiply divergences by τ²");
  sub->add_flag("--dense", t.dense, "dense teacher logits from the in-process teacher instead of the store");
  sub->add_option("--steps", t.steps, "optimizer steps")->capture_default_str();
  sub->add_option("--batch", t.batch, "sequences per micro-batch")->capture_default_str();
  sub->add_option("--accum", t.accum, "micro-batches per step (gradient accumulation)")->capture_default_str();
  sub->add_option("--max-seq", t.max_seq, "tokens per sequence (longer samples are cut)")->capture_default_str();
  sub->add_option("--lr", t.lr, "peak learning rate")->capture_default_str();
  sub->add_option("--min-lr-ratio", t.min_lr_ratio, "cosine floor as a fraction of --lr")->capture_default_str();
  sub->add_option("--warmup", t.warmup, "linear warmup steps")->capture_default_str();
  sub->add_option("--weight-decay", t.weight_decay, "AdamW decoupled weight decay (2-D weights only)")
      ->capture_default_str();
  sub->add_option("--beta1", t.beta1, "AdamW β1")->capture_default_str();
  sub->add_option("--beta2", t.beta2, "AdamW β2")->capture_default_str();
  sub->add_option("--eps", t.eps, "AdamW ε")->capture_default_str();
  sub->add_option("--clip", t.clip, "global gradient-norm clip (0 = off)")->capture_default_str();
  sub->add_option("--seed", t.seed, "data order / on-policy seed")->capture_default_str();
  sub->add_option("--lambda", t.on_policy_lambda, "on-policy (GKD) fraction of batches sampled from the student")
      ->capture_default_str();
  sub->add_option("--on-policy-max-tokens", t.on_policy_max_tokens, "tokens the student generates per on-policy sample")
      ->capture_default_str();
  sub->add_option("--on-policy-temperature", t.on_policy_temperature, "student sampling temperature (on-policy)")
      ->capture_default_str();
  sub->add_option("--chunk-rows", t.chunk_rows, "rows per output-head chunk in the loss")->capture_default_str();
  sub->add_option("--eval-every", t.eval_every, "evaluate every N steps (0 = at the end only)")->capture_default_str();
  sub->add_option("--eval-samples", t.eval_samples, "held-out samples per evaluation (0 = all)")->capture_default_str();
  sub->add_option("--save-every", t.save_every, "checkpoint every N steps (0 = none)")->capture_default_str();
  sub->add_option("--keep-checkpoints", t.keep_checkpoints, "checkpoints kept")->capture_default_str();
  sub->add_flag("--resume", t.resume, "continue from the latest checkpoint in --out");
  sub->add_option("--train-prompts", a->train_prompts, "main job: training prompts (JSONL)");
  sub->add_option("--heldout-prompts", a->heldout_prompts, "main job: held-out prompts (JSONL)");
  sub->add_option("--losses", a->losses, "main job: comma-separated losses to train and compare (ce = SFT-only)");
  sub->add_option("--train-limit", a->train_limit, "main job: use only the first N training prompts");
  sub->add_option("--heldout-limit", a->heldout_limit, "main job: use only the first N held-out prompts");
  sub->add_option("--capture-max-tokens", a->capture_max_tokens, "main job: tokens per teacher completion");
  sub->add_option("--tasks", a->tasks, "main job: answer-checkable tasks (JSONL) for the teacher and the KD student "
                                       "(overrides the config's; \"none\" skips them)");
  sub->add_option("-t,--threads", a->threads, "CPU threads (0 = all cores)")->capture_default_str();
  sub->add_option("--device", a->device, "cpu, cuda or cuda:N")->capture_default_str();
  sub->add_flag("-q,--quiet", a->quiet, "no progress bars");
  sub->add_option("--nproc", a->nproc,
                  "data-parallel: start N training processes on this machine (c10d Gloo; on several machines "
                  "start one per rank with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set: docs/distributed.md)")
      ->capture_default_str();
  sub->add_option("--dist-timeout", a->dist_timeout, "data-parallel: seconds a collective may wait for the other ranks")
      ->capture_default_str();
  sub->add_option("--bucket-mb", a->bucket_mb, "data-parallel: gradient all-reduce bucket size (MiB)")
      ->capture_default_str();
  sub->add_flag("--no-overlap", a->no_overlap, "data-parallel: all-reduce gradients after backward, not during it");
  sub->callback([a, sub] {
    if (a->data.empty())
      run_pipeline_mode(*a, *sub);
    else
      run_trainer_mode(*a, sub->get_option("--threads")->count() > 0);
  });
}

}  // namespace retort::cli
