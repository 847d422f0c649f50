// `retort capture`: record a teacher's signal (sampled tokens with top-k logprobs, or
// teacher-forced scores of given completions) into a signal store; resumes an existing one.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <nlohmann/json.hpp>

#include "cli/torch_common.h"
#include "cli/watermark_options.h"
#include "retort/distill/capture.h"
#include "retort/distill/remote_capture.h"
#include "retort/distill/signal_store.h"
#include "retort/protect/keys.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

namespace retort::cli {

namespace {

using nlohmann::json;

struct CaptureArgs {
  ModelOptions model;  // model.model is --teacher
  CaptureOptions capture;
  bool no_chat = false;
  bool quiet = false;
  WatermarkCliOptions watermark;
  RemoteTeacher remote;  // --teacher-url and its settings
  std::string api_key_env;
  std::string api_keys_file;
  CLI::Option* teacher_option = nullptr;
};

// Ctrl-C during a capture from an API: the first stops new requests (those in flight finish and everything
// answered is kept); a second one quits at once (the journal keeps what was answered).
std::atomic<bool> g_stop{false};
void on_sigint(int) {
  if (g_stop.exchange(true)) {
    std::signal(SIGINT, SIG_DFL);
    std::raise(SIGINT);
  }
}

void run_remote(CaptureArgs& a) {
  CaptureOptions& c = a.capture;
  RemoteTeacher& t = a.remote;
  check(a.teacher_option == nullptr || a.teacher_option->count() == 0,
        "--teacher and --teacher-url: give one (a local model, or an API)");
  if (!a.api_key_env.empty()) {
    const char* key = std::getenv(a.api_key_env.c_str());
    check(key != nullptr && *key != '\0', "--api-key-env ", a.api_key_env, ": the environment variable is not set "
          "or empty; export it with the API key");
    t.api_key = key;
  }
  if (!a.api_keys_file.empty()) {
    check(a.api_key_env.empty(), "--api-key-env and --api-keys-file: give one");
    std::istringstream in(read_file(a.api_keys_file));
    for (std::string line; std::getline(in, line);) {
      const auto b = line.find_first_not_of(" \t\r"), e = line.find_last_not_of(" \t\r");
      if (b == std::string::npos || line[b] == '#') continue;
      t.api_keys.push_back(line.substr(b, e - b + 1));
    }
    check(!t.api_keys.empty(), a.api_keys_file, ": no API key in the file (one key per line; # starts a comment)");
  }
  t.stop = &g_stop;
  std::signal(SIGINT, on_sigint);
  std::signal(SIGTERM, on_sigint);
  RemoteCaptureSummary s = capture_remote(t, c);
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  std::fprintf(stderr,
               "[captured %lld samples (%lld already done) of %lld prompt%s from %s in %.2f s -> %s (%s store)]\n"
               "[usage: %lld requests (%lld retries, %lld throttled, %lld server errors, %lld transport errors), "
               "%lld prompt + %lld completion tokens; %lld refused, %lld unmappable, %lld failed]\n",
               (long long)s.capture.samples_written, (long long)s.capture.samples_skipped, (long long)s.capture.prompts,
               s.capture.prompts == 1 ? "" : "s", t.url.c_str(), s.capture.seconds, c.out_dir.c_str(),
               s.store_kind.c_str(), (long long)s.requests, (long long)s.retries, (long long)s.throttled,
               (long long)s.server_errors, (long long)s.transport_errors, (long long)s.prompt_tokens,
               (long long)s.completion_tokens, (long long)s.refused, (long long)s.unmappable, (long long)s.failed);
  if (s.prompt_length_mismatches > 0)
    std::fprintf(stderr, "warning: for %lld samples the server counted another number of prompt tokens than %s "
                 "encodes: is --teacher-tokenizer the teacher's tokenizer?\n",
                 (long long)s.prompt_length_mismatches, t.tokenizer.c_str());
  if (s.refused + s.unmappable > 0)
    std::fprintf(stderr, "note: %lld samples were skipped; %s/skipped.jsonl says why\n",
                 (long long)(s.refused + s.unmappable), c.out_dir.c_str());
  if (s.interrupted) {
    std::fprintf(stderr, "interrupted: run the same command again to resume\n");
    std::exit(130);
  }
  if (s.failed > 0)
    std::fprintf(stderr, "not complete: %lld samples failed after their retries; run the same command again to "
                 "ask them again\n", (long long)s.failed);
  else if (!s.complete && c.limit > 0)
    std::fprintf(stderr, "the first %lld prompts are captured (--limit); the store is complete once every prompt of "
                 "the file is: run again with a larger --limit, or none, to add the rest\n", (long long)c.limit);
}

std::string hex_digest(const std::string& bytes) {
  auto d = sha256(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (uint8_t b : d) s += {digits[b >> 4], digits[b & 15]};
  return s;
}

// The watermark settings recorded in the manifest: the parameters and a commitment to the key
// (never the key itself).
json watermark_manifest(const WatermarkCliOptions& o) {
  json j = {{"scheme", o.scheme}};
  if (!o.account.empty()) j["account"] = o.account;
  if (o.scheme == "kgw") {
    j["gamma"] = o.gamma;
    j["delta"] = o.delta;
    j["context"] = o.context;
    j["h"] = o.h;
  } else if (o.scheme == "gumbel") {
    j["h"] = o.h;
  } else if (o.scheme == "synthid") {
    j["ngram_len"] = o.synthid_ngram_len;
    j["layers"] = o.synthid_layers;
    j["seed"] = o.synthid_seed;
    if (!o.synthid_keys.empty()) {
      j["keys_sha256"] = hex_digest(o.synthid_keys);
      return j;
    }
    if (!o.synthid_config.empty()) {
      j["config_sha256"] = hex_digest(read_file(o.synthid_config));
      return j;
    }
  }
  j["key_commitment"] = watermark_key(o).commitment();
  return j;
}

void run(CaptureArgs& a) {
  CaptureOptions& c = a.capture;
  c.chat = !a.no_chat;
  c.progress = !a.quiet;
  if (!a.remote.url.empty()) {
    check(a.watermark.scheme.empty(), "--watermark: a teacher behind an API watermarks (or not) on its own side");
    return run_remote(a);
  }
  check_prompts_file(c);  // a bad line fails before the (slow) teacher load
  LoadedModel m = load_for_cli(a.model, /*load_tokenizer=*/true, /*inference_only=*/true);
  if (!a.watermark.scheme.empty()) {
    check(c.mode == "generate", "--watermark applies to --mode generate only");
    a.watermark.synthid_seed = c.sampling.seed;  // as in `retort generate`
    std::shared_ptr<LogitsProcessor> proc = make_watermark_processor(a.watermark, m.hparams.n_vocab);
    c.make_processor = [proc] { return proc; };  // the schemes keep no per-sequence state
    c.watermark = watermark_manifest(a.watermark);
  }
  CaptureSummary s = capture(m, a.model.model, c);
  std::fprintf(stderr, "[captured %lld samples (%lld already stored) of %lld prompt%s, %lld tokens in %.2f s, %.1f tok/s -> %s]\n",
               (long long)s.samples_written, (long long)s.samples_skipped, (long long)s.prompts,
               s.prompts == 1 ? "" : "s", (long long)s.tokens_generated, s.seconds,
               s.seconds > 0 ? s.tokens_generated / s.seconds : 0.0, c.out_dir.c_str());
}

}  // namespace

void register_capture(CLI::App& app) {
  auto a = std::make_shared<CaptureArgs>();
  CLI::App* sub = app.add_subcommand(
      "capture", "record a teacher's signal (tokens + top-k logprobs) into a signal store for distillation");
  a->teacher_option = sub->add_option("--teacher", a->model.model,
                  "teacher model: a .gguf file, a Hugging Face checkpoint directory, or a short name in the model cache")
      ->capture_default_str();
  sub->add_option("-t,--threads", a->model.threads, "CPU threads (0 = all cores)")->capture_default_str();
  sub->add_option("--device", a->model.device, "cpu, cuda or cuda:N")->capture_default_str();
  sub->add_option("--dtype", a->model.dtype, "weights dtype: auto (f32 on CPU, bf16 on CUDA), f32, bf16")
      ->check(CLI::IsMember({"auto", "f32", "bf16"}))
      ->capture_default_str();
  CaptureOptions& c = a->capture;
  sub->add_option("--prompts", c.prompts_path,
                  "JSONL, one {\"prompt\": ...} or {\"messages\": [...]} per line (optional \"system\"; "
                  "score mode also \"completion\")")
      ->required();
  sub->add_option("--out", c.out_dir, "signal store directory (an existing one is resumed)")->required();
  sub->add_option("--mode", c.mode, "generate: sample from the teacher; score: teacher-forced over given completions")
      ->check(CLI::IsMember({"generate", "score"}))
      ->capture_default_str();
  sub->add_option("--samples", c.samples_per_prompt, "completions per prompt")->capture_default_str();
  add_sampling_options(*sub, c.sampling, c.max_tokens);
  sub->add_option("--k", c.k, "top-k logprobs kept per position (1..256)")->capture_default_str();
  sub->add_flag("--no-chat", a->no_chat, "use \"prompt\" text raw instead of the chat template");
  sub->add_option("--system", c.system, "system message for chat-formatted prompts");
  sub->add_option("--batch", c.batch, "sequences decoded together")->capture_default_str();
  sub->add_option("--shard-samples", c.shard_samples, "samples per shard file (the unit of resume)")
      ->capture_default_str();
  sub->add_option("--limit", c.limit, "use only the first N prompts (0 = all)")->capture_default_str();
  sub->add_flag("-q,--quiet", a->quiet, "no progress bar");
  add_watermark_options(*sub, a->watermark);
  RemoteTeacher& r = a->remote;
  sub->add_option("--teacher-url", r.url,
                  "capture from an OpenAI-compatible API instead (retort serve, llama-server, vLLM, hosted): its base "
                  "URL, e.g. http://127.0.0.1:8080/v1");
  sub->add_option("--teacher-model", r.model, "with --teacher-url: the \"model\" to ask for");
  sub->add_option("--api-key-env", a->api_key_env, "with --teacher-url: the environment variable holding the API key");
  sub->add_option("--api-keys-file", a->api_keys_file,
                  "with --teacher-url: a file of API keys, one per line; sample i is asked with key i mod n (requests "
                  "spread over several accounts)");
  sub->add_option("--teacher-tokenizer", r.tokenizer,
                  "with --teacher-url: a model (file, directory or cache name) with the teacher's tokenizer; tokens "
                  "then map to ids and the store is a signal store. Without it: a text store of token pieces");
  sub->add_option("--signal", r.signal, "with --teacher-url: logprobs (tokens + top-k) or text (completions only)")
      ->check(CLI::IsMember({"logprobs", "text"}))
      ->capture_default_str();
  sub->add_option("--concurrency", r.concurrency, "with --teacher-url: requests in flight")->capture_default_str();
  sub->add_option("--rpm", r.requests_per_minute, "with --teacher-url: at most this many requests per minute (0 = no limit)")
      ->capture_default_str();
  sub->add_option("--timeout", r.timeout_s, "with --teacher-url: seconds one attempt may take")->capture_default_str();
  sub->add_option("--backoff", r.backoff_s, "with --teacher-url: seconds before the first retry (doubling after; "
                  "Retry-After wins)")->capture_default_str();
  sub->add_option("--max-retries", r.max_retries, "with --teacher-url: retries of a failed request (429, 5xx, timeouts)")
      ->capture_default_str();
  sub->callback([a] { run(*a); });
}

}  // namespace retort::cli
