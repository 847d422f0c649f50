// `retort tokenize`: text -> ids (and pieces), or ids -> text.
#include <filesystem>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/common.h"
#include "retort/io/gguf.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

namespace retort::cli {

std::shared_ptr<Tokenizer> load_tokenizer_only(const std::string& spec) {
  namespace fs = std::filesystem;
  std::string path = resolve_model_path(spec);
  if (fs::is_directory(path)) {
    std::string tj = (fs::path(path) / "tokenizer.json").string();
    std::string tc = (fs::path(path) / "tokenizer_config.json").string();
    check(fs::exists(tj), path, ": no tokenizer.json in this checkpoint directory");
    return std::make_shared<Tokenizer>(Tokenizer::from_hf_json(tj, fs::exists(tc) ? tc : ""));
  }
  GgufFile gguf = GgufFile::open(path);
  return std::make_shared<Tokenizer>(Tokenizer::from_gguf(gguf));
}

namespace {

struct TokenizeArgs {
  std::string model = "smollm2-135m-instruct";
  std::string text;
  std::string file;
  std::string decode;
  bool json = false;
  bool no_special = false;
  bool add_bos = false;
  bool text_given = false;  // `retort tokenize ""` encodes the empty string; no argument reads stdin
};

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::string cur;
  auto flush = [&] {
    if (cur.empty()) return;
    try {
      size_t used = 0;
      long v = std::stol(cur, &used);
      if (used != cur.size() || v < 0 || v > INT32_MAX) throw std::invalid_argument("range");
      ids.push_back(static_cast<int32_t>(v));
    } catch (const std::exception&) {
      fail("--decode: '", cur, "' is not a token id (give ids separated by commas or spaces)");
    }
    cur.clear();
  };
  for (char c : s) {
    if (c == ',' || c == ' ' || c == '\n' || c == '\t' || c == '[' || c == ']')
      flush();
    else
      cur += c;
  }
  flush();
  return ids;
}

void run(const TokenizeArgs& a) {
  auto tok = load_tokenizer_only(a.model);
  using nlohmann::json;
  auto dump = [](const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); };
  if (!a.decode.empty()) {
    std::vector<int32_t> ids = parse_ids(a.decode);
    for (int32_t id : ids)
      check(id < tok->n_vocab(), "--decode: token id ", id, " is outside the vocabulary (", tok->n_vocab(), " tokens)");
    std::string text = tok->decode(ids);
    if (a.json)
      std::cout << dump(json{{"ids", ids}, {"text", text}}) << "\n";
    else
      std::cout << text << "\n";
    return;
  }
  std::string text = a.text;
  if (!a.file.empty()) text = read_file(a.file);
  if (!a.text_given && a.file.empty()) {
    std::ostringstream ss;
    ss << std::cin.rdbuf();
    text = ss.str();
  }
  size_t dropped = 0;
  std::vector<int32_t> ids = tok->encode(text, /*parse_special=*/!a.no_special, /*add_bos=*/a.add_bos, &dropped);
  if (dropped > 0) {
    std::cerr << "warning: " << dropped << (dropped == 1 ? " byte of the input has" : " bytes of the input have")
              << " no token in this vocabulary and " << (dropped == 1 ? "was" : "were")
              << " left out (as Hugging Face tokenizers does); decoding these ids will not give the input back\n";
  }
  if (a.json) {
    // pieces: each token's bytes as text (invalid UTF-8 shown as U+FFFD); pieces_hex: the exact bytes,
    // since a JSON string cannot hold invalid UTF-8.
    json pieces = json::array(), pieces_hex = json::array();
    for (int32_t id : ids) {
      const std::string b = tok->token_bytes(id);
      pieces.push_back(b);
      std::string hex;
      for (unsigned char c : b) {
        hex += "0123456789abcdef"[c >> 4];
        hex += "0123456789abcdef"[c & 15];
      }
      pieces_hex.push_back(hex);
    }
    std::cout << dump(json{{"ids", ids}, {"pieces", pieces}, {"pieces_hex", pieces_hex}, {"n_tokens", ids.size()}})
              << "\n";
    return;
  }
  for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
  std::cout << "\n";
  std::cerr << ids.size() << " tokens\n";
}

}  // namespace

void register_tokenize(CLI::App& app) {
  auto a = std::make_shared<TokenizeArgs>();
  CLI::App* sub = app.add_subcommand("tokenize", "text -> token ids (and back with --decode)");
  sub->add_option("-m,--model", a->model, "model whose tokenizer to use")->capture_default_str();
  sub->add_option("text", a->text, "text to encode (default: stdin)");
  sub->add_option("-f,--file", a->file, "read the text from a file");
  sub->add_option("--decode", a->decode, "ids to decode, e.g. '1,2,3'");
  sub->add_flag("--json", a->json, "machine-readable output (ids and token pieces)");
  sub->add_flag("--no-special", a->no_special, "encode special-token text (e.g. <|im_start|>) as plain text");
  sub->add_flag("--add-bos", a->add_bos, "prepend BOS when the tokenizer is configured to");
  sub->callback([a, sub] {
    a->text_given = sub->count("text") > 0;
    run(*a);
  });
}

}  // namespace retort::cli
