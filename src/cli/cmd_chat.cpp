// `retort chat`: an interactive conversation with a model, tokens streamed as they come.
// Reads one user message per line from stdin (so it also works in a pipe). Commands: /reset, /system TEXT, /exit.
#include <cstdio>
#include <iostream>
#include <unistd.h>

#include "cli/common.h"
#include "retort/decode/generate.h"
#include "retort/text/chat_template.h"
#include "retort/util/error.h"

namespace retort::cli {
namespace {

struct ChatArgs {
  ModelOptions model;
  std::string system;
  SamplingParams sampling;
  int64_t max_tokens = 512;
};

void run(ChatArgs& a) {
  CliModel cm = load_cli_model(a.model);
  const CheckpointInfo& m = *cm;
  check(m.tokenizer != nullptr, m.path, ": this checkpoint has no tokenizer; chat needs one");
  check(ChatTemplate::available(m.chat_template, *m.tokenizer), m.path,
        ": the model has no chat template; use `retort generate --prompt` instead");
  ChatTemplate tpl = ChatTemplate::from_jinja(m.chat_template, *m.tokenizer);
  const bool tty = isatty(STDIN_FILENO);
  if (tty)
    std::fprintf(stderr, "retort chat — %s (%s template). /reset clears the conversation, /exit quits.\n",
                 m.path.c_str(), tpl.name().c_str());

  std::vector<ChatMessage> history;
  if (!a.system.empty()) history.push_back({"system", a.system});
  std::string line;
  uint64_t turn = 0;
  for (;;) {
    if (tty) std::fprintf(stderr, "\n> "), std::fflush(stderr);
    if (!std::getline(std::cin, line)) break;
    if (line == "/exit" || line == "/quit") break;
    if (line == "/reset") {
      history.clear();
      if (!a.system.empty()) history.push_back({"system", a.system});
      continue;
    }
    if (line.rfind("/system ", 0) == 0) {
      history.clear();
      a.system = line.substr(8);
      history.push_back({"system", a.system});
      continue;
    }
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    history.push_back({"user", line});

    // Drop the oldest exchanges (keeping a system message) while the prompt would not fit the context.
    std::vector<int32_t> ids;
    for (;;) {
      ids = tpl.encode(history, *m.tokenizer);
      if (static_cast<int64_t>(ids.size()) + a.max_tokens <= m.hparams.max_position) break;
      size_t first = (!history.empty() && history[0].role == "system") ? 1 : 0;
      if (history.size() - first <= 1)
        fail("the message is too long for the model's context (", ids.size(), " + ", a.max_tokens, " > ",
             m.hparams.max_position, " tokens); shorten it or lower --max-tokens");
      history.erase(history.begin() + first, history.begin() + std::min(history.size() - 1, first + 2));
    }

    GenerationRequest r;
    r.prompt = std::move(ids);
    r.sampling = a.sampling;
    r.sampling.seed = a.sampling.seed + turn++;  // a new draw each turn, still reproducible
    r.max_tokens = a.max_tokens;
    GenerateOptions opts;
    opts.max_batch = 1;
    opts.on_token = [](size_t, const GeneratedToken&, const std::string& piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    };
    std::vector<GenerationResult> res = generate(m, *cm.lm, {r}, opts);
    std::printf("\n");
    std::fflush(stdout);
    history.push_back({"assistant", res[0].text});
  }
}

}  // namespace

void register_chat(CLI::App& app) {
  auto a = std::make_shared<ChatArgs>();
  a->sampling.temperature = 0.7;
  a->sampling.top_p = 0.9;
  CLI::App* sub = app.add_subcommand("chat", "talk with a model interactively (streams tokens)");
  add_model_options(*sub, a->model);
  sub->add_option("--system", a->system, "system message");
  add_sampling_options(*sub, a->sampling, a->max_tokens);
  sub->callback([a] { run(*a); });
}

}  // namespace retort::cli
