// `retort serve`: the OpenAI-compatible server (serve/server.h), with the options a llama-server or vLLM
// user looks for. SIGTERM / SIGINT stop it gracefully: no new requests, running ones get --shutdown-grace
// seconds, the ledger is flushed, exit status 0.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <thread>

#include "cli/common.h"
#include "retort/serve/server.h"
#include "retort/util/error.h"

namespace retort::cli {

namespace {

struct ServeArgs {
  std::string config;
  ServeConfig c;
  bool no_keys = false;
  bool print_config = false;
  bool no_monitor = false;
  bool record_completions = false;
};

void run_serve(ServeArgs& a, const CLI::App& sub) {
  // The config file first, then any flag given on the command line over it.
  ServeConfig c;
  if (!a.config.empty()) c = load_serve_config(a.config);
  auto given = [&](const char* name) { return sub.count(name) > 0; };
  if (given("--model")) c.model = a.c.model;
  if (given("--model-id")) c.model_id = a.c.model_id;
  if (given("--host")) c.host = a.c.host;
  if (given("--port")) c.port = a.c.port;
  if (given("--db")) c.db = a.c.db;
  if (given("--threads")) c.threads = a.c.threads;
  if (given("--parallel")) c.parallel = a.c.parallel;
  if (given("--ctx-size")) c.ctx_size = a.c.ctx_size;
  if (given("--max-queue")) c.max_queue = a.c.max_queue;
  if (given("--timeout")) c.request_timeout_s = a.c.request_timeout_s;
  if (given("--shutdown-grace")) c.shutdown_grace_s = a.c.shutdown_grace_s;
  if (given("--watermark")) c.watermark = a.c.watermark;
  if (given("--watermark-key-file")) c.watermark_key_file = a.c.watermark_key_file;
  if (given("--max-top-logprobs")) c.max_top_logprobs = a.c.max_top_logprobs;
  if (a.no_keys) c.require_keys = false;
  if (a.no_monitor) c.monitor = false;
  if (a.record_completions) c.record_completions = true;
  if (given("--monitor-calibration")) c.monitor_calibration = a.c.monitor_calibration;
  if (given("--monitor-actions")) c.monitor_actions = a.c.monitor_actions;
  if (given("--antidistill")) c.antidistill = a.c.antidistill;
  if (given("--antidistill-lambda")) c.antidistill_lambda = a.c.antidistill_lambda;
  if (a.print_config) {
    std::printf("%s\n", serve_config_json(c).dump(2).c_str());
    return;
  }

  // Signals go to one thread that starts the graceful shutdown; every other thread blocks them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client gone mid-write is an error return, not a dead server

  Server server(c);
  std::thread signals([&] {
    int sig = 0;
    sigwait(&set, &sig);
    if (sig == 0) return;
    std::fprintf(stderr, "serve: %s: shutting down (in-flight requests get %.0f s)\n",
                 sig == SIGINT ? "SIGINT" : "SIGTERM", c.shutdown_grace_s);
    server.shutdown();
  });
  std::exception_ptr error;
  try {
    server.run();
  } catch (...) {
    error = std::current_exception();
  }
  // Wake the signal thread if run() ended some other way.
  pthread_kill(signals.native_handle(), SIGTERM);
  signals.join();
  if (error) std::rethrow_exception(error);
  std::fprintf(stderr, "serve: stopped; ledger flushed\n");
}

}  // namespace

void register_serve(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  auto* sub = app.add_subcommand("serve", "serve a model behind an OpenAI-compatible API with keys, a ledger, "
                                          "watermarks and logprob policy (docs/serve.md)");
  sub->add_option("--config", a->config, "a JSON config file (fields in docs/serve.md); flags override it");
  sub->add_option("-m,--model", a->c.model, "model: .gguf, Hugging Face directory or a short name in the cache")
      ->capture_default_str();
  sub->add_option("--model-id", a->c.model_id, "the model's name in /v1/models and requests (default: file stem)");
  sub->add_option("--host", a->c.host, "address to listen on (loopback by default)")->capture_default_str();
  sub->add_option("--port", a->c.port, "port (0 = any free port)")->capture_default_str();
  sub->add_option("--db", a->c.db, "keys and ledger database (default $RETORT_HOME/serve.db)");
  sub->add_option("-t,--threads", a->c.threads, "compute threads (0 = all cores)")->capture_default_str();
  sub->add_option("--parallel,--np", a->c.parallel, "sequences decoded together (KV cache slots)")->capture_default_str();
  sub->add_option("-c,--ctx-size", a->c.ctx_size, "tokens per sequence, prompt + completion")->capture_default_str();
  sub->add_option("--max-queue", a->c.max_queue, "requests waiting for a slot before 429")->capture_default_str();
  sub->add_option("--timeout", a->c.request_timeout_s, "seconds a request may run")->capture_default_str();
  sub->add_option("--shutdown-grace", a->c.shutdown_grace_s, "seconds in-flight requests get on SIGTERM/SIGINT")
      ->capture_default_str();
  sub->add_option("--watermark", a->c.watermark, "kgw, gumbel or none")->capture_default_str();
  sub->add_option("--watermark-key-file", a->c.watermark_key_file,
                  "master watermark key (default $RETORT_WATERMARK_KEY, else $RETORT_HOME/serve-watermark.key)");
  sub->add_option("--max-top-logprobs", a->c.max_top_logprobs, "server-wide cap on top_logprobs (0-20)")
      ->capture_default_str();
  sub->add_flag("--no-keys", a->no_keys, "serve requests without an API key too (keys are required by default)");
  sub->add_flag("--no-monitor", a->no_monitor, "run without the crawl monitor (it is on by default)");
  sub->add_option("--monitor-calibration", a->c.monitor_calibration,
                  "the crawl monitor's calibration (`retort monitor calibrate`); without one it scores nothing");
  sub->add_option("--monitor-actions", a->c.monitor_actions,
                  "what a flagged account or cluster gets: flag throttle cap_logprobs antidistill block")
      ->delimiter(',');
  sub->add_option("--antidistill", a->c.antidistill,
                  "antidistillation proxy directory (`retort antidistill prepare`), for the antidistill action");
  sub->add_option("--antidistill-lambda", a->c.antidistill_lambda, "antidistillation strength λ");
  sub->add_flag("--record-completions", a->record_completions,
                "keep every served answer with its prompt in the serve db (`retort keys served` exports them); "
                "stores users' text, off by default");
  sub->add_flag("--print-config", a->print_config, "print the effective config as JSON and exit");
  sub->callback([a, sub] { run_serve(*a, *sub); });
}

}  // namespace retort::cli
