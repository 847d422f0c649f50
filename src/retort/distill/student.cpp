#include "retort/distill/student.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <numeric>

#include "retort/model/llama.h"
#include "retort/model/loader.h"
#include "retort/util/error.h"

namespace retort {

using torch::indexing::Slice;

// ---------------------------------------------------------------------------------------------
// StudentConfig

namespace {

const char* const kKeys = "layers, hidden, heads, kv_heads, ffn, init, keep, seed";

int64_t* size_field(StudentConfig& c, const std::string& key) {
  if (key == "layers") return &c.n_layer;
  if (key == "hidden") return &c.n_embd;
  if (key == "heads") return &c.n_head;
  if (key == "kv_heads") return &c.n_head_kv;
  if (key == "ffn") return &c.n_ff;
  return nullptr;
}

void check_init(const std::string& init, const std::string& where) {
  check(init == "prune" || init == "random", where, ": init must be \"prune\" or \"random\", got \"", init, "\"");
}

void check_keep(const std::string& keep, const std::string& where) {
  check(keep == "spread" || keep == "influence" || keep == "block", where,
        ": keep must be \"spread\", \"influence\" or \"block\" (which teacher layers a pruned student keeps), got \"",
        keep, "\"");
}

// A whole non-negative decimal integer, or an Error naming the key.
uint64_t parse_uint(const std::string& v, const std::string& key, const std::string& where) {
  check(!v.empty() && v.find_first_not_of("0123456789") == std::string::npos, where, ": ", key,
        " must be a non-negative integer, got \"", v, "\"");
  errno = 0;
  char* end = nullptr;
  unsigned long long x = std::strtoull(v.c_str(), &end, 10);
  check(errno == 0 && *end == '\0', where, ": ", key, " is out of range: \"", v, "\"");
  return uint64_t(x);
}

}  // namespace

StudentConfig StudentConfig::from_json(const nlohmann::json& j, const std::string& where) {
  if (j.is_string()) return parse(j.get<std::string>());
  check(j.is_object(), where, ": a student config must be an object {\"layers\": 8, ...} or a string "
        "\"layers=8,hidden=256,...\", got ", j.dump());
  StudentConfig c;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const auto& v = it.value();
    if (int64_t* f = size_field(c, key)) {
      check(v.is_number_integer() && v.get<int64_t>() >= 0, where, ": ", key,
            " must be a non-negative integer (0 = the teacher's), got ", v.dump());
      *f = v.get<int64_t>();
    } else if (key == "init") {
      check(v.is_string(), where, ": init must be a string (\"prune\" or \"random\"), got ", v.dump());
      c.init = v.get<std::string>();
      check_init(c.init, where);
    } else if (key == "keep") {
      check(v.is_string(), where, ": keep must be a string (\"spread\", \"influence\" or \"block\"), got ", v.dump());
      c.keep = v.get<std::string>();
      check_keep(c.keep, where);
    } else if (key == "seed") {
      check(v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0), where,
            ": seed must be a non-negative integer, got ", v.dump());
      c.seed = v.get<uint64_t>();
    } else {
      fail(where, ": unknown student key \"", key, "\" (known: ", kKeys, ")");
    }
  }
  return c;
}

StudentConfig StudentConfig::parse(const std::string& spec) {
  const std::string where = "student \"" + spec + "\"";
  StudentConfig c;
  size_t pos = 0;
  while (pos <= spec.size()) {
    size_t comma = spec.find(',', pos);
    if (comma == std::string::npos) comma = spec.size();
    std::string item = spec.substr(pos, comma - pos);
    pos = comma + 1;
    // Trim spaces around the item.
    item.erase(0, item.find_first_not_of(' '));
    item.erase(item.find_last_not_of(' ') + 1);
    if (item.empty()) continue;
    size_t eq = item.find('=');
    check(eq != std::string::npos, where, ": expected key=value, got \"", item, "\" (keys: ", kKeys, ")");
    std::string key = item.substr(0, eq), val = item.substr(eq + 1);
    key.erase(key.find_last_not_of(' ') + 1);
    val.erase(0, val.find_first_not_of(' '));
    if (int64_t* f = size_field(c, key)) {
      uint64_t x = parse_uint(val, key, where);
      check(x < (uint64_t(1) << 40), where, ": ", key, " = ", val, " is too large");
      *f = int64_t(x);
    } else if (key == "init") {
      c.init = val;
      check_init(c.init, where);
    } else if (key == "keep") {
      c.keep = val;
      check_keep(c.keep, where);
    } else if (key == "seed") {
      c.seed = parse_uint(val, key, where);
    } else {
      fail(where, ": unknown student key \"", key, "\" (known: ", kKeys, ")");
    }
  }
  return c;
}

