// retort/distill/capture.cpp — see capture.h.
#include "retort/distill/capture.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>

#include "retort/decode/generate.h"
#include "retort/decode/logits_processor.h"
#include "retort/distill/prompt_file.h"
#include "retort/distill/signal_store.h"
#include "retort/io/jsonl.h"
#include "retort/model/loader.h"
#include "retort/protect/keys.h"
#include "retort/text/chat_template.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"
#include "retort/util/progress.h"

namespace retort {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Score mode: tokens per teacher-forced forward (rows x padded length), which bounds the
// activations; logits are then made for at most kScoreLogitRows positions at a time
// ([rows, V] float32, ~100 MB for a 49k vocabulary).
constexpr int64_t kScoreTokenBudget = 8192;
constexpr int64_t kScoreLogitRows = 512;

std::string sha256_file(const std::string& path) {
  MappedFile m(path);
  return sha256_hex(m.data(), m.size());
}

// The teacher's identity: sha256 of its GGUF file, or for a Hugging Face directory the sha256
// of "name sha256\n" lines over its *.safetensors and *.json files in name order. Cached per
// (path, size, mtime) because hashing a model takes a while and tests capture repeatedly.
std::string teacher_sha256(const std::string& path) {
  static std::mutex mu;
  static std::map<std::string, std::string> cache;
  auto stamp = [](const fs::path& p) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) return std::string("?");
    return cat(st.st_size, ":", st.st_mtim.tv_sec, ".", st.st_mtim.tv_nsec);
  };
  std::vector<fs::path> files;
  if (fs::is_directory(path)) {
    for (const auto& e : fs::directory_iterator(path)) {
      auto ext = e.path().extension().string();
      if (e.is_regular_file() && (ext == ".safetensors" || ext == ".json")) files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
  } else {
    files.push_back(path);
  }
  std::string key = path;
  for (const auto& f : files) key.append("|").append(f.filename().string()).append("@").append(stamp(f));
  {
    std::lock_guard<std::mutex> lock(mu);
    if (auto it = cache.find(key); it != cache.end()) return it->second;
  }
  std::string digest;
  if (fs::is_directory(path)) {
    std::string lines;
    for (const auto& f : files) lines += f.filename().string() + " " + sha256_file(f.string()) + "\n";
    digest = sha256_hex(reinterpret_cast<const uint8_t*>(lines.data()), lines.size());
  } else {
    digest = sha256_file(path);
  }
  std::lock_guard<std::mutex> lock(mu);
  cache[key] = digest;
  return digest;
}

// max(0, 1 - Σ exp(top-k logprobs)), summed in double.
float tail_mass_of(const float* lp, int64_t k) {
  double s = 0;
  for (int64_t i = 0; i < k; ++i) s += std::exp(double(lp[i]));
  return static_cast<float>(std::clamp(1.0 - s, 0.0, 1.0));
}

void check_options(const LoadedModel& m, const CaptureOptions& o) {
  check(m.tokenizer != nullptr, m.path, ": the teacher has no tokenizer, so prompts cannot be encoded");
  check(o.mode == "generate" || o.mode == "score", "--mode must be generate or score, got \"", o.mode, "\"");
  check(!o.prompts_path.empty(), "--prompts: give a JSONL file of prompts");
  check(!o.out_dir.empty(), "--out: give the directory of the signal store");
  check(o.k >= 1 && o.k <= 256 && o.k <= m.hparams.n_vocab, "--k must be between 1 and 256, got ", o.k);
  check(o.samples_per_prompt >= 1, "--samples must be at least 1, got ", o.samples_per_prompt);
  check(o.mode == "generate" || o.samples_per_prompt == 1,
        "--samples: score mode scores each line's completion once; drop --samples");
  check(o.max_tokens >= 1, "--max-tokens must be at least 1, got ", o.max_tokens);
  check(o.batch >= 1, "--batch must be at least 1, got ", o.batch);
  check(o.shard_samples >= 1, "--shard-samples must be at least 1, got ", o.shard_samples);
  check(o.limit >= 0, "--limit must be >= 0 (0 = all prompts), got ", o.limit);
  check(o.mode == "generate" || !o.make_processor, "--watermark applies to generate mode only");
  if (o.mode == "generate") check_sampling_params(o.sampling);
}

