// `retort audit provenance`: is a suspect model derived from a candidate parent? (Nikolic et al., NeurIPS 2025)
//
// Every model — the suspect, each candidate, each control — answers the same prompts greedily; the
// sequential test in retort/audit/provenance.h decides. Models are local checkpoints (run here, on the CPU
// runtime) or OpenAI-compatible endpoints (url:http://host:port/v1#model). A model named in several roles
// is asked once per prompt.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "retort/audit/provenance.h"
#include "retort/io/jsonl.h"
#include "retort/model/runtime_model.h"
#include "retort/protect/keys.h"
#include "retort/serve/openai_client.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"
#include "retort/util/stats.h"

namespace retort::cli {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using OJson = nlohmann::ordered_json;

constexpr const char* kDefaultPrompts = "data/provenance/prompts.jsonl";

struct ProvenanceArgs {
  std::string suspect;
  std::vector<std::string> candidates, controls;
  std::string prompts;  // "" = the shipped set
  ProvenanceConfig cfg;
  int64_t max_tokens = 32;
  bool raw = false;
  std::string api_key_env;
  double timeout_s = 120;
  int threads = 0;
  std::string out, answers;
  bool json_out = false;
};

struct Prompt {
  json id;
  std::vector<ChatMessage> messages;  // the chat (a "prompt" string becomes one user turn)
  std::string text;                   // the raw form: the messages' contents joined by newlines
};

// data/provenance/prompts.jsonl relative to the working directory, else to the binary (build/retort ->
// ../data/...), as `retort distill` finds its default prompts.
std::string default_prompts_path() {
  if (fs::exists(kDefaultPrompts)) return kDefaultPrompts;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec)
    for (const char* up : {"..", "../.."}) {
      const fs::path p = exe.parent_path() / up / kDefaultPrompts;
      if (fs::exists(p)) return fs::weakly_canonical(p).string();
    }
  fail("audit provenance: the shipped prompt set ", kDefaultPrompts, " was not found (next to the working directory "
       "or the retort binary); give --prompts FILE");
}

std::vector<Prompt> read_prompts(const std::string& path) {
  std::vector<Prompt> out;
  for_each_jsonl_object(path, [&](const json& j, int64_t lineno) {
    const std::string where = cat(path, ":", lineno);
    Prompt p;
    p.id = j.contains("id") ? j["id"] : json(lineno);
    if (j.contains("messages")) {
      const json& ms = j["messages"];
      check(ms.is_array() && !ms.empty(), where, ": \"messages\" must be a non-empty array");
      for (const auto& m : ms) {
        check(m.is_object() && m.contains("role") && m["role"].is_string() && m.contains("content") &&
                  m["content"].is_string(),
              where, ": each message needs string fields \"role\" and \"content\"");
        p.messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
      }
    } else {
      check(j.contains("prompt") && j["prompt"].is_string(), where, ": needs a \"messages\" array or a \"prompt\" string");
      p.messages.push_back({"user", j["prompt"].get<std::string>()});
    }
    for (size_t i = 0; i < p.messages.size(); ++i) p.text += (i ? "\n" : "") + p.messages[i].content;
    out.push_back(std::move(p));
  });
  check(!out.empty(), path, ": no prompts in the file");
  return out;
}

std::string sha256_of_file(const std::string& path) {
  MappedFile m(path);
  return sha256_hex(m.data(), m.size());
}

// A local model's identity: SHA-256 of its GGUF file, or for a Hugging Face directory the SHA-256 of
// "name sha256\n" lines over its *.safetensors and *.json files in name order (as capture manifests do).
std::string model_sha256(const std::string& path) {
  if (!fs::is_directory(path)) return sha256_of_file(path);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(path)) {
    const std::string ext = e.path().extension().string();
    if (e.is_regular_file() && (ext == ".safetensors" || ext == ".json")) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  std::string lines;
  for (const auto& f : files) lines += f.filename().string() + " " + sha256_of_file(f.string()) + "\n";
  return sha256_hex(reinterpret_cast<const uint8_t*>(lines.data()), lines.size());
}

// "url:http://host:port/v1#model" (or a bare http:// / https:// URL); the model after '#' is optional.
struct ModelRef {
  std::string spec;
  bool remote = false;
  std::string url, model;
};