nlohmann::json StudentConfig::to_json() const {
  return {{"layers", n_layer}, {"hidden", n_embd}, {"heads", n_head}, {"kv_heads", n_head_kv},
          {"ffn", n_ff},       {"init", init},     {"keep", keep}, {"seed", seed}};
}

// ---------------------------------------------------------------------------------------------
// Student hyperparameters

namespace {

// The head count nearest to `heads` that divides `hidden` into an even head_dim (ties: fewer heads).
int64_t nearest_heads(int64_t hidden, int64_t heads) {
  int64_t best = 0;
  for (int64_t h = 1; h <= hidden; ++h) {
    if (hidden % h != 0 || (hidden / h) % 2 != 0) continue;
    if (best == 0 || std::llabs(h - heads) < std::llabs(best - heads)) best = h;
  }
  return best;
}

// Default KV heads: the fewest that divide n_head with at most `max_group` query heads per group.
int64_t default_kv_heads(int64_t n_head, int64_t max_group) {
  int64_t kv = std::max<int64_t>(1, (n_head + max_group - 1) / max_group);
  while (n_head % kv != 0) ++kv;
  return kv;
}

// n layer indices spread evenly over [0, L), first and last included.
std::vector<int64_t> spread_layers(int64_t L, int64_t n) {
  if (n == 1) return {0};
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i) out.push_back(int64_t(std::llround(double(i) * double(L - 1) / double(n - 1))));
  return out;
}

// Gemma 3: a student of n layers gets the teacher's rule for local (sliding-window) layers: when the teacher's
// are "every P-th layer global" (Gemma 3: P = 6), the student's are too, so its GGUF says them as llama.cpp
// expects; otherwise the student's layer i takes the type of the teacher layer a prune would keep for it.
std::vector<uint8_t> student_local_layers(const ModelHParams& t, int64_t n) {
  std::vector<int64_t> periods = {6};  // Gemma 3's, first: a teacher of under 6 layers, all local, fits 6 too
  for (int64_t p = 1; p <= t.n_layer + 1; ++p) periods.push_back(p);
  for (int64_t p : periods) {
    bool fits = true;
    for (int64_t l = 0; l < t.n_layer && fits; ++l) fits = t.is_local(l) == (p > 1 && (l + 1) % p != 0);
    if (!fits) continue;
    std::vector<uint8_t> out(size_t(n), 0);
    for (int64_t l = 0; l < n; ++l) out[size_t(l)] = p > 1 && (l + 1) % p != 0;
    return out;
  }
  std::vector<uint8_t> out;
  for (int64_t l : spread_layers(t.n_layer, n)) out.push_back(t.is_local(l));
  return out;
}

std::string divisors_of(int64_t n) {
  std::string s;
  for (int64_t d = 1; d <= n; ++d)
    if (n % d == 0) s += (s.empty() ? "" : ", ") + std::to_string(d);
  return s;
}

}  // namespace