StoreManifest make_manifest(const LoadedModel& m, const std::string& teacher_spec, const CaptureOptions& o,
                            int64_t n_prompts, const std::string& prompts_sha) {
  StoreManifest man;
  man.mode = o.mode;
  man.teacher = {{"spec", teacher_spec},
                 {"path", m.path},
                 {"format", m.format},
                 {"sha256", teacher_sha256(m.path)},
                 {"hparams", m.hparams.to_json()}};
  man.tokenizer_hash = m.tokenizer->hash();
  man.n_vocab = m.hparams.n_vocab;
  man.k = o.k;
  if (o.mode == "generate")
    man.generation = {{"temperature", o.sampling.temperature},
                      {"top_k", o.sampling.top_k},
                      {"top_p", o.sampling.top_p},
                      {"min_p", o.sampling.min_p},
                      {"max_tokens", o.max_tokens},
                      {"samples_per_prompt", o.samples_per_prompt},
                      {"seed", o.sampling.seed},
                      {"chat", o.chat},
                      {"system", o.system}};
  else
    man.generation = {{"samples_per_prompt", 1}, {"chat", o.chat}, {"system", o.system}};
  man.watermark = o.make_processor ? (o.watermark.is_null() ? json::object() : o.watermark) : json();
  man.prompts = {{"path", fs::absolute(o.prompts_path).string()}, {"sha256", prompts_sha}, {"count", n_prompts}};
  return man;
}

// ---- generate mode ---------------------------------------------------------------------------

void capture_generate(LoadedModel& m, const CaptureOptions& o, const std::vector<std::vector<int32_t>>& prompts,
                      const std::vector<int64_t>& todo, SignalStoreWriter& w, ProgressBar& bar, CaptureSummary& sum) {
  const int64_t k = o.k, S = o.samples_per_prompt;
  const std::set<int32_t> eos(m.eos_ids.begin(), m.eos_ids.end());
  // Generate this many samples per generate() call (whole shards, at least one full batch).
  const int64_t per_call = ((std::max(o.batch, o.shard_samples) + o.shard_samples - 1) / o.shard_samples) * o.shard_samples;
  int64_t done = 0;
  for (size_t start = 0; start < todo.size(); start += per_call) {
    const size_t end = std::min(todo.size(), start + static_cast<size_t>(per_call));
    std::vector<GenerationRequest> reqs;
    for (size_t i = start; i < end; ++i) {
      const int64_t id = todo[i], p = id / S, s = id % S;
      GenerationRequest r;
      r.prompt = prompts[p];
      r.sampling = o.sampling;
      r.sampling.seed = capture_sample_seed(o.sampling.seed, p, s);
      r.max_tokens = o.max_tokens;
      r.top_logprobs = static_cast<int>(k);
      if (o.make_processor) r.processor = o.make_processor();
      reqs.push_back(std::move(r));
    }
    // Progress inside a call: a request counts as done at EOS or max_tokens (exact at the end).
    std::vector<int64_t> n_gen(reqs.size(), 0);
    int64_t finished_in_call = 0;
    GenerateOptions go;
    go.max_batch = o.batch;
    go.on_token = [&](size_t i, const GeneratedToken& t, const std::string&) {
      ++sum.tokens_generated;
      if (++n_gen[i] == o.max_tokens || eos.count(t.token)) ++finished_in_call;
      bar.update(done + std::min<int64_t>(finished_in_call, int64_t(reqs.size())), sum.tokens_generated);
    };
    std::vector<GenerationResult> results = generate(m, reqs, go);
    for (size_t i = 0; i < results.size(); ++i) {
      const GenerationResult& r = results[i];
      const int64_t c = static_cast<int64_t>(r.tokens.size());
      std::vector<int32_t> tokens = reqs[i].prompt;
      std::vector<float> token_lp(c), tail(c), top_lp(c * k);
      std::vector<int32_t> top_ids(c * k);
      for (int64_t j = 0; j < c; ++j) {
        const GeneratedToken& t = r.tokens[j];
        tokens.push_back(t.token);
        token_lp[j] = t.logprob_raw;
        TORCH_CHECK(int64_t(t.top_raw.size()) == k, "generate returned ", t.top_raw.size(), " top logprobs, asked ", k);
        for (int64_t q = 0; q < k; ++q) {
          top_ids[j * k + q] = t.top_raw[q].token;
          top_lp[j * k + q] = t.top_raw[q].logprob;
        }
        tail[j] = tail_mass_of(&top_lp[j * k], k);
      }
      w.add(todo[start + i], tokens, static_cast<int64_t>(reqs[i].prompt.size()), token_lp, top_ids, top_lp, tail);
      ++sum.samples_written;
      if (w.pending_samples() >= o.shard_samples) w.flush();
    }
    done += static_cast<int64_t>(results.size());
    bar.update(done, sum.tokens_generated);
  }
}