ModelRef parse_model_ref(const std::string& spec) {
  ModelRef r;
  r.spec = spec;
  std::string rest;
  if (spec.rfind("url:", 0) == 0) {
    rest = spec.substr(4);
  } else if (spec.rfind("http://", 0) == 0 || spec.rfind("https://", 0) == 0) {
    rest = spec;
  } else {
    return r;
  }
  r.remote = true;
  const size_t hash = rest.find('#');
  r.url = rest.substr(0, hash);
  if (hash != std::string::npos) r.model = rest.substr(hash + 1);
  check(!r.url.empty(), "audit provenance: '", spec, "' has no URL after url: (write url:http://host:port/v1#model)");
  return r;
}

// One distinct model, whatever roles it plays.
struct Model {
  ModelRef ref;
  std::string roles;  // "suspect, control 2"
  std::unique_ptr<RuntimeLoaded> local;
  std::unique_ptr<ChatTemplate> chat;  // local: its chat template (null: raw text)
  std::unique_ptr<OpenAIClient> client;
  std::string model_name, reported_model, fingerprint;  // remote
  std::string sha256;                                   // local
  int64_t queries = 0;
};

std::string label(const std::string& role, const std::string& spec) { return cat(role, " (", spec, ")"); }

void open_local(Model& m, const std::string& role, bool raw) {
  try {
    m.local = std::make_unique<RuntimeLoaded>(load_runtime_model(m.ref.spec));
  } catch (const Error& e) {
    fail("audit provenance: ", label(role, m.ref.spec), " cannot be loaded: ", e.what());
  }
  check(m.local->tokenizer != nullptr, "audit provenance: ", label(role, m.ref.spec), ": ", m.local->path,
        " has no tokenizer, so it cannot answer text prompts");
  if (!raw && ChatTemplate::available(m.local->chat_template, *m.local->tokenizer))
    m.chat = std::make_unique<ChatTemplate>(ChatTemplate::from_jinja(m.local->chat_template, *m.local->tokenizer));
  m.sha256 = model_sha256(m.local->path);
}

void open_remote(Model& m, const std::string& role, const std::string& api_key, double timeout_s) {
  OpenAIClientOptions co;
  co.base_url = m.ref.url;
  co.api_key = api_key;
  co.timeout_s = timeout_s;
  std::vector<std::string> ids;
  try {
    // One quick try first, so that an unreachable endpoint fails now rather than after every retry.
    OpenAIClientOptions probe = co;
    probe.max_retries = 1;
    probe.timeout_s = std::min(timeout_s, 15.0);
    OpenAIClient client(probe);
    ids = client.models();
    m.client = std::make_unique<OpenAIClient>(co);
  } catch (const Error& e) {
    fail("audit provenance: ", label(role, m.ref.spec), " did not answer as an OpenAI-compatible endpoint: ",
         e.what());
  }
  m.model_name = m.ref.model;
  if (m.model_name.empty()) {
    check(!ids.empty(), "audit provenance: ", label(role, m.ref.spec), ": ", m.client->base_url(),
          " lists no models; name one after '#' (url:", m.ref.url, "#MODEL)");
    m.model_name = ids[0];
  }
}

// The distinct-model key: the resolved path of a local model; base URL + model name of an endpoint.
std::string model_key(const ModelRef& r) {
  if (r.remote) return "";
  std::error_code ec;
  const std::string path = resolve_model_path(r.spec);
  const fs::path canon = fs::weakly_canonical(path, ec);
  return "local:" + (ec ? path : canon.string());
}

std::vector<std::string> answer_local(Model& m, const std::vector<const Prompt*>& batch, int64_t max_tokens) {
  const Tokenizer& tok = *m.local->tokenizer;
  std::vector<GenerationRequest> reqs;
  for (const Prompt* p : batch) {
    GenerationRequest q;
    q.prompt = m.chat ? m.chat->encode(p->messages, tok) : tok.encode(p->text, /*parse_special=*/false, /*add_bos=*/true);
    q.sampling.temperature = 0;  // greedy
    q.max_tokens = max_tokens;
    reqs.push_back(std::move(q));
  }
  std::vector<std::string> out;
  for (auto& g : generate(*m.local, reqs)) out.push_back(std::move(g.text));
  return out;
}