ModelHParams student_hparams(const ModelHParams& t, const StudentConfig& cfg) {
  check_init(cfg.init, "student");
  const bool prune = cfg.init == "prune";
  const int64_t t_group = t.n_head / t.n_head_kv;
  auto pick = [](int64_t v, int64_t teacher) { return v == 0 ? teacher : v; };
  const std::initializer_list<std::pair<int64_t, const char*>> sizes = {
      {cfg.n_layer, "layers"}, {cfg.n_embd, "hidden"}, {cfg.n_head, "heads"}, {cfg.n_head_kv, "kv_heads"}, {cfg.n_ff, "ffn"}};
  for (auto [v, key] : sizes)
    check(v >= 0, "student: ", key, " must be positive (0 = keep the teacher's), got ", v);

  ModelHParams s = t;
  s.n_layer = pick(cfg.n_layer, t.n_layer);
  s.n_embd = pick(cfg.n_embd, t.n_embd);
  s.n_head = pick(cfg.n_head, t.n_head);
  s.n_ff = pick(cfg.n_ff, t.n_ff);
  s.n_head_kv = cfg.n_head_kv != 0 ? cfg.n_head_kv
                : s.n_head == t.n_head ? t.n_head_kv
                                       : default_kv_heads(s.n_head, t_group);

  if (prune) {
    check(t.arch == "llama" || t.arch == "mistral" || t.arch == "qwen2", "student: init=prune is implemented for the "
          "Llama family (llama, mistral, qwen2); the teacher is ", t.arch, ": use init=random");
    // Pruning cuts whole heads out of the teacher: head_dim is the teacher's.
    auto not_larger = [&](int64_t v, int64_t tv, const char* key) {
      check(v <= tv, "student: ", key, "=", v, " is larger than the teacher's ", tv,
            "; init=prune can only remove (use at most ", tv, ", or init=random)");
    };
    not_larger(s.n_layer, t.n_layer, "layers");
    not_larger(s.n_embd, t.n_embd, "hidden");
    not_larger(s.n_head, t.n_head, "heads");
    not_larger(s.n_head_kv, t.n_head_kv, "kv_heads");
    not_larger(s.n_ff, t.n_ff, "ffn");
    s.head_dim = t.head_dim;
    check(s.n_head % s.n_head_kv == 0, "student: kv_heads=", s.n_head_kv, " does not divide heads=", s.n_head,
          "; try kv_heads in {", divisors_of(s.n_head), "}");
    check(s.n_head / s.n_head_kv <= t_group, "student: heads=", s.n_head, " over kv_heads=", s.n_head_kv, " gives ",
          s.n_head / s.n_head_kv, " query heads per KV group, but the teacher's groups have only ", t_group,
          " (init=prune keeps whole groups); try kv_heads=", default_kv_heads(s.n_head, t_group),
          " or heads=", s.n_head_kv * t_group);
  } else {
    if (s.n_embd % s.n_head != 0 || (s.n_embd / s.n_head) % 2 != 0) {
      int64_t h = nearest_heads(s.n_embd, s.n_head);
      fail("student: heads=", s.n_head,
           s.n_embd % s.n_head != 0 ? " does not divide hidden=" : " gives an odd head_dim for hidden=", s.n_embd,
           h > 0 ? cat("; try heads=", h, " (head_dim ", s.n_embd / h, ")") : std::string("; use an even hidden size"));
    }
    s.head_dim = s.n_embd == t.n_embd && s.n_head == t.n_head ? t.head_dim : s.n_embd / s.n_head;
    check(s.n_head % s.n_head_kv == 0, "student: kv_heads=", s.n_head_kv, " does not divide heads=", s.n_head,
          "; try kv_heads in {", divisors_of(s.n_head), "}");
    // The teacher's stored per-frequency RoPE divisors only fit its own head_dim.
    if (s.head_dim != t.head_dim && !t.rope_freq_factors.empty())
      fail("student: the teacher stores rope_freqs for head_dim ", t.head_dim, "; a student with head_dim ",
           s.head_dim, " cannot reuse them; choose heads=", s.n_embd / t.head_dim, " so head_dim stays ", t.head_dim);
  }
  if (!t.local_layers.empty()) s.local_layers = student_local_layers(t, s.n_layer);
  // Gemma 3's query scale: the teacher's while head_dim is, else 1/sqrt(head_dim) (Gemma 3's rule below 27B).
  if (s.head_dim != t.head_dim) s.attn_scale = 0;
  return s;
}

