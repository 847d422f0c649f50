// retort/io/hf_checkpoint.h — a Hugging Face checkpoint directory, read without torch.
//
//   config.json                    required
//   model.safetensors              one file, or
//   model.safetensors.index.json   {"weight_map": {tensor: shard file}} + the shards
//   tokenizer.json, tokenizer_config.json, generation_config.json   optional
//
// Opening checks everything up front (every JSON parses, every shard exists and holds
// the tensors the index names) so later reads cannot fail on bad input. PyTorch pickle
// weights (*.bin) are refused with a message on how to convert them.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "retort/io/safetensors.h"

namespace retort {

class HfCheckpoint {
 public:
  static HfCheckpoint open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const nlohmann::json& config() const { return config_; }  // config.json, always an object
  const nlohmann::json* tokenizer_config() const;           // nullptr if absent
  const nlohmann::json* generation_config() const;          // nullptr if absent
  std::string tokenizer_json_path() const;                  // "" if absent; checked to be JSON

  std::vector<std::string> tensor_names() const;  // sorted
  const SafetensorsTensorInfo* find_tensor(std::string_view name) const;  // nullptr if absent
  const SafetensorsFile& file_of(std::string_view name) const;            // throws if absent
  const std::vector<SafetensorsFile>& files() const { return files_; }    // in file name order
  // Throws naming dir, tensor (and file / dtype) when absent or not a float dtype.
  void read_f32(std::string_view name, float* dst) const;
  std::vector<float> read_f32(std::string_view name) const;

 private:
  std::string dir_;
  nlohmann::json config_;
  std::optional<nlohmann::json> tokenizer_config_;
  std::optional<nlohmann::json> generation_config_;
  std::string tokenizer_json_path_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t, std::less<>> tensor_file_;  // tensor name -> index into files_
};

}  // namespace retort
