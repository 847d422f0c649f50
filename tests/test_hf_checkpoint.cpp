// Tests for retort/io/hf_checkpoint: the tiny checkpoints saved by transformers'
// save_pretrained (tests/data/hf/make_tiny_checkpoints.py) against the manifest the
// script wrote with the Python safetensors package, then broken copies of them.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include "retort/io/hf_checkpoint.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

namespace fs = std::filesystem;
using namespace retort;

namespace {

const std::string kHf = std::string(RETORT_TEST_DATA) + "/hf";

const nlohmann::json& manifest() {
  static const nlohmann::json m = nlohmann::json::parse(read_file(kHf + "/manifest.json"));
  return m;
}

// A scratch copy of a checkpoint dir, removed afterwards.
struct TempCopy {
  fs::path path;
  explicit TempCopy(const std::string& model) {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path = fs::temp_directory_path() /
           cat("retort_hf_", ::getpid(), "_", info->name(), "_", model);
    fs::remove_all(path);
    fs::copy(kHf + "/" + model, path, fs::copy_options::recursive);
  }
  ~TempCopy() { fs::remove_all(path); }
  std::string str() const { return path.string(); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
  void write(const std::string& name, const std::string& text) const { write_file_atomic(*this / name, text); }
};

void expect_error(const std::function<void()>& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "missing \"" << p << "\" in: " << msg;
    return;
  }
  ADD_FAILURE() << "no retort::Error thrown (expected one mentioning \"" << *parts.begin() << "\")";
}

}  // namespace

TEST(HfCheckpoint, OpensTinyModelsLikePython) {
  for (const auto& [model, info] : manifest().items()) {
    SCOPED_TRACE(model);
    const std::string dir = kHf + "/" + model;
    HfCheckpoint ck = HfCheckpoint::open(dir + "/");  // a trailing slash is fine
    EXPECT_EQ(ck.dir(), dir);
    EXPECT_EQ(ck.config()["hidden_size"], 64);
    EXPECT_EQ(ck.config()["vocab_size"], 256);
    ASSERT_NE(ck.tokenizer_config(), nullptr);
    EXPECT_EQ((*ck.tokenizer_config())["tokenizer_class"], "PreTrainedTokenizerFast");
    EXPECT_NE(ck.generation_config(), nullptr);
    EXPECT_EQ(ck.tokenizer_json_path(), dir + "/tokenizer.json");
    EXPECT_EQ(ck.files().size(), info["files"].size());

    std::vector<std::string> want;
    for (const auto& [name, t] : info["tensors"].items()) want.push_back(name);  // sorted (std::map)
    EXPECT_EQ(ck.tensor_names(), want);
    for (const auto& name : want) {
      const auto& t = info["tensors"][name];
      const SafetensorsTensorInfo* ti = ck.find_tensor(name);
      ASSERT_NE(ti, nullptr) << name;
      EXPECT_EQ(dtype_name(ti->dtype), t["dtype"].get<std::string>()) << name;
      EXPECT_EQ(ti->shape, t["shape"].get<std::vector<int64_t>>()) << name;
      EXPECT_EQ(ck.file_of(name).path(), dir + "/" + t["file"].get<std::string>()) << name;
      std::vector<float> v(static_cast<size_t>(ti->n_elements()));
      ck.read_f32(name, v.data());
      const auto first8 = t["first8"].get<std::vector<double>>();
      for (size_t i = 0; i < first8.size(); i++)
        EXPECT_EQ(v[i], static_cast<float>(first8[i])) << name << "[" << i << "]";
      double sum = 0, abs_sum = 0;
      for (float x : v) {
        sum += x;
        abs_sum += std::fabs(x);
      }
      EXPECT_NEAR(sum, t["sum"].get<double>(), 1e-12 * abs_sum + 1e-12) << name;
    }
  }
}