std::vector<std::string> answer_remote(Model& m, const std::vector<const Prompt*>& batch, int64_t max_tokens,
                                       bool raw) {
  std::vector<std::string> out;
  for (const Prompt* p : batch) {
    ApiRequest q;
    q.kind = raw ? Endpoint::completion : Endpoint::chat;
    q.model = m.model_name;
    if (raw)
      q.prompt = p->text;
    else
      q.messages = p->messages;
    q.max_tokens = max_tokens;
    q.sampling.temperature = 0;
    q.seed = 0;
    const ParsedCompletion c = raw ? m.client->complete(q) : m.client->chat(q);
    check(!c.choices.empty(), "audit provenance: ", m.client->base_url(), " (model ", m.model_name,
          ") answered prompt ", p->id.dump(), " with no choices");
    if (m.reported_model.empty()) m.reported_model = c.model;
    if (m.fingerprint.empty()) m.fingerprint = c.system_fingerprint;
    out.push_back(c.choices[0].text);
  }
  return out;
}

OJson identity_json(const Model& m) {
  OJson j;
  if (m.local) {
    j["kind"] = "local";
    j["spec"] = m.ref.spec;
    j["path"] = m.local->path;
    j["sha256"] = m.sha256;
    j["format"] = m.local->format;
    j["arch"] = m.local->hparams.arch;
    j["prompt_format"] = m.chat ? "chat template (" + m.chat->name() + ")" : std::string("raw text");
  } else {
    j["kind"] = "url";
    j["spec"] = m.ref.spec;
    j["url"] = m.client->base_url();
    j["model"] = m.model_name;
    j["model_reported"] = m.reported_model;
    j["system_fingerprint"] = m.fingerprint;
    const OpenAIClientStats& st = m.client->stats();
    j["requests"] = {{"sent", st.requests}, {"retries", st.retries}, {"throttled", st.throttled},
                     {"server_errors", st.server_errors}, {"transport_errors", st.transport_errors},
                     {"prompt_tokens", st.prompt_tokens}, {"completion_tokens", st.completion_tokens}};
  }
  return j;
}

// A short name for tables: the spec, or a URL's model name.
std::string short_name(const Model& m) { return m.ref.remote ? m.model_name + " @ " + m.ref.url : m.ref.spec; }

// `s` cut to `width` characters (its end kept: paths differ at the end).
std::string fit(const std::string& s, size_t width) {
  if (s.size() <= width) return s;
  return "..." + s.substr(s.size() - (width - 3));
}

// "3.1e-42" for any natural-log p, also below the double range.
std::string format_log_p(double log_p) { return format_p(log_p / std::log(10.0)); }

