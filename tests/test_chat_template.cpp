// Chat templates against transformers' apply_chat_template renders
// (tests/data/tokenizer/gen_golden.py writes chat/golden.jsonl and the .jinja sources).
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "retort/text/chat_template.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

using namespace retort;
using nlohmann::json;

namespace {

const std::string kDir = std::string(RETORT_TEST_DATA) + "/tokenizer";

const Tokenizer& tokenizer(const std::string& name) {
  static std::map<std::string, Tokenizer> cache;
  auto it = cache.find(name);
  if (it == cache.end()) {
    const std::string cfg = name == "smollm2" ? kDir + "/smollm2/tokenizer_config.json" : "";
    it = cache.emplace(name, Tokenizer::from_hf_json(kDir + "/" + name + "/tokenizer.json", cfg)).first;
  }
  return it->second;
}

std::string jinja(const std::string& name) { return read_file(kDir + "/chat/" + name + ".jinja"); }

}  // namespace

TEST(ChatTemplate, MatchesTransformersRenders) {
  std::ifstream f(kDir + "/chat/golden.jsonl");
  std::string line;
  int n = 0;
  while (std::getline(f, line)) {
    const json g = json::parse(line);
    const std::string name = g["template"];
    SCOPED_TRACE(name + ": " + g["messages"].dump() + " gen=" + (g["add_generation_prompt"].get<bool>() ? "1" : "0"));
    const Tokenizer& tok = tokenizer(g["tokenizer"]);
    const auto t = ChatTemplate::from_jinja(jinja(name), tok);
    EXPECT_EQ(t.name(), name == "llama3" ? "llama3" : "chatml");
    std::vector<ChatMessage> msgs;
    for (const auto& m : g["messages"]) msgs.push_back({m["role"], m["content"]});
    EXPECT_EQ(t.render(msgs, g["add_generation_prompt"].get<bool>()), g["render"].get<std::string>());
    ++n;
  }
  EXPECT_GE(n, 48);
}

TEST(ChatTemplate, DefaultSystemPrompts) {
  const auto smol = ChatTemplate::from_jinja(jinja("smollm2"), tokenizer("smollm2"));
  ASSERT_TRUE(smol.default_system().has_value());
  EXPECT_EQ(*smol.default_system(), "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  const auto qwen = ChatTemplate::from_jinja(jinja("qwen25"), tokenizer("qwen2"));
  ASSERT_TRUE(qwen.default_system().has_value());
  EXPECT_EQ(*qwen.default_system(), "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  EXPECT_FALSE(ChatTemplate::from_jinja(jinja("chatml"), tokenizer("qwen2")).default_system().has_value());
  // The template stored in the SmolLM2 tokenizer_config.json is the same one.
  EXPECT_EQ(tokenizer("smollm2").chat_template(), jinja("smollm2"));
}

TEST(ChatTemplate, RenderedPromptTokenizesWithSpecialTokens) {
  const Tokenizer& tok = tokenizer("smollm2");
  const auto t = ChatTemplate::from_jinja(tok.chat_template(), tok);
  const auto ids = tok.encode(t.render({{"user", "hi"}}), /*parse_special=*/true);
  EXPECT_EQ(ids.front(), *tok.token_id("<|im_start|>"));
  EXPECT_EQ(ids.back(), tok.encode("\n").back());
}

TEST(ChatTemplate, UnsupportedTemplatesAreErrors) {
  const Tokenizer& tok = tokenizer("llama3");
  for (const char* name : {"mistral", "gemma"}) {
    try {
      ChatTemplate::from_jinja(jinja(name), tok);
      ADD_FAILURE() << name << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("not supported"), std::string::npos) << e.what();
    }
  }
  try {
    ChatTemplate::from_jinja("  \n ", tok);
    ADD_FAILURE() << "empty template was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--no-chat"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ChatTemplate::from_jinja("{{ messages }}", tok), Error);
  // ChatML markers with a shape retort does not render (reasoning blocks).
  EXPECT_THROW(ChatTemplate::from_jinja(jinja("chatml") + "{{ '<think>\\n' }}", tok), Error);
  // Qwen2.5 renders tool messages its own way: refused rather than rendered as plain ChatML.
  const auto qwen = ChatTemplate::from_jinja(jinja("qwen25"), tokenizer("qwen2"));
  EXPECT_THROW(qwen.render({{"user", "x"}, {"tool", "42"}}), Error);
}
