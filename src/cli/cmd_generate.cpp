// `retort generate`: one prompt, or many from a JSONL file generated as one batch.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "cli/watermark_options.h"
#include "retort/decode/generate.h"
#include "retort/io/jsonl.h"
#include "retort/protect/antidistill.h"
#include "retort/text/chat_template.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"

namespace retort::cli {

void add_sampling_options(CLI::App& sub, SamplingParams& s, int64_t& max_tokens) {
  sub.add_option("-n,--max-tokens", max_tokens, "most tokens to generate per prompt")->capture_default_str();
  sub.add_option("--temperature", s.temperature, "0 = greedy")->capture_default_str()->check(CLI::Range(0.0, 100.0));
  sub.add_option("--top-k", s.top_k, "keep the k most likely tokens (0 = off)")->capture_default_str()->check(CLI::NonNegativeNumber);
  sub.add_option("--top-p", s.top_p, "nucleus sampling mass (1 = off)")->capture_default_str()->check(CLI::Range(0.0, 1.0));
  sub.add_option("--min-p", s.min_p, "drop tokens below min_p × p(max) (0 = off)")->capture_default_str()->check(CLI::Range(0.0, 1.0));
  sub.add_option("--seed", s.seed, "random seed: the same seed gives the same text")->capture_default_str();
}

std::vector<int32_t> prompt_ids(const CheckpointInfo& m, const std::vector<ChatMessage>& messages, const std::string& raw,
                                bool chat) {
  check(m.tokenizer != nullptr, m.path, ": this checkpoint has no tokenizer, so text prompts cannot be encoded");
  if (!chat) return m.tokenizer->encode(raw, /*parse_special=*/true, /*add_bos=*/true);
  check(ChatTemplate::available(m.chat_template, *m.tokenizer), m.path,
        ": the model has no chat template; drop --chat (or the JSONL \"messages\" field) and give a raw prompt");
  ChatTemplate tpl = ChatTemplate::from_jinja(m.chat_template, *m.tokenizer);
  return tpl.encode(messages, *m.tokenizer);  // special-token text in a message stays text
}

namespace {

using nlohmann::json;

struct GenerateArgs {
  ModelOptions model;
  std::string prompt;
  std::string prompts_file;
  std::string system;
  bool chat = false;
  bool json_out = false;
  bool ignore_eos = false;
  int64_t min_tokens = 0;
  std::vector<std::string> stop;
  SamplingParams sampling;
  int64_t max_tokens = 256;
  int top_logprobs = 0;
  int64_t batch = 32;
  WatermarkCliOptions watermark;
  std::string antidistill;  // directory from `retort antidistill prepare`
  double antidistill_lambda = 0;
};

// One input: a raw prompt or a conversation, plus the id the user gave it (echoed back).
struct Input {
  json id;
  std::string raw;
  std::vector<ChatMessage> messages;
  bool chat = false;
};

std::vector<Input> read_prompts_jsonl(const std::string& path, bool chat_flag, const std::string& system) {
  std::vector<Input> out;
  for_each_jsonl_object(path, [&](const json& j, int64_t lineno) {
    Input x;
    x.id = j.contains("id") ? j["id"] : json(lineno);
    if (j.contains("messages")) {
      const json& ms = j["messages"];
      check(ms.is_array() && !ms.empty(), path, ":", lineno, ": \"messages\" must be a non-empty array");
      if (!system.empty()) x.messages.push_back({"system", system});
      for (const auto& msg : ms) {
        check(msg.is_object() && msg.contains("role") && msg["role"].is_string() && msg.contains("content") &&
                  msg["content"].is_string(),
              path, ":", lineno, ": each message needs string fields \"role\" and \"content\"");
        x.messages.push_back({msg["role"].get<std::string>(), msg["content"].get<std::string>()});
      }
      x.chat = true;
    } else if (j.contains("prompt")) {
      check(j["prompt"].is_string(), path, ":", lineno, ": \"prompt\" must be a string");
      x.raw = j["prompt"].get<std::string>();
      x.chat = chat_flag;
      if (chat_flag) {
        if (!system.empty()) x.messages.push_back({"system", system});
        x.messages.push_back({"user", x.raw});
      }
    } else {
      fail(path, ":", lineno, ": needs a \"prompt\" string or a \"messages\" array");
    }
    out.push_back(std::move(x));
  });
  check(!out.empty(), path, ": no prompts in the file");
  return out;
}

json logprobs_json(const Tokenizer& tok, const std::vector<TokenLogprob>& v) {
  json a = json::array();
  for (const auto& t : v) a.push_back({{"id", t.token}, {"token", tok.token_bytes(t.token)}, {"logprob", t.logprob}});
  return a;
}

json result_json(const Tokenizer& tok, const Input& in, const GenerationResult& r) {
  json toks = json::array();
  for (const auto& t : r.tokens) {
    json e = {{"id", t.token}, {"token", tok.token_bytes(t.token)}, {"logprob", t.logprob}, {"logprob_raw", t.logprob_raw}};
    if (!t.top.empty() || !t.top_raw.empty()) {
      e["top_logprobs"] = logprobs_json(tok, t.top);
      e["top_logprobs_raw"] = logprobs_json(tok, t.top_raw);
    }
    toks.push_back(std::move(e));
  }
  return {{"id", in.id},
          {"text", r.text},
          {"finish_reason", r.finish_reason},
          {"usage", {{"prompt_tokens", r.prompt_tokens}, {"completion_tokens", r.tokens.size()}}},
          {"tokens", toks}};
}

void run(GenerateArgs& a) {
  check(a.prompt.empty() != a.prompts_file.empty(), "give exactly one of --prompt TEXT or --prompts FILE.jsonl");
  check(a.max_tokens > 0, "--max-tokens must be at least 1");
  check(a.top_logprobs >= 0 && a.top_logprobs <= 100, "--top-logprobs must be between 0 and 100");
  check(a.batch >= 1, "--batch must be at least 1");
  check(a.antidistill_lambda == 0 || !a.antidistill.empty(),
        "--antidistill-lambda needs --antidistill DIR (from `retort antidistill prepare`)");
  std::vector<Input> inputs;
  if (!a.prompts_file.empty()) {
    inputs = read_prompts_jsonl(a.prompts_file, a.chat, a.system);
  } else {
    Input x;
    x.id = 0;
    x.raw = a.prompt;
    x.chat = a.chat;
    if (a.chat) {
      if (!a.system.empty()) x.messages.push_back({"system", a.system});
      x.messages.push_back({"user", a.prompt});
    }
    inputs.push_back(std::move(x));
  }

  CliModel cm = load_cli_model(a.model);
  const CheckpointInfo& m = *cm;
  a.watermark.synthid_seed = a.sampling.seed;  // SynthID's tournament draws follow --seed like plain sampling
  std::shared_ptr<LogitsProcessor> watermark = make_watermark_processor(a.watermark, m.hparams.n_vocab);
  std::shared_ptr<AntidistillFactory> antidistill;
  if (!a.antidistill.empty()) antidistill = load_antidistill(a.antidistill, a.antidistill_lambda, m);
  std::vector<GenerationRequest> reqs;
  for (const auto& in : inputs) {
    GenerationRequest r;
    r.prompt = prompt_ids(m, in.messages, in.raw, in.chat);
    r.sampling = a.sampling;
    r.max_tokens = a.max_tokens;
    r.stop = a.stop;
    r.ignore_eos = a.ignore_eos;
    r.min_tokens = a.min_tokens;
    r.top_logprobs = a.top_logprobs;
    // Antidistillation first (it keeps per-sequence proxy caches: one per request), then the watermark.
    r.processor = chain_processors({antidistill ? antidistill->make(r.sampling) : nullptr, watermark});
    reqs.push_back(std::move(r));
  }

  GenerateOptions opts;
  opts.max_batch = a.batch;
  const bool stream = !a.json_out && inputs.size() == 1;
  if (stream)
    opts.on_token = [](size_t, const GeneratedToken&, const std::string& piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    };
  auto t0 = std::chrono::steady_clock::now();
  std::vector<GenerationResult> results = generate(m, *cm.lm, reqs, opts);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  int64_t n_gen = 0;
  for (const auto& r : results) n_gen += static_cast<int64_t>(r.tokens.size());

  if (a.json_out) {
    for (size_t i = 0; i < results.size(); ++i)
      std::cout << result_json(*m.tokenizer, inputs[i], results[i]).dump(-1, ' ', false, json::error_handler_t::replace)
                << "\n";
  } else if (stream) {
    std::printf("\n");
  } else {
    for (size_t i = 0; i < results.size(); ++i)
      std::printf("=== %s [%s, %zu tokens]\n%s\n", inputs[i].id.dump().c_str(), results[i].finish_reason.c_str(),
                  results[i].tokens.size(), results[i].text.c_str());
  }
  std::fflush(stdout);  // the text (and its final newline) before the stats line on stderr
  std::fprintf(stderr, "[%lld tokens in %.2f s, %.1f tok/s, %zu prompt%s]\n", (long long)n_gen, secs,
               secs > 0 ? n_gen / secs : 0.0, results.size(), results.size() == 1 ? "" : "s");
}

}  // namespace

void register_generate(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* sub = app.add_subcommand("generate", "generate text from a prompt, or from many prompts as one batch");
  add_model_options(*sub, a->model);
  sub->add_option("-p,--prompt", a->prompt, "prompt text");
  sub->add_option("--prompts", a->prompts_file,
                  "JSONL file, one {\"prompt\": ...} or {\"messages\": [...]} per line (optional \"id\"), generated as one batch");
  sub->add_flag("--chat", a->chat, "format the prompt with the model's chat template as a user message");
  sub->add_option("--system", a->system, "system message (with --chat)");
  add_sampling_options(*sub, a->sampling, a->max_tokens);
  sub->add_option("--stop", a->stop, "stop string (repeatable)");
  sub->add_flag("--ignore-eos", a->ignore_eos, "keep generating past end-of-sequence tokens");
  sub->add_option("--min-tokens", a->min_tokens,
                  "ban end-of-sequence tokens until this many are generated (the answer runs on instead of ending)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--top-logprobs", a->top_logprobs, "report the K most likely alternatives for each token (with --json)")
      ->capture_default_str();
  sub->add_option("--batch", a->batch, "sequences decoded together")->capture_default_str();
  sub->add_flag("--json", a->json_out, "JSONL output: text, tokens, logprobs, usage");
  add_watermark_options(*sub, a->watermark);
  sub->add_option("--antidistill", a->antidistill,
                  "antidistillation sampling with the proxy directory from `retort antidistill prepare`");
  sub->add_option("--antidistill-lambda", a->antidistill_lambda,
                  "its strength λ: sample from softmax(z/τ + λ/(2ε)(z₊ − z₋)); the term moves logits by about "
                  "λ·delta_std nats (delta_std in DIR/antidistill.json); 0 = off")
      ->capture_default_str();
  sub->callback([a] { run(*a); });
}

}  // namespace retort::cli