CausalLM make_random_student(const ModelHParams& hp, uint64_t seed) {
  CausalLM m = make_causal_lm(hp);
  m->init_weights(seed);
  return m;
}

// ---------------------------------------------------------------------------------------------
// Pruning

namespace {

torch::Tensor rms(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  return x * torch::rsqrt(x.pow(2).mean(-1, true) + eps) * w.to(torch::kFloat32);
}

torch::Tensor linear32(const torch::Tensor& x, const ProjImpl& p) {
  return torch::linear(x, p.weight.to(torch::kFloat32), p.bias.defined() ? p.bias.to(torch::kFloat32) : p.bias);
}

// x [B, H, T, D], cos/sin [T, D/2]: rotate-half RoPE.
torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const int64_t h = x.size(-1) / 2;
  auto x1 = x.narrow(-1, 0, h), x2 = x.narrow(-1, h, h);
  return torch::cat({x1 * cos - x2 * sin, x2 * cos + x1 * sin}, -1);
}

// Importance scores from one float32 pass of the teacher over the calibration rows.
struct Importance {
  torch::Tensor channel;              // [n_embd]  Σ_l mean_{b,t} |x_l|  (residual stream entering each layer + final)
  std::vector<torch::Tensor> head;    // per layer [n_head]  mean_{b,t} ‖attn_out_h‖₂
  std::vector<torch::Tensor> neuron;  // per layer [n_ff]    mean_{b,t} |silu(gate)·up|
  // Per-channel mean_{b,t} x² at the input of every RMSNorm: [n_embd] each. Used to rescale the
  // kept norm weights (see norm_rescale).
  std::vector<torch::Tensor> sq_attn_in, sq_mlp_in;  // per layer
  torch::Tensor sq_final;
  // angle[i][j] = mean_{b,t} arccos(cos(x_i, x_j)) / π between the residual stream entering layer i and
  // entering layer j (index L = after the last layer): [L+1, L+1], float64. How much layers i..j-1 turn
  // the stream; the layer choice (keep_layers) reads it.
  torch::Tensor angle;
};

