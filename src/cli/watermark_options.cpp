// Watermark flags and the processor factory; see watermark_options.h.
#include "cli/watermark_options.h"

#include "retort/protect/gumbel.h"
#include "retort/protect/kgw.h"
#include "retort/util/error.h"

namespace retort::cli {

namespace {
void add_params(CLI::App& sub, WatermarkCliOptions& o, const std::string& prefix, bool with_delta) {
  sub.add_option(prefix + "gamma", o.gamma, "kgw: green fraction γ")->capture_default_str();
  if (with_delta) sub.add_option(prefix + "delta", o.delta, "kgw: bias δ added to green logits")->capture_default_str();
  sub.add_option(prefix + "context", o.context, "kgw: context scheme, selfhash (min-hash, h=4) or lefthash (h=1)")
      ->check(CLI::IsMember({"selfhash", "lefthash"}))
      ->capture_default_str();
  sub.add_option(prefix + "h", o.h, "context width h (0 = the scheme's default)")->capture_default_str();
  sub.add_option(prefix + "synthid-keys", o.synthid_keys,
                 "synthid: comma-separated integer keys, one per layer (as transformers' keys list)");
  sub.add_option(prefix + "synthid-config", o.synthid_config,
                 "synthid: JSON file in transformers' SynthIDTextWatermarkingConfig format");
  sub.add_option(prefix + "synthid-layers", o.synthid_layers, "synthid: layers m when keys come from the retort key")
      ->capture_default_str();
  sub.add_option(prefix + "synthid-ngram-len", o.synthid_ngram_len, "synthid: ngram_len unless a config file gives it")
      ->capture_default_str();
}
}  // namespace

void add_watermark_options(CLI::App& sub, WatermarkCliOptions& o) {
  sub.add_option("--watermark", o.scheme, "watermark the output: kgw, gumbel or synthid")
      ->check(CLI::IsMember({"kgw", "gumbel", "synthid"}));
  sub.add_option("--watermark-key-file", o.key_file,
                 std::string("watermark key file (64 hex digits); default: $") + kWatermarkKeyEnv);
  sub.add_option("--watermark-account", o.account, "use the per-account key derived from the master key for this id");
  add_params(sub, o, "--watermark-", /*with_delta=*/true);
}

void add_watermark_detect_options(CLI::App& sub, WatermarkCliOptions& o) {
  o.scheme = "kgw";
  sub.add_option("--scheme", o.scheme, "watermark scheme: kgw, gumbel or synthid")
      ->check(CLI::IsMember({"kgw", "gumbel", "synthid"}))
      ->capture_default_str();
  sub.add_option("--key-file", o.key_file,
                 std::string("watermark key file (64 hex digits); default: $") + kWatermarkKeyEnv);
  add_params(sub, o, "--", /*with_delta=*/false);
}

WatermarkKey watermark_key(const WatermarkCliOptions& o) {
  WatermarkKey k = load_key(o.key_file);
  return o.account.empty() ? k : derive_account_key(k, o.account);
}

SynthIdConfig synthid_cli_config(const WatermarkCliOptions& o) {
  check(o.synthid_keys.empty() || o.synthid_config.empty(),
        "synthid: give keys either as --synthid-keys or in --synthid-config, not both");
  SynthIdConfig c;
  if (!o.synthid_config.empty()) return load_synthid_config(o.synthid_config);
  c.ngram_len = o.synthid_ngram_len;
  c.keys = o.synthid_keys.empty() ? derive_synthid_keys(watermark_key(o), o.synthid_layers)
                                  : parse_synthid_keys(o.synthid_keys);
  check_synthid_config(c);
  return c;
}

DetectorConfig watermark_detector_config(const WatermarkCliOptions& o) {
  DetectorConfig c;
  c.scheme = o.scheme;
  c.kgw.gamma = o.gamma;
  c.kgw.delta = o.delta;
  c.kgw.context = o.context;
  c.kgw.h = o.h;
  if (o.h > 0) c.gumbel.h = o.h;
  check_detector_config(c);
  return c;
}

std::shared_ptr<LogitsProcessor> make_watermark_processor(const WatermarkCliOptions& o, int64_t n_vocab) {
  if (o.scheme.empty()) return nullptr;
  check(n_vocab > 0, "watermark: the model has no vocabulary");
  if (o.scheme == "kgw") {
    DetectorConfig c = watermark_detector_config(o);
    return std::make_shared<KgwProcessor>(watermark_key(o), c.kgw);
  }
  if (o.scheme == "gumbel") {
    DetectorConfig c = watermark_detector_config(o);
    return std::make_shared<GumbelProcessor>(watermark_key(o), c.gumbel);
  }
  if (o.scheme == "synthid") {
    auto scheme = std::make_shared<SynthIdScheme>(synthid_cli_config(o));
    // Shared by every request: the stateless context mode (prompt_len = -1), see synthid.h.
    return std::make_shared<SynthIdProcessor>(scheme, o.synthid_seed, /*prompt_len=*/-1);
  }
  fail("--watermark ", o.scheme, ": unknown scheme; use kgw, gumbel or synthid");
}

}  // namespace retort::cli