// ---- score mode ------------------------------------------------------------------------------

struct ScoreItem {
  int64_t id;
  std::vector<int32_t> tokens;
  int64_t prompt_len;
};

// Teacher-forced top-k for a group of sequences, written to the store in order.
void score_group(LoadedModel& m, const CaptureOptions& o, const std::vector<ScoreItem>& items, SignalStoreWriter& w) {
  torch::NoGradGuard no_grad;
  const int64_t B = static_cast<int64_t>(items.size()), k = o.k;
  int64_t T = 0;
  for (const auto& it : items) T = std::max<int64_t>(T, it.tokens.size());
  // Right-padded rows: causal attention keeps padding from reaching the real positions.
  torch::Tensor tok = torch::zeros({B, T}, torch::kInt64);
  auto acc = tok.accessor<int64_t, 2>();
  std::vector<int64_t> rows, targets;  // flat position b*T + t predicting targets[...] = tokens[t + 1]
  for (int64_t b = 0; b < B; ++b) {
    const auto& it = items[b];
    for (size_t t = 0; t < it.tokens.size(); ++t) acc[b][t] = it.tokens[t];
    for (size_t t = it.prompt_len; t < it.tokens.size(); ++t) {
      rows.push_back(b * T + static_cast<int64_t>(t) - 1);
      targets.push_back(it.tokens[t]);
    }
  }
  const torch::Device dev = m.model->device();
  // The cached pass (the CPU kernels where they run): the same numbers generation computes for these
  // positions, and it works on an inference-only (blocks) load.
  std::vector<int64_t> slots(static_cast<size_t>(B)), n_new(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) slots[size_t(b)] = b, n_new[size_t(b)] = int64_t(items[size_t(b)].tokens.size());
  KvCache cache(m.hparams, B, T, dev, m.model->dtype());
  torch::Tensor hidden = m.model->cached_hidden(tok.to(dev), slots, n_new, cache);  // [B, T, E] float32
  hidden = hidden.reshape({B * T, hidden.size(2)});
  const int64_t N = static_cast<int64_t>(rows.size());
  torch::Tensor row_idx = torch::tensor(rows, torch::kInt64).to(dev);
  torch::Tensor tgt = torch::tensor(targets, torch::kInt64).to(dev);
  std::vector<float> token_lp(N), top_lp(N * k), tail(N);
  std::vector<int32_t> top_ids(N * k);
  for (int64_t r0 = 0; r0 < N; r0 += kScoreLogitRows) {
    const int64_t n = std::min(kScoreLogitRows, N - r0);
    torch::Tensor h = hidden.index_select(0, row_idx.narrow(0, r0, n));
    torch::Tensor lsm = torch::log_softmax(m.model->lm_logits(h).to(torch::kFloat32), -1);  // [n, V]
    auto [vals, ids] = lsm.topk(k, -1, /*largest=*/true, /*sorted=*/true);
    torch::Tensor chosen = lsm.gather(1, tgt.narrow(0, r0, n).unsqueeze(1)).squeeze(1);
    vals = vals.cpu().contiguous();
    ids = ids.cpu().contiguous();
    chosen = chosen.cpu().contiguous();
    const float* pv = vals.data_ptr<float>();
    const int64_t* pi = ids.data_ptr<int64_t>();
    for (int64_t r = 0; r < n; ++r) {
      // Order ties by id, as generate's top_entries does.
      std::vector<std::pair<float, int32_t>> e(k);
      for (int64_t q = 0; q < k; ++q) e[q] = {pv[r * k + q], static_cast<int32_t>(pi[r * k + q])};
      std::sort(e.begin(), e.end(), [](const auto& a, const auto& b) {
        return a.first != b.first ? a.first > b.first : a.second < b.second;
      });
      for (int64_t q = 0; q < k; ++q) {
        top_lp[(r0 + r) * k + q] = e[q].first;
        top_ids[(r0 + r) * k + q] = e[q].second;
      }
      token_lp[r0 + r] = chosen.data_ptr<float>()[r];
      tail[r0 + r] = tail_mass_of(&top_lp[(r0 + r) * k], k);
    }
  }
  int64_t c = 0;
  for (const auto& it : items) {
    const int64_t n = static_cast<int64_t>(it.tokens.size()) - it.prompt_len;
    auto sl = [&](const auto& v, int64_t per) {
      using V = std::decay_t<decltype(v)>;
      return V(v.begin() + c * per, v.begin() + (c + n) * per);
    };
    w.add(it.id, it.tokens, it.prompt_len, sl(token_lp, 1), sl(top_ids, k), sl(top_lp, k), sl(tail, 1));
    c += n;
  }
}