void run_provenance(ProvenanceArgs& a) {
  check(!a.suspect.empty(), "audit provenance: --suspect MODEL is required");
  check(!a.candidates.empty(), "audit provenance: --candidate T[,T2...] is required (the possible parents)");
  check(!a.controls.empty(), "audit provenance: no control models: give --controls C1,C2,... — models known to be "
        "unrelated to the suspect, of similar size and quality (the test asks whether the suspect is closer to a "
        "candidate than to every control)");
  check(a.max_tokens >= 1, "audit provenance: --max-tokens must be >= 1");
  check_provenance_config(a.cfg);
  apply_threads(a.threads);
  std::string api_key;
  if (!a.api_key_env.empty()) {
    const char* k = std::getenv(a.api_key_env.c_str());
    check(k && *k, "audit provenance: --api-key-env ", a.api_key_env, " names an unset or empty variable");
    api_key = k;
  }

  const std::string prompts_path = a.prompts.empty() ? default_prompts_path() : a.prompts;
  const std::vector<Prompt> prompts = read_prompts(prompts_path);
  ProvenanceTest test(a.cfg, int64_t(a.candidates.size()), int64_t(a.controls.size()), int64_t(prompts.size()));

  auto note = [&](const std::string& s) {
    if (!a.json_out) std::fprintf(stderr, "%s\n", s.c_str());
  };
  const auto t0 = std::chrono::steady_clock::now();

  // Roles -> distinct models.
  std::vector<std::unique_ptr<Model>> models;
  std::map<std::string, size_t> by_key;
  auto open = [&](const std::string& spec, const std::string& role) -> size_t {
    check(!spec.empty(), "audit provenance: ", role, " is empty");
    ModelRef ref = parse_model_ref(spec);
    std::string key;
    if (!ref.remote) {
      try {
        key = model_key(ref);
      } catch (const Error& e) {
        fail("audit provenance: ", label(role, spec), " cannot be loaded: ", e.what());
      }
      if (auto it = by_key.find(key); it != by_key.end()) {
        models[it->second]->roles += ", " + role;
        return it->second;
      }
    }
    auto m = std::make_unique<Model>();
    m->ref = ref;
    m->roles = role;
    if (ref.remote) {
      note(cat("connecting to ", label(role, spec)));
      open_remote(*m, role, api_key, a.timeout_s);
      key = "url:" + m->client->base_url() + "#" + m->model_name;
      if (auto it = by_key.find(key); it != by_key.end()) {
        models[it->second]->roles += ", " + role;
        return it->second;
      }
    } else {
      note(cat("loading ", label(role, spec)));
      open_local(*m, role, a.raw);
    }
    by_key[key] = models.size();
    models.push_back(std::move(m));
    return models.size() - 1;
  };
  // Endpoints first (an unreachable one fails in seconds, before any model is loaded and hashed), then local models.
  std::vector<std::pair<std::string, std::string>> roles = {{a.suspect, "suspect"}};  // (spec, role)
  for (size_t j = 0; j < a.candidates.size(); ++j) roles.push_back({a.candidates[j], cat("candidate ", j + 1)});
  for (size_t c = 0; c < a.controls.size(); ++c) roles.push_back({a.controls[c], cat("control ", c + 1)});
  std::vector<size_t> role_model(roles.size());
  for (bool remote : {true, false})
    for (size_t r = 0; r < roles.size(); ++r)
      if (parse_model_ref(roles[r].first).remote == remote) role_model[r] = open(roles[r].first, roles[r].second);
  const size_t suspect = role_model[0];
  const std::vector<size_t> cand_model(role_model.begin() + 1, role_model.begin() + 1 + ptrdiff_t(a.candidates.size()));
  const std::vector<size_t> ctrl_model(role_model.begin() + 1 + ptrdiff_t(a.candidates.size()), role_model.end());

  OJson answer_rows = OJson::array();
  while (int64_t n = test.next_batch()) {
    const int64_t first = test.prompts_used();
    std::vector<const Prompt*> batch;
    for (int64_t i = first; i < first + n; ++i) batch.push_back(&prompts[size_t(i)]);
    // Who is asked: the suspect, every control, and the candidates not yet decided.
    std::vector<bool> needed(models.size(), false);
    needed[suspect] = true;
    for (size_t c : ctrl_model) needed[c] = true;
    for (size_t j = 0; j < cand_model.size(); ++j)
      if (test.wants_candidate(j)) needed[cand_model[j]] = true;
    std::vector<std::vector<std::string>> ans(models.size());
    for (size_t mi = 0; mi < models.size(); ++mi) {
      if (!needed[mi]) continue;
      Model& m = *models[mi];
      if (!a.json_out)
        std::fprintf(stderr, "  look %lld/%lld: prompts %lld-%lld, %s\n", (long long)test.looks() + 1,
                     (long long)test.planned_looks(), (long long)first + 1, (long long)(first + n),
                     short_name(m).c_str());
      ans[mi] = m.local ? answer_local(m, batch, a.max_tokens) : answer_remote(m, batch, a.max_tokens, a.raw);
      m.queries += n;
    }
    for (int64_t i = 0; i < n; ++i) {
      std::vector<std::string> ta(cand_model.size()), ca(ctrl_model.size());
      for (size_t j = 0; j < cand_model.size(); ++j)
        if (test.wants_candidate(j)) ta[j] = ans[cand_model[j]][size_t(i)];
      for (size_t c = 0; c < ctrl_model.size(); ++c) ca[c] = ans[ctrl_model[c]][size_t(i)];
      const std::string& sa = ans[suspect][size_t(i)];
      if (!a.answers.empty()) {
        OJson row;
        row["id"] = batch[size_t(i)]->id;
        row["suspect"] = sa;
        OJson tj = OJson::array(), sj = OJson::array(), cj = OJson::array(), scj = OJson::array();
        for (size_t j = 0; j < ta.size(); ++j) {
          const bool asked = test.wants_candidate(j);
          tj.push_back(asked ? OJson(ta[j]) : OJson(nullptr));
          sj.push_back(asked ? OJson(word_prefix_similarity(sa, ta[j], a.cfg.words)) : OJson(nullptr));
        }
        for (const auto& c : ca) cj.push_back(c), scj.push_back(word_prefix_similarity(sa, c, a.cfg.words));
        row["candidates"] = tj;
        row["controls"] = cj;
        row["similarity_candidates"] = sj;
        row["similarity_controls"] = scj;
        answer_rows.push_back(std::move(row));
      }
      test.add_answers(sa, ta, ca);
    }
    test.look();
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // The report.
  auto p_json = [](double log_p) { return OJson(std::exp(log_p)); };  // 0 below ~1e-308; log10 fields are exact
  auto l10 = [](double log_p) { return log_p / std::log(10.0); };
  auto role_json = [&](size_t mi, const std::string& role) {
    const Model& m = *models[mi];
    OJson j = identity_json(m);
    const bool first_role = m.roles.substr(0, m.roles.find(',')) == role;
    j["queries"] = first_role ? m.queries : 0;
    if (!first_role) j["same_model_as"] = m.roles.substr(0, m.roles.find(','));
    return j;
  };

  std::vector<std::string> caveats;
  OJson cands = OJson::array();
  std::vector<std::string> derived_names;
  for (size_t j = 0; j < cand_model.size(); ++j) {
    const ProvenanceCandidate& t = test.candidates()[j];
    const std::string role = cat("candidate ", j + 1);
    OJson cj;
    cj["name"] = a.candidates[j];  // as the user named it
    cj["candidate"] = role_json(cand_model[j], role);
    cj["prompts"] = t.prompts;
    cj["mean_similarity"] = t.mean_sim();
    OJson per = OJson::array();
    for (size_t c = 0; c < ctrl_model.size(); ++c) {
      const ProvenanceControlStats& k = t.controls[c];
      per.push_back({{"control", cat("control ", c + 1)}, {"spec", a.controls[c]},
                     {"mean_similarity", t.mean_sim_control(c)}, {"candidate_closer", k.positive},
                     {"control_closer", k.negative}, {"ties", k.ties}, {"p_value", p_json(k.log_p)},
                     {"log10_p", l10(k.log_p)}});
      if (ctrl_model[c] == cand_model[j])
        caveats.push_back(cat(role, " is the same model as control ", c + 1, ": it can never beat itself, so it cannot be "
                              "shown to be the parent"));
    }
    cj["controls"] = per;
    cj["p_value"] = p_json(t.log_p);
    cj["log10_p"] = l10(t.log_p);
    cj["p_best_look"] = p_json(t.log_p_min);
    cj["p_sequential"] = p_json(t.log_p_seq);
    cj["p_holm"] = p_json(t.log_p_holm);
    cj["log10_p_holm"] = l10(t.log_p_holm);
    cj["derived"] = t.derived;
    cj["decision"] = t.derived ? "derived from " + a.candidates[j] : std::string("not shown");
    cj["futile"] = t.futile;
    cj["decided_at_look"] = t.decided_look > 0 ? OJson(t.decided_look) : OJson(nullptr);
    cands.push_back(std::move(cj));
    if (t.derived) derived_names.push_back(a.candidates[j]);
    const Model& sm = *models[suspect];
    const Model& tm = *models[cand_model[j]];
    if (cand_model[j] == suspect) {
      caveats.push_back(cat(role, " is the suspect itself (same file or endpoint): identical answers"));
    } else if (sm.local && tm.local && sm.sha256 == tm.sha256) {
      caveats.push_back(cat("the suspect's checkpoint is byte-identical to ", role, "'s (SHA-256 ", sm.sha256, ")"));
    }
  }
  for (size_t c = 0; c < ctrl_model.size(); ++c)
    if (ctrl_model[c] == suspect)
      caveats.push_back(cat("control ", c + 1, " is the suspect itself: no candidate can be closer to the suspect than "
                            "the suspect is, so nothing can be shown"));

  std::string verdict;
  const std::string setting =
      cat("greedy answers to ", test.prompts_used(), " prompts, the first ", a.cfg.words, " words compared position by "
          "position; family-wise error <= ", a.cfg.alpha, " over ", cand_model.size(), " candidate(s) and ",
          test.planned_looks(), " planned look(s)");
  if (!derived_names.empty()) {
    std::string names;
    for (size_t i = 0; i < derived_names.size(); ++i) names += (i ? ", " : "") + derived_names[i];
    verdict = cat("derived: the suspect answers like ", names, " far more often than like any control (", setting,
                  "). The suspect is very likely ", derived_names.size() > 1 ? "derived from these models" : "derived from it",
                  " — the same weights, a quantization, a fine-tune or a distillation — or shares a parent with ",
                  derived_names.size() > 1 ? "them" : "it", ".");
  } else {
    verdict = cat("not shown: no candidate is closer to the suspect than every control at this error rate (", setting,
                  "). This is not evidence that the suspect is unrelated: heavy fine-tuning, another chat format or "
                  "system prompt, or too few prompts can hide a parent.");
  }
  caveats.push_back("\"derived\" means closer to the candidate than to every control; a sibling of the candidate (same "
                    "parent) also passes, and a control that is itself related to the suspect hides the candidate. A "
                    "candidate whose answers are far more typical than every control's (a much stronger model, where "
                    "every model's first words converge) can look closer to any suspect: choose controls from other "
                    "model families of similar size and quality.");
  caveats.push_back("an endpoint's greedy answers depend on its chat template, system prompt and serving stack; "
                    "non-deterministic serving adds noise (it weakens the test, it does not make it invalid).");

  OJson out;
  out["audit"] = "provenance";
  out["method"] = "exact one-sided sign test on paired word-prefix similarity (suspect vs candidate minus suspect vs "
                  "control), intersection-union over controls, Bonferroni over planned looks, Holm-Bonferroni over "
                  "candidates (Nikolic et al., NeurIPS 2025)";
  out["params"] = {{"words", a.cfg.words},      {"alpha", a.cfg.alpha},     {"batch", a.cfg.batch},
                   {"budget", a.cfg.budget},    {"max_tokens", a.max_tokens}, {"temperature", 0},
                   {"raw", a.raw}};
  out["prompts"] = {{"file", prompts_path}, {"sha256", sha256_of_file(prompts_path)}, {"available", prompts.size()},
                    {"used", test.prompts_used()}};
  out["suspect"] = role_json(suspect, "suspect");
  out["controls"] = OJson::array();
  for (size_t c = 0; c < ctrl_model.size(); ++c) {
    OJson cj = role_json(ctrl_model[c], cat("control ", c + 1));
    cj["mean_similarity"] = test.control_mean_sim(c);
    out["controls"].push_back(std::move(cj));
  }
  out["candidates"] = cands;
  out["looks_planned"] = test.planned_looks();
  out["looks_used"] = test.looks();
  out["stopped_early"] = test.stopped_early();
  out["stop_reason"] = test.stopped_early() ? "every candidate decided"
                       : test.max_prompts() < a.cfg.budget ? "every prompt asked"
                                                           : "budget spent";
  int64_t total = 0;
  for (const auto& m : models) total += m->queries;
  out["queries"] = {{"suspect", models[suspect]->queries}, {"all_models", total}, {"budget", a.cfg.budget}};
  out["verdict"] = verdict;
  out["caveats"] = caveats;
  out["seconds"] = secs;

  if (!a.answers.empty()) {
    std::string s;
    for (const auto& r : answer_rows) s += r.dump() + "\n";
    write_file_atomic(a.answers, s);
  }
  if (!a.out.empty()) write_file_atomic(a.out, out.dump(2) + "\n");
  if (a.json_out) {
    std::cout << out.dump(2) << "\n";
    return;
  }

  const Model& sm = *models[suspect];
  std::printf("provenance: suspect %s", short_name(sm).c_str());
  if (sm.local) std::printf(" (sha256 %.16s…)", sm.sha256.c_str());
  std::printf("\n%lld prompts asked of the suspect (budget %lld), look %lld of %lld%s, %.1f s\n",
              (long long)test.prompts_used(), (long long)a.cfg.budget, (long long)test.looks(),
              (long long)test.planned_looks(), test.stopped_early() ? ", stopped early: every candidate decided" : "",
              secs);
  std::printf("\n%-36s %8s %10s %10s %10s  %s\n", "candidate T (vs control C)", "sim(S,·)", "p", "p (looks)",
              "p (Holm)", "decision");
  for (size_t j = 0; j < cand_model.size(); ++j) {
    const ProvenanceCandidate& t = test.candidates()[j];
    std::string decision = t.derived ? "derived" : "not shown";
    if (t.decided_look > 0) decision += cat(t.futile ? " (futile at look " : " (look ", t.decided_look, ")");
    std::printf("%-36s %8.3f %10s %10s %10s  %s\n", cat(j + 1, ". ", fit(a.candidates[j], 32)).c_str(), t.mean_sim(),
                format_log_p(t.log_p).c_str(), format_log_p(t.log_p_seq).c_str(), format_log_p(t.log_p_holm).c_str(),
                decision.c_str());
    for (size_t c = 0; c < ctrl_model.size(); ++c) {
      const ProvenanceControlStats& k = t.controls[c];
      std::printf("%-36s %8.3f %10s  T closer %lld, C closer %lld, ties %lld\n",
                  cat("   vs ", c + 1, ". ", fit(a.controls[c], 28)).c_str(), t.mean_sim_control(c),
                  format_log_p(k.log_p).c_str(), (long long)k.positive, (long long)k.negative, (long long)k.ties);
    }
  }
  std::printf("\nqueries per model:");
  for (size_t mi = 0; mi < models.size(); ++mi) {
    std::string who = models[mi]->roles;
    for (size_t at; (at = who.find(", ")) != std::string::npos;) who.replace(at, 2, " = ");
    std::printf("%s %s %lld", mi ? ";" : "", who.c_str(), (long long)models[mi]->queries);
  }
  std::printf("\n\n%s\n", verdict.c_str());
  for (const auto& c : caveats) std::printf("  - %s\n", c.c_str());
  if (!a.out.empty()) std::printf("wrote %s\n", a.out.c_str());
  if (!a.answers.empty()) std::printf("wrote %s\n", a.answers.c_str());
}

}  // namespace

