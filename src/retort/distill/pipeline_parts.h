// retort/distill/pipeline_parts.h — pieces the local main job (pipeline.cpp) and the main job from a teacher
// behind an API (api_pipeline.cpp) share. Internal to src/retort/distill.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "retort/model/causal_lm.h"

namespace retort {

struct TrainerConfig;

double seconds_since(std::chrono::steady_clock::time_point t);

// A run or store made with other settings (say, by an older config) can be neither resumed nor silently
// reused: it is moved aside, never deleted — DIR -> DIR.previous-<n> (the first free n) — with a line on stderr
// saying why; returns the new name.
std::string move_aside(const std::string& dir, const std::string& label, const std::string& why, const char* then);
// OUT/train-<loss> whose latest checkpoint was trained with another config (hash) is moved aside. A damaged
// checkpoint is left for the trainer to explain.
void set_aside_run_of_other_settings(const std::string& dir, const TrainerConfig& cfg, const std::string& label);

// A float32 copy of a model (each loss trains its own copy of the same start).
CausalLM clone_model(CausalLMImpl& src);

std::string params_str(int64_t n);           // "99.1M"
std::string loss_title(const std::string&);  // "SFT-only (ce)" | "KD (<loss>)"

}  // namespace retort
