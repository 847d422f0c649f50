// bench/bench_watermark.cpp — watermark detection speed on pre-tokenized input, printed as one JSON object.
//
//   build/bench_watermark [--tokens 2000000] [--vocab 49152] [--reps 3] [--text FILE] [--model M]
//
// For KGW selfhash (h = 4), KGW lefthash (h = 1) and Gumbel (h = 4): scored tokens/s of detect_tokens()
// on one sequence of uniform random token ids, single thread, with and without dedup (best of --reps),
// and on the same ids cut into 512-token documents scored one by one (docs512_dedup_...).
// Tokenization, reported separately: with --text FILE (e.g. a concatenation of /usr/share/doc
// files), the model's tokenizer (default model) encodes it once cold (empty word cache) and
// then warm (best of --reps): MB/s and tokens/s, one thread.
// Sanity: on random text green_fraction ≈ γ (KGW) and mean score ≈ 1 (Gumbel: −ln(1 − r), r ~ U(0,1)).
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "retort/audit/watermark_detect.h"
#include "retort/io/gguf.h"
#include "retort/model/loader.h"
#include "retort/text/tokenizer.h"
#include "retort/util/file.h"

using namespace retort;
using clk = std::chrono::steady_clock;

int main(int argc, char** argv) {
  int64_t n_tokens = 2000000, vocab = 49152;
  int reps = 3;
  std::string text_path, model = "smollm2-135m-instruct";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--text") text_path = v;
    else if (k == "--model") model = v;
    else if (k == "--tokens") n_tokens = std::stoll(v);
    else if (k == "--vocab") vocab = std::stoll(v);
    else if (k == "--reps") reps = std::stoi(v);
    else { std::fprintf(stderr, "unknown option %s\n", k.c_str()); return 2; }
  }
  torch::set_num_threads(1);

  std::mt19937_64 rng(1234);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> tokens(n_tokens);
  for (auto& t : tokens) t = dist(rng);
  WatermarkKey key;
  for (size_t i = 0; i < key.bytes.size(); ++i) key.bytes[i] = static_cast<uint8_t>(17 * i + 3);

  struct Case {
    std::string name;
    DetectorConfig c;
  };
  std::vector<Case> cases;
  {
    DetectorConfig c;
    c.scheme = "kgw";
    c.kgw.context = "selfhash";
    c.kgw.h = 4;
    cases.push_back({"kgw_selfhash_h4", c});
    c.kgw.context = "lefthash";
    c.kgw.h = 1;
    cases.push_back({"kgw_lefthash_h1", c});
    DetectorConfig g;
    g.scheme = "gumbel";
    cases.push_back({"gumbel_h" + std::to_string(g.gumbel.h), g});
  }

  nlohmann::json out;
  out["tokens"] = n_tokens;
  out["vocab"] = vocab;
  out["threads"] = 1;
  out["reps"] = reps;
  for (auto& cs : cases) {
    nlohmann::json j;
    for (bool dedup : {true, false}) {
      cs.c.dedup = dedup;
      double best = 1e300;
      DetectionResult r;
      for (int rep = 0; rep < reps; ++rep) {
        auto t0 = clk::now();
        r = detect_tokens(key, cs.c, tokens);
        best = std::min(best, std::chrono::duration<double>(clk::now() - t0).count());
      }
      const std::string tag = dedup ? "dedup" : "no_dedup";
      j[tag + "_scored_tokens_per_s"] = double(r.tokens_scored) / best;
      j[tag + "_seconds"] = best;
      j[tag + "_tokens_scored"] = r.tokens_scored;
      if (cs.c.scheme == "kgw") {
        j[tag + "_green_fraction"] = r.score / double(r.tokens_scored);
        j["gamma"] = cs.c.kgw.gamma;
      } else {
        j[tag + "_mean_score"] = r.score / double(r.tokens_scored);
      }
      j[tag + "_z"] = r.z;
    }
    // Documents of 512 tokens, each its own test (own dedup), as `watermark detect --jsonl`
    // scores a corpus: one scorer, reset() between documents.
    cs.c.dedup = true;
    double best = 1e300;
    int64_t scored = 0;
    WatermarkScorer scorer(key, cs.c);
    for (int rep = 0; rep < reps; ++rep) {
      scored = 0;
      auto t0 = clk::now();
      for (size_t off = 0; off < tokens.size(); off += 512) {
        const size_t len = std::min<size_t>(512, tokens.size() - off);
        scorer.reset();
        scorer.add_tokens(std::span<const int32_t>(tokens.data() + off, len));
        scored += scorer.result().tokens_scored;
      }
      best = std::min(best, std::chrono::duration<double>(clk::now() - t0).count());
    }
    j["docs512_dedup_scored_tokens_per_s"] = double(scored) / best;
    out[cs.name] = j;
  }
  if (!text_path.empty()) {
    const std::string text = read_file(text_path);
    const Tokenizer tok = Tokenizer::from_gguf(GgufFile::open(resolve_model_path(model)));
    auto t0 = clk::now();
    const size_t n = tok.encode(text, /*parse_special=*/false).size();
    const double cold = std::chrono::duration<double>(clk::now() - t0).count();
    double warm = 1e300;
    for (int rep = 0; rep < reps; ++rep) {
      t0 = clk::now();
      tok.encode(text, false);
      warm = std::min(warm, std::chrono::duration<double>(clk::now() - t0).count());
    }
    out["tokenize"] = {{"file", text_path},       {"bytes", text.size()},         {"tokens", n},
                       {"cold_MB_s", text.size() / cold / 1e6}, {"cold_tokens_per_s", n / cold},
                       {"warm_MB_s", text.size() / warm / 1e6}, {"warm_tokens_per_s", n / warm}};
  }
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}