TEST(HfCheckpoint, ModelSpecifics) {
  HfCheckpoint llama = HfCheckpoint::open(kHf + "/tiny-llama");
  EXPECT_EQ(llama.config()["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(llama.find_tensor("lm_head.weight")->dtype, DType::F32);
  EXPECT_EQ(llama.find_tensor("model.layers.1.self_attn.k_proj.weight")->shape,
            (std::vector<int64_t>{32, 64}));  // 2 KV heads x head_dim 16

  HfCheckpoint qwen = HfCheckpoint::open(kHf + "/tiny-qwen2");
  EXPECT_EQ(qwen.find_tensor("lm_head.weight"), nullptr);  // tied to embed_tokens
  EXPECT_EQ(qwen.find_tensor("model.layers.0.self_attn.q_proj.bias")->shape, (std::vector<int64_t>{64}));
  EXPECT_EQ(qwen.find_tensor("model.embed_tokens.weight")->dtype, DType::BF16);
  expect_error([&] { qwen.read_f32("lm_head.weight", nullptr); },
               {"tiny-qwen2", "no tensor \"lm_head.weight\""});
  expect_error([&] { qwen.file_of("nope"); }, {"tiny-qwen2", "\"nope\""});

  HfCheckpoint mistral = HfCheckpoint::open(kHf + "/tiny-mistral");
  EXPECT_GE(mistral.files().size(), 2u);
  EXPECT_EQ(mistral.find_tensor("model.norm.weight")->dtype, DType::F16);
}

TEST(HfCheckpoint, OptionalFilesMayBeAbsent) {
  TempCopy d("tiny-llama");
  fs::remove(d / "tokenizer.json");
  fs::remove(d / "tokenizer_config.json");
  fs::remove(d / "generation_config.json");
  HfCheckpoint ck = HfCheckpoint::open(d.str());
  EXPECT_EQ(ck.tokenizer_config(), nullptr);
  EXPECT_EQ(ck.generation_config(), nullptr);
  EXPECT_EQ(ck.tokenizer_json_path(), "");
  EXPECT_EQ(ck.tensor_names().size(), 21u);
}

TEST(HfCheckpoint, ShardsWithoutIndexAreAllLoaded) {
  TempCopy d("tiny-mistral");
  fs::remove(d / "model.safetensors.index.json");
  EXPECT_EQ(HfCheckpoint::open(d.str()).tensor_names().size(), 21u);
}

TEST(HfCheckpoint, RejectsBrokenDirs) {
  {
    expect_error([&] { HfCheckpoint::open(kHf + "/does-not-exist"); }, {"does-not-exist", "not a directory"});
    expect_error([&] { HfCheckpoint::open(kHf + "/manifest.json"); }, {"manifest.json", "not a directory"});
  }
  {
    TempCopy d("tiny-llama");
    fs::remove(d / "config.json");
    expect_error([&] { HfCheckpoint::open(d.str()); }, {d.str(), "config.json is missing"});
  }
  {
    TempCopy d("tiny-llama");
    d.write("config.json", "{\n  \"hidden_size\": 64,\n  \"vocab_size\": ,\n}\n");
    expect_error([&] { HfCheckpoint::open(d.str()); },
                 {d / "config.json", "malformed JSON", "line 3, column"});
    d.write("config.json", "[64]");
    expect_error([&] { HfCheckpoint::open(d.str()); }, {d / "config.json", "must be a JSON object"});
  }
  {
    TempCopy d("tiny-llama");
    d.write("generation_config.json", "{");
    expect_error([&] { HfCheckpoint::open(d.str()); }, {d / "generation_config.json", "malformed JSON"});
  }
  {
    TempCopy d("tiny-llama");
    d.write("tokenizer.json", "{\"model\": {\"vocab\": {\"a\": 1,}}}");
    expect_error([&] { HfCheckpoint::open(d.str()); }, {d / "tokenizer.json", "malformed JSON", "column"});
  }
  {
    // A shard the index names is missing.
    TempCopy d("tiny-mistral");
    fs::remove(d / "model-00002-of-00003.safetensors");
    expect_error([&] { HfCheckpoint::open(d.str()); },
                 {d / "model.safetensors.index.json", "model-00002-of-00003.safetensors", "does not exist"});
  }
  {
    // The index names a tensor the shard lacks.
    TempCopy d("tiny-mistral");
    auto index = nlohmann::json::parse(read_file(d / "model.safetensors.index.json"));
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = "model-00001-of-00003.safetensors";
    d.write("model.safetensors.index.json", index.dump());
    expect_error([&] { HfCheckpoint::open(d.str()); },
                 {"model.safetensors.index.json", "\"model.layers.9.mlp.up_proj.weight\"",
                  "model-00001-of-00003.safetensors", "has no tensor of that name"});
  }
  {
    TempCopy d("tiny-mistral");
    d.write("model.safetensors.index.json", R"({"weight_map": {"x": "../../etc/passwd"}})");
    expect_error([&] { HfCheckpoint::open(d.str()); }, {"../../etc/passwd", "not a file inside"});
    d.write("model.safetensors.index.json", R"({"metadata": {}})");
    expect_error([&] { HfCheckpoint::open(d.str()); }, {"missing \"weight_map\""});
    d.write("model.safetensors.index.json", R"({"weight_map": {"x": 3}})");
    expect_error([&] { HfCheckpoint::open(d.str()); }, {"\"x\"", "must be a file name string"});
  }
  {
    // A corrupt shard: the error names that shard.
    TempCopy d("tiny-mistral");
    fs::resize_file(d / "model-00003-of-00003.safetensors", 1000);
    expect_error([&] { HfCheckpoint::open(d.str()); }, {d / "model-00003-of-00003.safetensors", "outside the data"});
  }
  {
    // PyTorch pickles only.
    TempCopy d("tiny-llama");
    fs::rename(d / "model.safetensors", d / "pytorch_model.bin");
    expect_error([&] { HfCheckpoint::open(d.str()); },
                 {d.str(), "pytorch_model.bin", "pickle", "save_pretrained"});
    fs::remove(d / "pytorch_model.bin");
    expect_error([&] { HfCheckpoint::open(d.str()); }, {d.str(), "no model weights", "model.safetensors"});
  }
  {
    // Two files holding the same tensor, no index to pick one.
    TempCopy d("tiny-llama");
    fs::copy_file(d / "model.safetensors", d / "a.safetensors");
    fs::rename(d / "model.safetensors", d / "b.safetensors");
    expect_error([&] { HfCheckpoint::open(d.str()); }, {"a.safetensors", "b.safetensors", "is in both"});
  }
}