void capture_score(LoadedModel& m, const CaptureOptions& o, const std::vector<PromptLine>& lines,
                   const std::vector<std::vector<int32_t>>& prompts, const std::vector<int64_t>& todo,
                   SignalStoreWriter& w, ProgressBar& bar, CaptureSummary& sum) {
  const int64_t max_pos = m.hparams.max_position;
  std::vector<ScoreItem> group;
  int64_t group_len = 0, done = 0;
  auto run_group = [&] {
    if (group.empty()) return;
    score_group(m, o, group, w);
    for (const auto& it : group) sum.tokens_generated += static_cast<int64_t>(it.tokens.size()) - it.prompt_len;
    done += static_cast<int64_t>(group.size());
    sum.samples_written += static_cast<int64_t>(group.size());
    group.clear();
    group_len = 0;
    if (w.pending_samples() >= o.shard_samples) w.flush();
    bar.update(done, sum.tokens_generated);
  };
  // A chat completion ends its turn the way a generated one does: with the template's end-of-turn
  // token, so a student learns where answers stop (generate mode stores the sampled stop token).
  std::vector<int32_t> eot;
  std::string eot_text;
  const bool any_chat = std::any_of(todo.begin(), todo.end(), [&](int64_t id) { return lines[id].chat; });
  if (any_chat) {  // chat lines were formatted with the template, so the model has one
    eot_text = ChatTemplate::from_jinja(m.chat_template, *m.tokenizer).end_of_turn();
    eot = m.tokenizer->encode(eot_text, /*parse_special=*/true, /*add_bos=*/false);
    check(eot.size() == 1, m.path, ": the chat template's end-of-turn ", eot_text, " is not one special token");
  }
  for (int64_t id : todo) {
    const PromptLine& pl = lines[id];
    ScoreItem it;
    it.id = id;
    it.tokens = prompts[id];
    it.prompt_len = static_cast<int64_t>(it.tokens.size());
    std::string_view text = pl.completion;
    // A completion copied with its end-of-turn marker: the marker is the token appended below.
    if (pl.chat && text.size() >= eot_text.size() && text.substr(text.size() - eot_text.size()) == eot_text)
      text.remove_suffix(eot_text.size());
    std::vector<int32_t> comp = m.tokenizer->encode(std::string(text), /*parse_special=*/false, /*add_bos=*/false);
    check(!comp.empty(), o.prompts_path, ":", pl.line, ": field \"completion\" encodes to no tokens");
    if (pl.chat) comp.push_back(eot[0]);
    it.tokens.insert(it.tokens.end(), comp.begin(), comp.end());
    check(max_pos <= 0 || int64_t(it.tokens.size()) <= max_pos, o.prompts_path, ":", pl.line, ": prompt + completion are ",
          it.tokens.size(), " tokens but the teacher's context is ", max_pos, "; shorten the line");
    const int64_t len = std::max<int64_t>(group_len, it.tokens.size());
    if (!group.empty() && (int64_t(group.size()) >= o.batch || len * int64_t(group.size() + 1) > kScoreTokenBudget))
      run_group();
    group_len = std::max<int64_t>(group_len, it.tokens.size());
    group.push_back(std::move(it));
    // Keep shards at shard_samples: close the group when the shard it fills is full.
    if (w.pending_samples() + int64_t(group.size()) >= o.shard_samples) run_group();
  }
  run_group();
}

}  // namespace

