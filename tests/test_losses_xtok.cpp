// Tests for distillation across tokenizers: the byte-span alignment (distill/xtok_align) and the
// ULD / GOLD span losses (xtok_loss_spans, uld_loss_rows in distill/losses). Every loss value is
// checked against a float64 recomputation written here from the definitions with plain loops
// over std::vector<double> (full sorted vocabularies, std::map for the byte matching), on tiny
// hand-made vocabularies whose tokens split a UTF-8 character at different bytes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "retort/distill/losses.h"
#include "retort/distill/student.h"
#include "retort/distill/xtok_align.h"
#include "retort/model/causal_lm.h"
#include "retort/util/error.h"

using namespace retort;

namespace {

using Vec = std::vector<double>;
using Mat = std::vector<Vec>;
using Tokens = std::vector<std::string>;

template <class F>
void expect_error(F&& f, const std::string& part) {
  try {
    f();
    ADD_FAILURE() << "expected retort::Error mentioning \"" << part << "\"";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << "missing \"" << part << "\" in: " << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// Two hand-made vocabularies over the text "café€ is!" (é = C3 A9, € = E2 82 AC).

// Teacher: splits é between its two bytes and keeps € whole; "a" twice (ids 6 and 12).
const Tokens kTeacherVocab = {"caf",  "\xC3", "\xA9", "\xE2\x82\xAC", " ",   "c", "a",
                              "f",    "\xC3\xA9",     "ca",           " is", "!", "a"};
// Student: splits é and € across tokens at other bytes; "a" twice (ids 0 and 9).
const Tokens kStudentVocab = {"a",  "caf\xC3", "\xA9\xE2", "\x82\xAC", " ",  "c", "f",
                              "\xC3\xA9",      " is",      "a",        "!",  "ca", "z", "is"};

const std::vector<int64_t> kTeacherText = {0, 1, 2, 3, 10, 11};  // caf | C3 | A9 | € | " is" | !
const std::vector<int64_t> kStudentText = {1, 2, 3, 4, 13, 10};  // caf C3 | A9 E2 | 82 AC | " " | is | !

Tokens spell(const Tokens& vocab, const std::vector<int64_t>& ids) {
  Tokens out;
  for (auto i : ids) out.push_back(vocab[size_t(i)]);
  return out;
}

// ---------------------------------------------------------------------------------------------
// The float64 reference

Vec softmax(const Vec& z, double tau) {
  double mx = *std::max_element(z.begin(), z.end()), s = 0;
  Vec p(z.size());
  for (size_t i = 0; i < z.size(); ++i) s += p[i] = std::exp((z[i] - mx) / tau);
  for (auto& x : p) x /= s;
  return p;
}

// The teacher's sparse signal on one row, as the signal store keeps it (float32 values).
struct TeacherRow {
  std::vector<int64_t> ids;  // top-k teacher ids, probability descending
  Vec logprobs;              // [k]
  double tail = 0;           // 1 − Σ top-k, ≥ 0
  double own = 0;            // log p(own token)
};

double f32(double x) { return double(float(x)); }

std::vector<TeacherRow> make_teacher(const Mat& logits, const std::vector<int64_t>& own, size_t k) {
  std::vector<TeacherRow> rows;
  for (size_t j = 0; j < logits.size(); ++j) {
    Vec p = softmax(logits[j], 1.0);
    std::vector<int64_t> order(p.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[size_t(a)] > p[size_t(b)]; });
    order.resize(k);
    TeacherRow r;
    double mass = 0;
    for (auto i : order) r.ids.push_back(i), r.logprobs.push_back(f32(std::log(p[size_t(i)]))), mass += p[size_t(i)];
    r.tail = f32(std::max(0.0, 1.0 - mass));
    r.own = f32(std::log(p[size_t(own[j])]));
    rows.push_back(r);
  }
  return rows;
}

// The teacher row at τ: [p_1 … p_k], p_tail, p(own), renormalized over the k + 1 outcomes.
struct TeacherProbs {
  Vec topk;
  double tail = 0, own = 0;
};

TeacherProbs teacher_probs(const TeacherRow& r, double tau) {
  Vec a;
  for (double l : r.logprobs) a.push_back(l / tau);
  double z = 0;
  for (double x : a) z += std::exp(x);
  z += std::pow(r.tail, 1.0 / tau);
  TeacherProbs out;
  for (double x : a) out.topk.push_back(std::exp(x) / z);
  out.tail = std::pow(r.tail, 1.0 / tau) / z;
  out.own = std::exp(r.own / tau) / z;
  return out;
}

// For each teacher id, the student id with the same bytes (lowest), or −1 — written apart from
// map_vocab_by_bytes.
std::vector<int64_t> byte_matches(const Tokens& from, const Tokens& to) {
  std::map<std::string, int64_t> first;
  for (int64_t i = int64_t(to.size()) - 1; i >= 0; --i) first[to[size_t(i)]] = i;
  std::vector<int64_t> out;
  for (const auto& t : from) out.push_back(first.count(t) ? first[t] : -1);
  return out;
}

struct RefConfig {
  double tau_s = 1.0, tau_t = 1.0;
  bool last = false;  // merge on the span's last row
  bool hybrid = false;
  double beta = 0.5, w_m = 0.7, w_u = 0.3;
};

// One span's loss: merge, then sorted L1 collapsed after the teacher's known ranks (+ hybrid JSD).
double ref_span(const Mat& z, const std::vector<int64_t>& sids, const std::vector<TeacherRow>& teacher,
                const std::vector<int64_t>& t2s, const TokenSpan& sp, const RefConfig& c) {
  // Teacher: P = p_base · Π p_j(own_j) over the other rows.
  const int64_t tb = c.last ? sp.t1 - 1 : sp.t0, sb = c.last ? sp.s1 - 1 : sp.s0;
  double ct = 1, cs = 1;
  for (int64_t j = sp.t0; j < sp.t1; ++j)
    if (j != tb) ct *= teacher_probs(teacher[size_t(j)], c.tau_t).own;
  for (int64_t j = sp.s0; j < sp.s1; ++j)
    if (j != sb) cs *= softmax(z[size_t(j)], c.tau_s)[size_t(sids[size_t(j)])];
  TeacherProbs tp = teacher_probs(teacher[size_t(tb)], c.tau_t);
  Vec P;
  for (double p : tp.topk) P.push_back(p * ct);
  const double P_tail = tp.tail * ct;
  Vec Q = softmax(z[size_t(sb)], c.tau_s);
  for (auto& q : Q) q *= cs;

  // Matched pairs (hybrid): teacher entry i ↔ student id, each student id once.
  const size_t k = P.size();
  std::vector<int64_t> match(k, -1);
  std::vector<bool> student_taken(Q.size(), false);
  if (c.hybrid) {
    for (size_t i = 0; i < k; ++i) {
      int64_t m = t2s[size_t(teacher[size_t(tb)].ids[i])];
      if (m >= 0 && !student_taken[size_t(m)]) match[i] = m, student_taken[size_t(m)] = true;
    }
  }
  double L_m = 0;
  Vec Pu, Qu;
  for (size_t i = 0; i < k; ++i) {
    if (match[i] < 0) {
      Pu.push_back(P[i]);
      continue;
    }
    double p = std::max(P[i], 1e-8), q = std::max(Q[size_t(match[i])], 1e-8);
    if (c.beta == 0) {
      L_m += p * std::log(p / q);
    } else if (c.beta == 1) {
      L_m += q * std::log(q / p);
    } else {
      double mu = c.beta * p + (1 - c.beta) * q;
      L_m += c.beta * p * std::log(p / mu) + (1 - c.beta) * q * std::log(q / mu);
    }
  }
  for (size_t v = 0; v < Q.size(); ++v)
    if (!student_taken[v]) Qu.push_back(Q[v]);
  std::sort(Pu.rbegin(), Pu.rend());
  std::sort(Qu.rbegin(), Qu.rend());
  // The teacher's known ranks r < k_u against the student's (zero-padded), the rest summed.
  const size_t ku = Pu.size();
  double L_u = 0, rest = 0;
  for (size_t r = 0; r < ku; ++r) L_u += std::fabs(Pu[r] - (r < Qu.size() ? Qu[r] : 0.0));
  for (size_t r = ku; r < Qu.size(); ++r) rest += Qu[r];
  L_u += std::fabs(P_tail - rest);
  return c.hybrid ? c.w_m * L_m + c.w_u * L_u : L_u;
}

// ---------------------------------------------------------------------------------------------
// Conversions

torch::Tensor to_tensor(const Mat& m, torch::ScalarType dt) {
  auto t = torch::empty({int64_t(m.size()), int64_t(m[0].size())}, torch::kFloat64);
  auto a = t.accessor<double, 2>();
  for (size_t i = 0; i < m.size(); ++i)
    for (size_t j = 0; j < m[i].size(); ++j) a[int64_t(i)][int64_t(j)] = m[i][j];
  return t.to(dt);
}

Vec to_vec(const torch::Tensor& t) {
  auto c = t.detach().to(torch::kFloat64).contiguous();
  return Vec(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

Mat round_f32(Mat m) {
  for (auto& r : m)
    for (auto& x : r) x = f32(x);
  return m;
}

// The library's input: store-layout tensors, top-k teacher ids mapped to student ids.
XTokTeacher to_signal(const std::vector<TeacherRow>& rows, const std::vector<int64_t>& t2s) {
  const int64_t T = int64_t(rows.size()), k = int64_t(rows[0].ids.size());
  XTokTeacher t{torch::empty({T}, torch::kFloat32), torch::empty({T, k}, torch::kFloat32),
                torch::empty({T}, torch::kFloat32), torch::empty({T, k}, torch::kInt64)};
  for (int64_t j = 0; j < T; ++j) {
    const auto& r = rows[size_t(j)];
    t.token_logprob[j] = float(r.own);
    t.tail_mass[j] = float(r.tail);
    for (int64_t i = 0; i < k; ++i) {
      t.topk_logprobs[j][i] = float(r.logprobs[size_t(i)]);
      t.topk_student_ids[j][i] = t2s[size_t(r.ids[size_t(i)])];
    }
  }
  return t;
}

torch::Tensor ids_tensor(const std::vector<int64_t>& ids) { return torch::tensor(ids, torch::kInt64); }

Mat random_logits(std::mt19937_64& rng, size_t n, size_t V, double scale) {
  std::normal_distribution<double> nd(0.0, scale);
  Mat m(n, Vec(V));
  for (auto& row : m)
    for (auto& x : row) x = nd(rng);
  return m;
}

XTokConfig xconfig(const RefConfig& r) {
  XTokConfig c;
  c.student_temperature = r.tau_s;
  c.teacher_temperature = r.tau_t;
  c.merge = r.last ? SpanMerge::Last : SpanMerge::First;
  c.hybrid = r.hybrid;
  c.beta = r.beta;
  c.matched_weight = r.w_m;
  c.unmatched_weight = r.w_u;
  return c;
}

std::string describe(const RefConfig& r) {
  return "tau_s=" + std::to_string(r.tau_s) + " tau_t=" + std::to_string(r.tau_t) + (r.last ? " last" : " first") +
         (r.hybrid ? " hybrid beta=" + std::to_string(r.beta) : " uld");
}

std::vector<RefConfig> sweep() {
  std::vector<RefConfig> out;
  for (bool last : {false, true}) {
    for (auto [ts, tt] : {std::pair{1.0, 1.0}, std::pair{2.0, 0.7}}) {
      RefConfig c;
      c.tau_s = ts, c.tau_t = tt, c.last = last;
      out.push_back(c);
      for (double b : {0.0, 0.5, 1.0}) {
        c.hybrid = true, c.beta = b;
        out.push_back(c);
      }
    }
  }
  return out;
}

// float32 tolerance: each of the ≤ 2(k + 1) compared values (and each JSD term) is a probability
// exp(x) whose exponent x sums ≤ 3 float32 log-probabilities of the student; each is off by
// ≲ 2 ulps of |z|/τ + log V ≲ 10, so every value carries a relative error ≲ 3 · 2 · 10 ε32 ≈ 64 ε32.
// (Measured: ≤ 5e-7 absolute on these inputs, against 9e-5 allowed for k = 5.)
double f32_tolerance(size_t k) { return 2.0 * double(k + 1) * 64.0 * std::numeric_limits<float>::epsilon(); }

constexpr size_t kTopK = 5;

}  // namespace

// ---------------------------------------------------------------------------------------------
// Alignment

TEST(XTokAlign, IdenticalTokenizationsGiveOneSpanPerToken) {
  Tokens t = {"He", "llo", ",", " w", "\xC3\xA9"};
  auto spans = align_token_spans(t, t);
  ASSERT_EQ(spans.size(), t.size());
  for (int64_t i = 0; i < int64_t(t.size()); ++i) EXPECT_EQ(spans[size_t(i)], (TokenSpan{i, i + 1, i, i + 1}));
}

TEST(XTokAlign, TokensSpanningSeveralTokensOnEitherSide) {
  // One student token over two teacher tokens, then two student tokens over one teacher token.
  auto spans = align_token_spans({"Hug", "ging", " Face"}, {"Hugging", " F", "ace"});
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(spans[0], (TokenSpan{0, 2, 0, 1}));
  EXPECT_EQ(spans[1], (TokenSpan{2, 3, 1, 3}));
  // Crossing boundaries (ab|cd against a|bc|d) share only the ends: one span of everything.
  spans = align_token_spans({"ab", "cd"}, {"a", "bc", "d"});
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0], (TokenSpan{0, 2, 0, 3}));
}

TEST(XTokAlign, BytesSplitInsideAUtf8Character) {
  // The vocabularies above: é split C3|A9 by the teacher and inside "caf C3" | "A9 E2" by the student.
  auto spans = align_token_spans(spell(kTeacherVocab, kTeacherText), spell(kStudentVocab, kStudentText));
  ASSERT_EQ(spans.size(), 4u);
  EXPECT_EQ(spans[0], (TokenSpan{0, 2, 0, 1}));  // caf C3        ↔ caf C3
  EXPECT_EQ(spans[1], (TokenSpan{2, 4, 1, 3}));  // A9 | E2 82 AC ↔ A9 E2 | 82 AC
  EXPECT_EQ(spans[2], (TokenSpan{4, 5, 3, 5}));  // " is"         ↔ " " | is
  EXPECT_EQ(spans[3], (TokenSpan{5, 6, 5, 6}));  // !             ↔ !
  // A character split at its only inner byte on both sides still aligns at the split.
  spans = align_token_spans({"\xE2", "\x82\xAC"}, {"\xE2", "\x82", "\xAC"});
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(spans[1], (TokenSpan{1, 2, 1, 3}));
}

TEST(XTokAlign, ZeroWidthTokensJoinTheNextSpanOrTheLast) {
  // Teacher: empty BOS, a, b, empty EOS; student: ab, empty EOS. The EOS pair is its own span.
  auto spans = align_token_spans({"", "a", "b", ""}, {"ab", ""});
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(spans[0], (TokenSpan{0, 3, 0, 1}));
  EXPECT_EQ(spans[1], (TokenSpan{3, 4, 1, 2}));
  // An EOS on one side only joins the last span.
  spans = align_token_spans({"a", "b", ""}, {"a", "b"});
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(spans[1], (TokenSpan{1, 3, 1, 2}));
  // Nothing on one side: nothing to align.
  EXPECT_TRUE(align_token_spans({}, {}).empty());
  EXPECT_TRUE(align_token_spans({""}, {}).empty());
}

TEST(XTokAlign, DifferentTextIsAnError) {
  expect_error([] { align_token_spans({"caf", "\xC3\xA9"}, {"caf", "e"}); }, "first difference at byte 3");
  expect_error([] { align_token_spans({"caf", "\xC3\xA9"}, {"caf", "e"}); }, "\\xc3\\xa9");
  expect_error([] { align_token_spans({"abc"}, {"ab"}); }, "spell different bytes");
  expect_error([] { align_token_spans({"abc"}, {}); }, "0 bytes");
}

TEST(XTokAlign, VocabularyMatchingByBytes) {
  auto m = map_vocab_by_bytes(kTeacherVocab, kStudentVocab);
  ASSERT_EQ(m.size(), kTeacherVocab.size());
  EXPECT_EQ(m, byte_matches(kTeacherVocab, kStudentVocab));
  EXPECT_EQ(m[6], 0);    // "a": the lower of the student's two ids
  EXPECT_EQ(m[12], 0);   // the teacher's second "a" too
  EXPECT_EQ(m[1], -1);   // a lone C3 byte: the student has none
  EXPECT_EQ(m[10], 8);   // " is"
  // Empty byte strings (special tokens without text) match nothing.
  EXPECT_EQ(map_vocab_by_bytes({""}, {"", "a"}), (std::vector<int64_t>{-1}));
}

// ---------------------------------------------------------------------------------------------
// Loss values against the float64 reference

TEST(XTokLoss, SpanLossMatchesReference) {
  const auto spans = align_token_spans(spell(kTeacherVocab, kTeacherText), spell(kStudentVocab, kStudentText));
  const auto t2s = map_vocab_by_bytes(kTeacherVocab, kStudentVocab);
  const auto t2s_ref = byte_matches(kTeacherVocab, kStudentVocab);
  for (uint64_t seed : {1, 2, 3}) {
    std::mt19937_64 rng(seed);
    Mat tz = random_logits(rng, kTeacherText.size(), kTeacherVocab.size(), 1.5);
    // Both of the teacher's "a" (ids 6, 12) in row 2's top k: the student's "a" is claimed twice.
    tz[2][6] += 4.0, tz[2][12] += 3.5;
    const auto teacher = make_teacher(tz, kTeacherText, kTopK);
    const Mat zs = round_f32(random_logits(rng, kStudentText.size(), kStudentVocab.size(), 2.0));
    const auto signal = to_signal(teacher, t2s);
    for (const auto& c : sweep()) {
      Vec want;
      for (const auto& sp : spans) want.push_back(ref_span(zs, kStudentText, teacher, t2s_ref, sp, c));
      for (auto dt : {torch::kFloat64, torch::kFloat32}) {
        auto got = to_vec(xtok_loss_spans(to_tensor(zs, dt), ids_tensor(kStudentText), signal, spans, xconfig(c)));
        const double tol = dt == torch::kFloat64 ? 1e-12 : f32_tolerance(kTopK);
        ASSERT_EQ(got.size(), want.size());
        for (size_t i = 0; i < got.size(); ++i)
          EXPECT_NEAR(got[i], want[i], tol * std::max(1.0, std::fabs(want[i])))
              << describe(c) << " seed " << seed << " span " << i << (dt == torch::kFloat32 ? " f32" : " f64");
      }
    }
  }
}

TEST(XTokLoss, UldRowsMatchReference) {
  // Positional ULD (no merging); also a student vocabulary smaller than the teacher's k.
  std::mt19937_64 rng(7);
  const size_t N = 6, Vt = 40;
  for (size_t Vs : {size_t(30), size_t(3)}) {
    for (size_t k : {size_t(1), size_t(5), size_t(20)}) {
      Mat tz = random_logits(rng, N, Vt, 2.0);
      std::vector<int64_t> own(N);
      for (size_t j = 0; j < N; ++j) own[j] = int64_t((j * 7) % Vt);
      const auto teacher = make_teacher(tz, own, k);
      const Mat zs = round_f32(random_logits(rng, N, Vs, 2.0));
      std::vector<int64_t> t2s(Vt, -1);
      for (double ts : {1.0, 2.0}) {
        RefConfig c;
        c.tau_s = ts, c.tau_t = 1.0 / ts;
        const auto got = to_vec(uld_loss_rows(to_tensor(zs, torch::kFloat32), to_signal(teacher, t2s), xconfig(c)));
        ASSERT_EQ(got.size(), N);
        for (size_t i = 0; i < N; ++i) {
          const int64_t r = int64_t(i);
          double want = ref_span(zs, own, teacher, t2s, TokenSpan{r, r + 1, r, r + 1}, c);
          EXPECT_NEAR(got[i], want, f32_tolerance(k) * std::max(1.0, want)) << "Vs " << Vs << " k " << k << " row " << i;
        }
      }
    }
  }
}

TEST(XTokLoss, ZeroWhenTheStudentIsTheTeacher) {
  // Same vocabulary, same tokens, same logits: every compared value agrees, tail or not.
  const Tokens vocab = {"a", "b", "c", "d", "e", "f", "g"};
  const std::vector<int64_t> text = {0, 3, 3, 5, 1};
  std::mt19937_64 rng(11);
  const Mat z = round_f32(random_logits(rng, text.size(), vocab.size(), 2.0));
  const auto spans = align_token_spans(spell(vocab, text), spell(vocab, text));
  const auto t2s = map_vocab_by_bytes(vocab, vocab);
  for (size_t k : {size_t(3), vocab.size()}) {
    const auto signal = to_signal(make_teacher(z, text, k), t2s);
    for (auto c : sweep()) {
      c.tau_t = c.tau_s = 1.0;  // the same distribution only at equal temperatures
      auto rows = xtok_loss_spans(to_tensor(z, torch::kFloat64), ids_tensor(text), signal, spans, xconfig(c));
      for (double x : to_vec(rows)) EXPECT_NEAR(x, 0.0, 1e-6) << describe(c) << " k " << k;
    }
  }
  // …and a different student is not at zero.
  const Mat other = random_logits(rng, text.size(), vocab.size(), 2.0);
  const auto signal = to_signal(make_teacher(z, text, 3), t2s);
  auto rows = xtok_loss_spans(to_tensor(other, torch::kFloat64), ids_tensor(text), signal, spans, XTokConfig{});
  EXPECT_GT(rows.sum().item<double>(), 0.05);
}

// ---------------------------------------------------------------------------------------------
// Gradients

TEST(XTokLoss, GradientsMatchFiniteDifferences) {
  const auto spans = align_token_spans(spell(kTeacherVocab, kTeacherText), spell(kStudentVocab, kStudentText));
  const auto t2s = map_vocab_by_bytes(kTeacherVocab, kStudentVocab);
  std::mt19937_64 rng(5);
  const auto teacher = make_teacher(random_logits(rng, kTeacherText.size(), kTeacherVocab.size(), 1.5), kTeacherText,
                                    kTopK);
  const auto signal = to_signal(teacher, t2s);
  const Mat zs = random_logits(rng, kStudentText.size(), kStudentVocab.size(), 2.0);
  const auto weights = torch::rand({int64_t(spans.size())}, torch::kFloat64) + 0.5;
  const auto ids = ids_tensor(kStudentText);
  for (const auto& c : sweep()) {
    auto loss = [&](const torch::Tensor& z) {
      return (xtok_loss_spans(z, ids, signal, spans, xconfig(c)) * weights).sum();
    };
    auto z = to_tensor(zs, torch::kFloat64).requires_grad_(true);
    loss(z).backward();
    auto g = z.grad();
    ASSERT_TRUE(torch::isfinite(g).all().item<bool>()) << describe(c);
    EXPECT_GT(g.abs().sum().item<double>(), 0.0) << describe(c);
    // Central differences on every logit (the loss is smooth away from ties in the sorting and
    // the |·| kinks, which random logits do not hit at step 1e-6).
    torch::NoGradGuard no_grad;
    auto zc = to_tensor(zs, torch::kFloat64);
    auto acc = zc.accessor<double, 2>();
    const double h = 1e-6;
    for (int64_t i = 0; i < zc.size(0); ++i) {
      for (int64_t v = 0; v < zc.size(1); ++v) {
        const double x = acc[i][v];
        acc[i][v] = x + h;
        const double up = loss(zc).item<double>();
        acc[i][v] = x - h;
        const double down = loss(zc).item<double>();
        acc[i][v] = x;
        EXPECT_NEAR(g[i][v].item<double>(), (up - down) / (2 * h), 1e-6) << describe(c) << " z[" << i << "][" << v << "]";
      }
    }
  }
}

TEST(XTokLoss, Float32GradientsAreFiniteOnPeakedInputs) {
  // A confident student and teacher (tails of float32 noise, clamped to 0): still finite.
  const auto spans = align_token_spans(spell(kTeacherVocab, kTeacherText), spell(kStudentVocab, kStudentText));
  const auto t2s = map_vocab_by_bytes(kTeacherVocab, kStudentVocab);
  std::mt19937_64 rng(9);
  Mat tz = random_logits(rng, kTeacherText.size(), kTeacherVocab.size(), 1.0);
  for (size_t j = 0; j < tz.size(); ++j) tz[j][size_t(kTeacherText[j])] += 40.0;
  auto teacher = make_teacher(tz, kTeacherText, kTopK);
  for (auto& r : teacher) r.tail = 0.0;
  Mat zs = random_logits(rng, kStudentText.size(), kStudentVocab.size(), 1.0);
  for (size_t j = 0; j < zs.size(); ++j) zs[j][(j * 5) % kStudentVocab.size()] += 30.0;
  for (const auto& c : sweep()) {
    auto z = to_tensor(zs, torch::kFloat32).requires_grad_(true);
    auto rows = xtok_loss_spans(z, ids_tensor(kStudentText), to_signal(teacher, t2s), spans, xconfig(c));
    EXPECT_TRUE(torch::isfinite(rows).all().item<bool>()) << describe(c);
    rows.sum().backward();
    EXPECT_TRUE(torch::isfinite(z.grad()).all().item<bool>()) << describe(c);
  }
}

// ---------------------------------------------------------------------------------------------
// Bad input

TEST(XTokLoss, BadInputIsAnError) {
  const auto spans = align_token_spans(spell(kTeacherVocab, kTeacherText), spell(kStudentVocab, kStudentText));
  std::mt19937_64 rng(3);
  const auto teacher = make_teacher(random_logits(rng, kTeacherText.size(), kTeacherVocab.size(), 1.0), kTeacherText,
                                    kTopK);
  const auto signal = to_signal(teacher, map_vocab_by_bytes(kTeacherVocab, kStudentVocab));
  const auto z = torch::randn({int64_t(kStudentText.size()), int64_t(kStudentVocab.size())});
  const auto ids = ids_tensor(kStudentText);
  XTokConfig c;
  expect_error([&] { xtok_loss_spans(z, ids, signal, {TokenSpan{0, 7, 0, 1}}, c); }, "span 0");
  expect_error([&] { xtok_loss_spans(z, ids, signal, {TokenSpan{0, 1, 2, 2}}, c); }, "is empty or outside");
  expect_error([&] { xtok_loss_spans(z, ids_tensor({1, 2, 99, 4, 13, 10}), signal, spans, c); }, "outside the vocabulary");
  c.hybrid = true;
  expect_error([&] { xtok_loss_spans(z, ids, signal, spans, c); }, "matched_weight");
  c.matched_weight = 0.7, c.unmatched_weight = 0.3;
  auto no_map = signal;
  no_map.topk_student_ids = torch::Tensor();
  expect_error([&] { xtok_loss_spans(z, ids, no_map, spans, c); }, "topk_student_ids");
  // Top-k student ids from another vocabulary (out of the student's range).
  auto foreign = signal;
  foreign.topk_student_ids = signal.topk_student_ids.clone();
  foreign.topk_student_ids[0][0] = 50;
  expect_error([&] { xtok_loss_spans(z, ids, foreign, spans, c); }, "map_vocab_by_bytes");
  c.student_temperature = 0;
  expect_error([&] { xtok_loss_spans(z, ids, signal, spans, c); }, "student_temperature");
  expect_error([&] { uld_loss_rows(z.narrow(0, 0, 3), signal, XTokConfig{}); }, "truncate both");
  // No spans: an empty result that still backpropagates.
  auto zg = z.clone().requires_grad_(true);
  auto empty = xtok_loss_spans(zg, ids, signal, {}, XTokConfig{});
  EXPECT_EQ(empty.numel(), 0);
  empty.sum().backward();
  EXPECT_TRUE(zg.grad().defined());
}

// ---------------------------------------------------------------------------------------------
// Through a student's output head (the trainer's path)

// xtok_loss_backward runs the head one sequence at a time on detached rows and hands the hidden-state
// gradient back in one backward; plain autograd over the whole batch is the reference: the same loss sums and
// the same gradient on every parameter. Two sequences (the second cut, so one span falls outside its rows),
// CE and span terms with different scales, uld and the hybrid.
TEST(XTokLoss, HeadBackwardEqualsPlainAutograd) {
  ModelHParams hp;
  hp.arch = "llama";
  hp.n_vocab = int64_t(kStudentVocab.size()), hp.n_embd = 16, hp.n_layer = 1, hp.n_head = 2, hp.n_head_kv = 1;
  hp.head_dim = 8, hp.n_ff = 24, hp.max_position = 32, hp.rope_theta = 10000.0, hp.rms_eps = 1e-5;
  hp.tie_embeddings = true;
  CausalLM student = make_random_student(hp, 3);
  std::mt19937_64 rng(5);
  const auto teacher = to_signal(make_teacher(random_logits(rng, kTeacherText.size(), kTeacherVocab.size(), 2.0),
                                              kTeacherText, 4),
                                 map_vocab_by_bytes(kTeacherVocab, kStudentVocab));
  const auto spans = align_token_spans(spell(kTeacherVocab, kTeacherText), spell(kStudentVocab, kStudentText));
  // Batch [2, 8]: prompt {5, 0} then the student text; the second row is cut after 4 completion tokens.
  std::vector<int64_t> row = {5, 0};
  row.insert(row.end(), kStudentText.begin(), kStudentText.end());
  auto tokens = torch::tensor(row, torch::kInt64).view({1, 8}).repeat({2, 1});
  std::vector<int64_t> rows, targets;
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t j = 2; j < (b == 0 ? 8 : 6); ++j) rows.push_back(b * 8 + j - 1), targets.push_back(row[size_t(j)]);
  const auto rows_t = torch::tensor(rows, torch::kInt64), targets_t = torch::tensor(targets, torch::kInt64);
  std::vector<TokenSpan> cut;
  for (const auto& sp : spans)
    if (sp.s1 <= 4) cut.push_back(sp);
  ASSERT_LT(cut.size(), spans.size());
  const std::vector<XTokSequenceRows> seqs = {{0, 6, &teacher, spans}, {6, 4, &teacher, cut}};
  const double ce_scale = 0.3, span_scale = 0.7;

