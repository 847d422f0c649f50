#include "retort/io/jsonl.h"

#include <fstream>

#include "retort/util/error.h"

namespace retort {

void for_each_jsonl_object(const std::string& path,
                           const std::function<void(const nlohmann::json& object, int64_t line)>& fn) {
  std::ifstream in(path);
  check(in.good(), path, ": cannot open");
  std::string text;
  int64_t line = 0;
  while (std::getline(in, text)) {
    ++line;
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
      // e.byte is the 1-based column; nlohmann's own message repeats its exception id, so leave it out.
      fail(path, ":", line, ": not valid JSON at column ", e.byte, " (each line must be one JSON object)");
    }
    check(j.is_object(), path, ":", line, ": not a JSON object (each line must be one JSON object)");
    fn(j, line);
  }
}

}  // namespace retort