// A pure function of (seed, p, s), so any subset of samples (a resumed run) reproduces a
// straight run's.
uint64_t capture_sample_seed(uint64_t seed, int64_t prompt_index, int64_t sample_index) {
  return rng_u64(rng_u64(seed, static_cast<uint64_t>(prompt_index)), static_cast<uint64_t>(sample_index));
}

int64_t check_prompts_file(const CaptureOptions& opts) {
  check(opts.mode == "generate" || opts.mode == "score", "--mode must be generate or score, got \"", opts.mode, "\"");
  return static_cast<int64_t>(read_prompt_lines(opts.prompts_path, opts).size());
}

CaptureSummary capture(LoadedModel& teacher, const std::string& teacher_spec, const CaptureOptions& opts) {
  const auto t0 = std::chrono::steady_clock::now();
  check_options(teacher, opts);
  const CaptureOptions& o = opts;
  std::vector<PromptLine> lines = read_prompt_lines(o.prompts_path, o);
  const std::string prompts_sha = sha256_file(o.prompts_path);
  const int64_t n_file = static_cast<int64_t>(lines.size());
  const int64_t n_use = o.limit > 0 ? std::min(o.limit, n_file) : n_file;

  std::vector<std::vector<int32_t>> prompts(n_use);
  for (int64_t p = 0; p < n_use; ++p) {
    prompts[p] = encode_prompt(teacher, lines[p], o.prompts_path);
    check(!prompts[p].empty(), o.prompts_path, ":", lines[p].line, ": the prompt encodes to no tokens");
    if (o.mode == "generate")
      check(int64_t(prompts[p].size()) < teacher.hparams.max_position, o.prompts_path, ":", lines[p].line,
            ": the prompt is ", prompts[p].size(), " tokens but the teacher's context is ",
            teacher.hparams.max_position, "; shorten it");
  }

  SignalStoreWriter w(o.out_dir, make_manifest(teacher, teacher_spec, o, n_file, prompts_sha));
  const std::vector<int64_t>& done = w.done_ids();
  const int64_t S = o.samples_per_prompt;
  std::vector<int64_t> todo;
  for (int64_t id = 0; id < n_use * S; ++id)
    if (!std::binary_search(done.begin(), done.end(), id)) todo.push_back(id);

  CaptureSummary sum;
  sum.prompts = n_use;
  sum.samples_total = n_use * S;
  sum.samples_skipped = sum.samples_total - static_cast<int64_t>(todo.size());

  ProgressBar bar("capture", static_cast<int64_t>(todo.size()), "samples");
  bar.set_enabled(o.progress);
  if (o.mode == "generate")
    capture_generate(teacher, o, prompts, todo, w, bar, sum);
  else
    capture_score(teacher, o, lines, prompts, todo, w, bar, sum);

  // Complete = every sample of the whole file is stored (a --limit run is resumable, not complete).
  int64_t stored = static_cast<int64_t>(w.done_ids().size()) + w.pending_samples();
  if (stored == n_file * S)
    w.finish();
  else
    w.flush();
  bar.finish();
  sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return sum;
}

}  // namespace retort