  for (bool hybrid : {false, true}) {
    XTokConfig c;
    c.hybrid = hybrid;
    c.merge = hybrid ? SpanMerge::Last : SpanMerge::First;
    if (hybrid) c.matched_weight = 0.6, c.unmatched_weight = 0.4;
    auto grads = [&]() {
      std::vector<torch::Tensor> g;
      for (auto& p : student->parameters()) {
        g.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
        if (p.grad().defined()) p.mutable_grad().zero_();
      }
      return g;
    };
    for (auto& p : student->parameters()) p.requires_grad_(true);
    auto hidden = student->forward_hidden(tokens).reshape({-1, hp.n_embd}).index_select(0, rows_t);
    const auto r = xtok_loss_backward(*student.ptr(), hidden, targets_t, seqs, c, ce_scale, span_scale);
    const auto got = grads();

    hidden = student->forward_hidden(tokens).reshape({-1, hp.n_embd}).index_select(0, rows_t);
    auto logits = student->lm_logits(hidden);
    auto ce = torch::nn::functional::cross_entropy(
        logits, targets_t, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
    auto span_sum = xtok_loss_spans(logits.narrow(0, 0, 6), targets_t.narrow(0, 0, 6), teacher, spans, c).sum() +
                    xtok_loss_spans(logits.narrow(0, 6, 4), targets_t.narrow(0, 6, 4), teacher, cut, c).sum();
    (ce * ce_scale + span_sum * span_scale).backward();
    const auto want = grads();

    EXPECT_NEAR(r.ce_sum, ce.item<double>(), 1e-5 * std::abs(ce.item<double>()));
    EXPECT_NEAR(r.span_sum, span_sum.item<double>(), 1e-5 * std::abs(span_sum.item<double>()) + 1e-7);
    EXPECT_EQ(r.rows, 10);
    EXPECT_EQ(r.spans, int64_t(spans.size() + cut.size()));
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      const double scale = want[i].abs().max().item<double>();
      EXPECT_LE((got[i] - want[i]).abs().max().item<double>(), 1e-5 * scale + 1e-8)
          << "parameter " << i << (hybrid ? " (hybrid)" : " (uld)");
    }
    EXPECT_GT(got[0].abs().sum().item<double>(), 0.0);  // something was learned
  }
}
