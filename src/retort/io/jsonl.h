// retort/io/jsonl.h — reading JSON Lines files (prompts, documents, completions).
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

namespace retort {

// Calls fn(object, line_number) for each non-blank line of `path` (line numbers from 1).
// A line that is not JSON, or not a JSON object, throws retort::Error naming the file and line.
void for_each_jsonl_object(const std::string& path,
                           const std::function<void(const nlohmann::json& object, int64_t line)>& fn);

}  // namespace retort
