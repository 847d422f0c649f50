// retort/distill/tasks.h — answer-checkable tasks: does the student still answer what the teacher
// answered? Greedy, chat-formatted generation of short prompts, each reply scored by an exact rule.
//
// Task file: JSONL, one task per line (blank lines skipped; data/tasks/tasks.jsonl is retort's own):
//   {"id": "arithmetic-001", "category": "arithmetic", "prompt": "What is 2 + 3? Reply with just the number.",
//    "check": "number", "answer": "5", "max_tokens": 16}
// Fields: id (unique), category, prompt, check (a rule below) and the rule's fields; max_tokens
// (optional, default 32) bounds the reply. Unknown fields are refused (a typo must not silently
// change what is scored).
//
// The rules. norm(s): ASCII lowercased, apostrophes dropped, every other ASCII character that is
// not a letter or digit becomes a space, runs of spaces become one, trimmed (non-ASCII kept as is).
//   number       answer (a number). The answer line is the reply's first non-empty line; the
//                reply's number is the LAST number on it: digits with an optional sign, "1,000"
//                thousands commas, decimals, or a number word zero..twenty. The last, not the first:
//                small models restate the question ("2 + 3 = 5", "Half of 10 is 5.").
//                Right when equal to the answer (relative tolerance 1e-9).
//   contains     answer [, accept: more right answers]. Right when norm(answer) appears in
//                norm(reply) as whole words ("the capital of France is Paris." contains "paris").
//   starts_with  answer [, accept]. Right when norm(reply) begins with norm(answer) as whole words
//                ("No, it is not." starts with "no"; "Nothing" does not).
//   choice       choices (2..26 options, lettered A, B, ...), answer (a letter). The reply's letter:
//                (1) the reply opens with a letter token — "B", "B.", "B)", "(B)", "B:" — (not "A dog");
//                (2) else the first "answer is X" / "answer: X" with X a letter token; (3) else the
//                option whose text alone appears in norm(reply) (whole words). Right when it is the
//                answer's letter.
//   word_count   n. Words: runs of non-space characters holding a letter or digit ("-" alone is
//                not a word). Right when the reply has exactly n.
//   line_count   n. Right when the reply has exactly n non-blank lines.
//   uppercase    Right when the reply has an ASCII letter and no lowercase ASCII letter [and, with
//                an answer, contains it as `contains` does — so junk in the right case fails].
//   lowercase    The same with no uppercase ASCII letter.
//   json_key     key. The text from the reply's first '{' to its last '}' (so a ``` fence around it
//                is fine) must parse as a JSON object that has `key`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "retort/decode/logits_processor.h"
#include "retort/decode/sampling.h"

namespace retort {

struct CheckpointInfo;
class CachedLM;

struct Task {
  std::string id, category, prompt, check;
  std::string answer;                // number, contains, starts_with, choice (one letter); uppercase, lowercase (optional)
  std::vector<std::string> accept;   // contains, starts_with: more right answers
  std::vector<std::string> choices;  // choice
  int64_t n = 0;                     // word_count, line_count
  std::string key;                   // json_key
  int64_t max_tokens = 32;
  int64_t line = 0;                  // where it came from (1-based), for messages
};

// The rule names above, in the order documented.
const std::vector<std::string>& task_checks();

// Reads and validates a task file. A bad line throws retort::Error "FILE:LINE: field \"F\" ...".
std::vector<Task> load_tasks(const std::string& path);
// One task from one JSON object; `where` ("FILE:LINE") prefixes every message.
Task parse_task(const nlohmann::json& j, const std::string& where);

struct TaskScore {
  bool correct = false;
  std::string got;  // what the rule read from the reply ("5", "B", "3 words", ...; "" = nothing)
};
TaskScore score_task(const Task& task, std::string_view reply);
// What a right reply looks like, for people ("5", "B (Apple)", "exactly 3 words", ...).
std::string task_expected(const Task& task);

// The rules' pieces, for tests.
std::string normalize_answer(std::string_view s);
std::optional<double> reply_number(std::string_view reply);
std::optional<char> reply_letter(std::string_view reply, const std::vector<std::string>& choices);
int64_t count_words(std::string_view s);
int64_t count_lines(std::string_view s);

struct TaskOutcome {
  std::string reply, finish_reason;
  TaskScore score;
  int64_t tokens = 0;
};

struct TaskRun {
  std::vector<TaskOutcome> outcomes;  // outcomes[i] belongs to tasks[i]
  double seconds = 0;
  int64_t tokens = 0;
};

// How the replies are decoded: greedy by default (the scores of `retort eval --tasks`). A sampled run
// (a provider's serving settings, e.g. antidistillation) gives task i the seed sampling.seed + i and, when
// `processors` is set, a processor of its own from it.
struct TaskDecoding {
  SamplingParams sampling;  // temperature 0 = greedy
  const LogitsProcessorFactory* processors = nullptr;
  TaskDecoding() { sampling.temperature = 0; }
};

// Replies of `lm` to every task, each prompt formatted as one user message with the model's chat
// template (raw text with BOS when it has none), then scored. `info` gives the tokenizer, template and
// end-of-turn ids (a student shares its teacher's).
TaskRun run_tasks(const CheckpointInfo& info, CachedLM& lm, const std::vector<Task>& tasks, int64_t max_batch = 32,
                  const TaskDecoding& decoding = TaskDecoding());

// {"correct", "total", "accuracy"} overall and per category (categories in first-seen order):
// {"overall": {...}, "categories": [{"category": ..., "correct", "total", "accuracy"}, ...]}.
nlohmann::json task_accuracy(const std::vector<Task>& tasks, const TaskRun& run);

// Teacher and student side by side: per category and overall, n, each accuracy and "kept" =
// student accuracy / teacher accuracy (null when the teacher got none right); "items": every task
// with its expected answer and both replies. {"categories": [...], "overall": {...}, "items": [...]}
nlohmann::json compare_task_runs(const std::vector<Task>& tasks, const TaskRun& teacher, const TaskRun& student);

// The comparison as a plain-text table (category, n, teacher, student, kept).
std::string task_table_text(const nlohmann::json& comparison);

}  // namespace retort