Importance importance(LlamaModelImpl& m, const torch::Tensor& calibration) {
  torch::NoGradGuard no_grad;
  const ModelHParams& hp = m.hparams();
  const auto dev = m.device();
  auto tok = calibration.to(dev, torch::kInt64);
  const int64_t B = tok.size(0), T = tok.size(1), H = hp.n_head, Hkv = hp.n_head_kv, D = hp.head_dim, G = H / Hkv;

  auto angle = torch::outer(torch::arange(T, torch::kInt64).to(torch::kFloat32), rope_inv_freq(hp.rope_theta, hp.head_dim, hp.rope_scaling, hp.rope_freq_factors));  // [T, D/2]
  auto cos = angle.cos().to(dev), sin = angle.sin().to(dev);
  auto causal = torch::ones({T, T}, torch::TensorOptions().dtype(torch::kBool).device(dev)).tril();
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(dev);

  Importance imp;
  imp.channel = torch::zeros({hp.n_embd}, f32);
  auto x = torch::embedding(m.model->embed_tokens.to(torch::kFloat32), tok);  // [B, T, E]
  std::vector<torch::Tensor> unit;  // the residual stream entering each layer (and after the last), unit rows
  auto unit_rows = [](const torch::Tensor& r) { return (r / r.norm(2, -1, true).clamp_min(1e-30)).reshape({-1, r.size(-1)}); };
  for (auto& layer : m.model->layers) {
    unit.push_back(unit_rows(x));
    imp.channel += x.abs().mean(std::vector<int64_t>{0, 1});
    auto& at = layer->self_attn;
    imp.sq_attn_in.push_back(x.square().mean(std::vector<int64_t>{0, 1}));
    auto hn = rms(x, layer->input_layernorm->weight, hp.rms_eps);
    auto q = rope(linear32(hn, *at->q_proj).view({B, T, H, D}).transpose(1, 2), cos, sin);       // [B, H, T, D]
    auto k = rope(linear32(hn, *at->k_proj).view({B, T, Hkv, D}).transpose(1, 2), cos, sin);     // [B, Hkv, T, D]
    auto v = linear32(hn, *at->v_proj).view({B, T, Hkv, D}).transpose(1, 2);
    k = k.repeat_interleave(G, 1);  // query head h reads KV head h / G
    v = v.repeat_interleave(G, 1);
    auto scores = torch::matmul(q, k.transpose(-1, -2)) / std::sqrt(double(D));  // [B, H, T, T]
    scores = scores.masked_fill(causal.logical_not(), -std::numeric_limits<float>::infinity());
    auto out = torch::matmul(torch::softmax(scores, -1), v);                      // [B, H, T, D]
    imp.head.push_back(out.norm(2, -1).mean(std::vector<int64_t>{0, 2}));                            // [H]
    x = x + linear32(out.transpose(1, 2).reshape({B, T, H * D}), *at->o_proj);
    auto& mlp = layer->mlp;
    imp.sq_mlp_in.push_back(x.square().mean(std::vector<int64_t>{0, 1}));
    auto h2 = rms(x, layer->post_attention_layernorm->weight, hp.rms_eps);
    auto act = torch::silu(linear32(h2, *mlp->gate_proj)) * linear32(h2, *mlp->up_proj);  // [B, T, F]
    imp.neuron.push_back(act.abs().mean(std::vector<int64_t>{0, 1}));
    x = x + linear32(act, *mlp->down_proj);
  }
  imp.channel += x.abs().mean(std::vector<int64_t>{0, 1});
  imp.sq_final = x.square().mean(std::vector<int64_t>{0, 1});
  unit.push_back(unit_rows(x));
  const int64_t L1 = int64_t(unit.size());
  imp.angle = torch::zeros({L1, L1}, torch::kDouble);
  for (int64_t i = 0; i < L1; ++i)
    for (int64_t j = i + 1; j < L1; ++j) {
      auto cosine = (unit[size_t(i)].to(torch::kDouble) * unit[size_t(j)].to(torch::kDouble)).sum(-1).clamp(-1.0, 1.0);
      double a = (cosine.acos().mean() / M_PI).item<double>();
      imp.angle[i][j] = a;
      imp.angle[j][i] = a;
    }
  return imp;
}

// Indices of the n largest scores, returned ascending. Ties: lower index wins (deterministic).
std::vector<int64_t> top_n(const torch::Tensor& scores, int64_t n) {
  auto s = scores.to(torch::kCPU, torch::kDouble).contiguous();
  const double* p = s.data_ptr<double>();
  std::vector<int64_t> idx(size_t(s.numel()));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return p[a] > p[b]; });
  idx.resize(size_t(n));
  std::sort(idx.begin(), idx.end());
  return idx;
}

// Which n of the teacher's L layers a pruned student keeps, ascending:
//   spread     evenly spread, first and last kept (the choice before depth was measured);
//   influence  ShortGPT's block influence: keep the n layers that turn the residual stream most,
//              BI_l = angle(x_l, x_{l+1}) (Men et al. 2024 rank by 1 - cos; the order is the same);
//   block      drop one contiguous block of L - n layers, the one whose input and output streams are
//              closest, min_s angle(x_s, x_{s+L-n}) (Gromov et al. 2024, "The Unreasonable
//              Ineffectiveness of the Deeper Layers").
std::vector<int64_t> keep_layers(const std::string& keep, const torch::Tensor& angle, int64_t L, int64_t n) {
  std::vector<int64_t> out;
  if (keep == "influence") {
    return top_n(torch::diagonal(angle, 1), n);
  } else if (keep == "block") {
    const int64_t drop = L - n;
    int64_t best = 0;
    double best_angle = std::numeric_limits<double>::infinity();
    auto a = angle.accessor<double, 2>();
    for (int64_t start = 0; start + drop <= L; ++start)
      if (a[start][start + drop] < best_angle) best_angle = a[start][start + drop], best = start;
    for (int64_t l = 0; l < L; ++l)
      if (l < best || l >= best + drop) out.push_back(l);
    return out;
  }
  return spread_layers(L, n);
}