void register_audit_provenance(CLI::App* audit) {
  auto a = std::make_shared<ProvenanceArgs>();
  CLI::App* pv = audit->add_subcommand(
      "provenance",
      "is a suspect derived from a candidate parent? Greedy answers of the suspect, each candidate and unrelated "
      "control models to the same prompts; exact sign tests, Holm-corrected over candidates, sequential with early "
      "stopping (Nikolic et al. 2025)");
  pv->add_option("--suspect", a->suspect,
                 "the suspect: .gguf path, HF dir, short name in the model cache, or url:http://host:port/v1#model")
      ->required();
  pv->add_option("--candidate,--candidates", a->candidates, "possible parent(s), comma-separated (same forms)")
      ->delimiter(',')
      ->required();
  pv->add_option("--controls,--control", a->controls,
                 "models known to be unrelated to the suspect, comma-separated (same forms; 2+ recommended)")
      ->delimiter(',');
  pv->add_option("--prompts", a->prompts, cat("prompts (JSONL \"messages\" or \"prompt\"; default ", kDefaultPrompts, ")"));
  pv->add_option("--budget", a->cfg.budget, "most prompts asked of the suspect (each model answers each prompt once)")
      ->capture_default_str();
  pv->add_option("--batch", a->cfg.batch, "prompts between looks (each look may stop the test)")->capture_default_str();
  pv->add_option("--alpha", a->cfg.alpha, "family-wise error rate over candidates and looks")->capture_default_str();
  pv->add_option("--words", a->cfg.words, "k: leading words of two answers compared position by position")
      ->capture_default_str();
  pv->add_option("-n,--max-tokens", a->max_tokens, "tokens per answer (greedy)")->capture_default_str();
  pv->add_flag("--raw", a->raw, "no chat template: prompts as plain text (the completions endpoint for a URL)");
  pv->add_option("--api-key-env", a->api_key_env, "environment variable holding the API key for url: models");
  pv->add_option("--timeout", a->timeout_s, "seconds per HTTP attempt for url: models")->capture_default_str();
  pv->add_option("-t,--threads", a->threads, "CPU threads for local models (0 = all cores)");
  pv->add_option("-o,--out", a->out, "also write the JSON result to this file (atomically)");
  pv->add_option("--answers", a->answers, "write every model's answers and similarities per prompt (JSONL)");
  pv->add_flag("--json", a->json_out, "JSON output");
  pv->callback([a] { run_provenance(*a); });
}

}  // namespace retort::cli
