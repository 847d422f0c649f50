#include "retort/io/hf_checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <set>

#include "retort/util/error.h"
#include "retort/util/file.h"

namespace retort {

namespace fs = std::filesystem;

namespace {

bool is_file(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

nlohmann::json parse_json_file(const std::string& path) {
  std::string text = read_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": malformed JSON (", e.what(), ")");
  }
}

// Regular files in `dir` whose names end with one of `suffixes`, sorted.
std::vector<std::string> files_with_suffix(const std::string& dir,
                                           std::initializer_list<std::string_view> suffixes) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::string name = entry.path().filename().string();
    std::error_code ec2;
    if (!entry.is_regular_file(ec2)) continue;
    for (auto s : suffixes) {
      if (ends_with(name, s)) {
        out.push_back(name);
        break;
      }
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string join_names(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

}  // namespace

HfCheckpoint HfCheckpoint::open(const std::string& dir_arg) {
  HfCheckpoint ck;
  std::string dir = dir_arg;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  ck.dir_ = dir;
  {
    std::error_code ec;
    check(fs::is_directory(dir, ec), "checkpoint ", dir,
          ": not a directory (expected a Hugging Face checkpoint dir with config.json and "
          "*.safetensors)");
  }
  auto at = [&](std::string_view name) { return dir + "/" + std::string(name); };

  const std::string config_path = at("config.json");
  check(is_file(config_path), "checkpoint ", dir,
        ": config.json is missing; a Hugging Face checkpoint dir needs config.json next to "
        "its *.safetensors");
  ck.config_ = parse_json_file(config_path);
  check(ck.config_.is_object(), config_path, ": must be a JSON object, got ",
        ck.config_.type_name());

  if (is_file(at("tokenizer_config.json"))) {
    ck.tokenizer_config_ = parse_json_file(at("tokenizer_config.json"));
    check(ck.tokenizer_config_->is_object(), at("tokenizer_config.json"),
          ": must be a JSON object, got ", ck.tokenizer_config_->type_name());
  }
  if (is_file(at("generation_config.json"))) {
    ck.generation_config_ = parse_json_file(at("generation_config.json"));
    check(ck.generation_config_->is_object(), at("generation_config.json"),
          ": must be a JSON object, got ", ck.generation_config_->type_name());
  }
  if (is_file(at("tokenizer.json"))) {
    // Only validated here (the tokenizer module parses it); accept() builds no DOM.
    std::string text = read_file(at("tokenizer.json"));
    if (!nlohmann::json::accept(text)) {
      try {
        nlohmann::json unused = nlohmann::json::parse(text);
      } catch (const nlohmann::json::exception& e) {
        fail(at("tokenizer.json"), ": malformed JSON (", e.what(), ")");
      }
    }
    ck.tokenizer_json_path_ = at("tokenizer.json");
  }

  const std::string index_path = at("model.safetensors.index.json");
  if (is_file(index_path)) {
    nlohmann::json index = parse_json_file(index_path);
    check(index.is_object(), index_path, ": must be a JSON object, got ", index.type_name());
    auto wm = index.find("weight_map");
    check(wm != index.end(), index_path, ": missing \"weight_map\"");
    check(wm->is_object(), index_path, ": \"weight_map\" must be an object {tensor: shard file}, got ",
          wm->type_name());
    // shard file -> tensors the index puts there
    std::map<std::string, std::vector<std::string>> shards;
    for (const auto& [tensor, shard] : wm->items()) {
      check(shard.is_string(), index_path, ": weight_map entry for tensor \"", tensor,
            "\" must be a file name string, got ", shard.type_name());
      std::string s = shard.get<std::string>();
      check(!s.empty() && s.front() != '/' && s.find("..") == std::string::npos, index_path,
            ": weight_map entry for tensor \"", tensor, "\" names \"", s,
            "\", which is not a file inside the checkpoint dir");
      shards[s].push_back(tensor);
    }
    check(!shards.empty(), index_path, ": \"weight_map\" is empty");
    for (const auto& [shard, tensors] : shards) {
      check(is_file(at(shard)), index_path, ": weight_map puts tensor \"", tensors.front(),
            "\" in shard ", shard, ", but ", at(shard),
            " does not exist (incomplete download? fetch every shard the index names)");
    }
    for (const auto& [shard, tensors] : shards) {
      ck.files_.push_back(SafetensorsFile::open(at(shard)));
      for (const auto& t : tensors) {
        check(ck.files_.back().find(t) != nullptr, index_path, ": weight_map puts tensor \"", t,
              "\" in ", shard, ", but ", at(shard), " has no tensor of that name");
      }
    }
  } else if (is_file(at("model.safetensors"))) {
    ck.files_.push_back(SafetensorsFile::open(at("model.safetensors")));
  } else {
    std::vector<std::string> st = files_with_suffix(dir, {".safetensors"});
    if (st.empty()) {
      std::vector<std::string> pickles = files_with_suffix(dir, {".bin", ".pt", ".pth", ".ckpt"});
      std::vector<std::string> ggufs = files_with_suffix(dir, {".gguf"});
      if (!pickles.empty()) {
        fail("checkpoint ", dir, ": no *.safetensors weights, only PyTorch pickle files (",
             join_names(pickles),
             "). retort does not read pickles (loading one can run arbitrary code). Convert "
             "the dir with Python: from transformers import AutoModelForCausalLM; "
             "AutoModelForCausalLM.from_pretrained('",
             dir, "').save_pretrained('OUT_DIR') (transformers writes safetensors by default), then copy the "
                  "tokenizer files into OUT_DIR");
      }
      if (!ggufs.empty()) {
        fail("checkpoint ", dir, ": no *.safetensors weights; it holds GGUF file(s) (",
             join_names(ggufs), "): pass the .gguf file itself instead of the directory");
      }
      fail("checkpoint ", dir,
           ": no model weights found (expected model.safetensors, or "
           "model.safetensors.index.json with its shards)");
    }
    // No index and no model.safetensors: take every *.safetensors in the dir.
    for (const auto& name : st) ck.files_.push_back(SafetensorsFile::open(at(name)));
  }

  for (size_t i = 0; i < ck.files_.size(); i++) {
    for (const auto& t : ck.files_[i].tensors()) {
      auto [it, inserted] = ck.tensor_file_.emplace(t.name, i);
      check(inserted, "checkpoint ", dir, ": tensor \"", t.name, "\" is in both ",
            ck.files_[it->second].path(), " and ", ck.files_[i].path(),
            "; the checkpoint mixes two saves");
    }
  }
  return ck;
}

const nlohmann::json* HfCheckpoint::tokenizer_config() const {
  return tokenizer_config_ ? &*tokenizer_config_ : nullptr;
}

const nlohmann::json* HfCheckpoint::generation_config() const {
  return generation_config_ ? &*generation_config_ : nullptr;
}

std::string HfCheckpoint::tokenizer_json_path() const { return tokenizer_json_path_; }

std::vector<std::string> HfCheckpoint::tensor_names() const {
  std::vector<std::string> out;
  out.reserve(tensor_file_.size());
  for (const auto& [name, i] : tensor_file_) out.push_back(name);
  return out;
}

const SafetensorsTensorInfo* HfCheckpoint::find_tensor(std::string_view name) const {
  auto it = tensor_file_.find(name);
  return it == tensor_file_.end() ? nullptr : files_[it->second].find(name);
}

const SafetensorsFile& HfCheckpoint::file_of(std::string_view name) const {
  auto it = tensor_file_.find(name);
  check(it != tensor_file_.end(), "checkpoint ", dir_, ": no tensor \"", name, "\" in any of its ",
        files_.size(), " safetensors file(s)");
  return files_[it->second];
}

void HfCheckpoint::read_f32(std::string_view name, float* dst) const {
  const SafetensorsFile& f = file_of(name);
  f.read_f32(*f.find(name), dst);
}

std::vector<float> HfCheckpoint::read_f32(std::string_view name) const {
  const SafetensorsFile& f = file_of(name);
  return f.read_f32(*f.find(name));
}

}  // namespace retort