// RMSNorm divides by rms over the channels it sees. Over the kept (more important, larger)
// channels the rms is larger than over all of them, so a pruned norm would shrink its output.
// Multiplying the kept weights by sqrt(mean_kept E[x²] / mean_all E[x²]) restores the teacher's
// scale on the calibration data (exact when the dropped channels are zero).
torch::Tensor norm_rescale(const torch::Tensor& sq, const torch::Tensor& kept) {
  return (sq.index_select(0, kept).mean() / sq.mean().clamp_min(1e-30)).sqrt();
}

// Row indices of whole heads: head h covers rows h*D .. h*D + D - 1.
std::vector<int64_t> head_rows(const std::vector<int64_t>& heads, int64_t D) {
  std::vector<int64_t> rows;
  for (int64_t h : heads)
    for (int64_t d = 0; d < D; ++d) rows.push_back(h * D + d);
  return rows;
}

torch::Tensor index_tensor(const std::vector<int64_t>& v, torch::Device dev) {
  return torch::tensor(v, torch::kInt64).to(dev);
}

}  // namespace

CausalLM prune_from_teacher(LoadedModel& teacher, const ModelHParams& s, const torch::Tensor& calibration,
                            const std::string& keep) {
  torch::NoGradGuard no_grad;
  auto* llama = dynamic_cast<LlamaModelImpl*>(teacher.model.get());
  check(llama != nullptr, "prune: init=prune is implemented for the Llama family (llama, mistral, qwen2); the teacher is ",
        teacher.hparams.arch, ": use init=random");
  check(llama->dense(), "prune: the teacher was loaded for inference only; load it with its dense weights");
  LlamaModelImpl& tm = *llama;
  const ModelHParams& t = tm.hparams();
  check(calibration.defined() && calibration.dim() == 2 && calibration.numel() > 0,
        "prune: calibration tokens must be a non-empty [B, T] tensor");
  {
    auto c = calibration.to(torch::kInt64);
    int64_t mn = c.min().item<int64_t>(), mx = c.max().item<int64_t>();
    check(mn >= 0 && mx < t.n_vocab, "prune: calibration token id ", mn < 0 ? mn : mx, " is out of range [0, ",
          t.n_vocab, ")");
  }
  check(s.arch == t.arch && s.n_vocab == t.n_vocab && s.head_dim == t.head_dim && s.qkv_bias == t.qkv_bias &&
            s.tie_embeddings == t.tie_embeddings,
        "prune: the student must keep the teacher's architecture, vocabulary, head_dim, bias and tying "
        "(make its hparams with student_hparams(teacher, cfg) and init=prune)");
  check(s.n_layer <= t.n_layer && s.n_embd <= t.n_embd && s.n_head <= t.n_head && s.n_head_kv <= t.n_head_kv &&
            s.n_ff <= t.n_ff && s.n_head % s.n_head_kv == 0 && s.n_head / s.n_head_kv <= t.n_head / t.n_head_kv,
        "prune: student sizes do not fit inside the teacher (see student_hparams)");

  Importance imp = importance(tm, calibration);
  const auto dev = tm.device();
  const int64_t D = t.head_dim, t_group = t.n_head / t.n_head_kv, s_group = s.n_head / s.n_head_kv;

  check_keep(keep, "prune");
  const std::vector<int64_t> layers = keep_layers(keep, imp.angle, t.n_layer, s.n_layer);
  {
    std::string list;
    for (int64_t l : layers) list += (list.empty() ? "" : ",") + std::to_string(l);
    std::fprintf(stderr, "prune: keeping teacher layers %s (keep=%s)\n", list.c_str(), keep.c_str());
  }
  auto ch = index_tensor(top_n(imp.channel, s.n_embd), dev);

  LlamaModel out(s);
  auto params = out->named_parameters();
  auto tparams = tm.named_parameters();
  auto f32 = [&](const std::string& name) { return tparams[name].to(torch::kFloat32); };
  auto put = [&](const std::string& name, const torch::Tensor& v) {
    auto& p = params[name];
    TORCH_CHECK(p.sizes() == v.sizes(), "prune: ", name, " shape ", v.sizes(), " vs ", p.sizes());
    p.copy_(v);
  };

  put("model.embed_tokens.weight", f32("model.embed_tokens.weight").index_select(1, ch));
  // Norm weights: the kept slice, rescaled when channels were dropped (norm_rescale).
  const bool width_pruned = s.n_embd < t.n_embd;
  auto norm_w = [&](const std::string& name, const torch::Tensor& sq) {
    auto w = f32(name).index_select(0, ch);
    return width_pruned ? w * norm_rescale(sq, ch) : w;
  };
  put("model.norm.weight", norm_w("model.norm.weight", imp.sq_final));
  if (!s.tie_embeddings) put("lm_head.weight", f32("lm_head.weight").index_select(1, ch));

  for (int64_t i = 0; i < s.n_layer; ++i) {
    const int64_t l = layers[size_t(i)];
    const std::string sp = "model.layers." + std::to_string(i) + ".", tp = "model.layers." + std::to_string(l) + ".";

    // KV groups ranked by the summed importance of their query heads; within each kept group,
    // its most important query heads. Ascending order keeps query head j in group j / s_group.
    auto hi = imp.head[size_t(l)].to(torch::kCPU, torch::kDouble);
    auto groups = top_n(hi.view({t.n_head_kv, t_group}).sum(1), s.n_head_kv);
    std::vector<int64_t> q_heads;
    for (int64_t g : groups)
      for (int64_t j : top_n(hi.narrow(0, g * t_group, t_group), s_group)) q_heads.push_back(g * t_group + j);
    auto q_rows = index_tensor(head_rows(q_heads, D), dev), kv_rows = index_tensor(head_rows(groups, D), dev);
    auto ff = index_tensor(top_n(imp.neuron[size_t(l)], s.n_ff), dev);

    put(sp + "input_layernorm.weight", norm_w(tp + "input_layernorm.weight", imp.sq_attn_in[size_t(l)]));
    put(sp + "post_attention_layernorm.weight", norm_w(tp + "post_attention_layernorm.weight", imp.sq_mlp_in[size_t(l)]));
    put(sp + "self_attn.q_proj.weight", f32(tp + "self_attn.q_proj.weight").index_select(0, q_rows).index_select(1, ch));
    put(sp + "self_attn.k_proj.weight", f32(tp + "self_attn.k_proj.weight").index_select(0, kv_rows).index_select(1, ch));
    put(sp + "self_attn.v_proj.weight", f32(tp + "self_attn.v_proj.weight").index_select(0, kv_rows).index_select(1, ch));
    if (s.qkv_bias) {
      put(sp + "self_attn.q_proj.bias", f32(tp + "self_attn.q_proj.bias").index_select(0, q_rows));
      put(sp + "self_attn.k_proj.bias", f32(tp + "self_attn.k_proj.bias").index_select(0, kv_rows));
      put(sp + "self_attn.v_proj.bias", f32(tp + "self_attn.v_proj.bias").index_select(0, kv_rows));
    }
    put(sp + "self_attn.o_proj.weight", f32(tp + "self_attn.o_proj.weight").index_select(0, ch).index_select(1, q_rows));
    put(sp + "mlp.gate_proj.weight", f32(tp + "mlp.gate_proj.weight").index_select(0, ff).index_select(1, ch));
    put(sp + "mlp.up_proj.weight", f32(tp + "mlp.up_proj.weight").index_select(0, ff).index_select(1, ch));
    put(sp + "mlp.down_proj.weight", f32(tp + "mlp.down_proj.weight").index_select(0, ch).index_select(1, ff));
  }
  out->to(dev);
  out->eval();
  return CausalLM(out.ptr());
}

}  // namespace retort
