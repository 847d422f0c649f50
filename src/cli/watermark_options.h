// src/cli/watermark_options.h — watermark flags shared by `retort generate` (embed) and
// `retort watermark detect` (score).
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <memory>
#include <string>

#include "retort/audit/watermark_detect.h"
#include "retort/decode/logits_processor.h"
#include "retort/protect/keys.h"
#include "retort/protect/synthid.h"

namespace retort::cli {

struct WatermarkCliOptions {
  std::string scheme;                // "" = no watermark | kgw | gumbel | synthid
  std::string key_file;              // "" = $RETORT_WATERMARK_KEY
  std::string account;               // "" = the master key itself; else derive_account_key(master, account)
  double gamma = 0.25;               // kgw
  double delta = 2.0;                // kgw
  std::string context = "selfhash";  // kgw: selfhash | lefthash
  int h = 0;                         // context width; 0 = scheme default (kgw selfhash 4, lefthash 1; gumbel 4)
  // synthid: keys from --*synthid-keys (comma list), else a transformers-format JSON config
  // (--*synthid-config), else derived from the retort key (derive_synthid_keys, layers/ngram_len below).
  std::string synthid_keys;
  std::string synthid_config;
  int synthid_layers = 30;
  int synthid_ngram_len = 5;
  uint64_t synthid_seed = 0;  // embed only: seeds the tournament draws (protect/synthid.h)
};

// generate: --watermark, --watermark-key-file, --watermark-account, --watermark-gamma,
// --watermark-delta, --watermark-context, --watermark-h.
void add_watermark_options(CLI::App& sub, WatermarkCliOptions& o);
// detect: --scheme, --key-file, --gamma, --context, --h (no delta: it does not affect scoring).
void add_watermark_detect_options(CLI::App& sub, WatermarkCliOptions& o);

// The key the options name (file or env; per-account when --*-account is given).
WatermarkKey watermark_key(const WatermarkCliOptions& o);
// synthid: the config the options name (keys list, JSON file, or derived from the key).
SynthIdConfig synthid_cli_config(const WatermarkCliOptions& o);
// Scheme parameters as the detector takes them (checked).
DetectorConfig watermark_detector_config(const WatermarkCliOptions& o);

// null when o.scheme is empty; else a processor shared by every request of a generate()
// call (the schemes keep no per-sequence state). Throws retort::Error for a missing key or
// bad parameters.
std::shared_ptr<LogitsProcessor> make_watermark_processor(const WatermarkCliOptions& o, int64_t n_vocab);

}  // namespace retort::cli
