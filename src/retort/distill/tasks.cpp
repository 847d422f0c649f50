// retort/distill/tasks.cpp — answer-checkable tasks: file, rules, greedy runs (see tasks.h).
#include "retort/distill/tasks.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <set>

#include "retort/decode/generate.h"
#include "retort/model/runtime_model.h"
#include "retort/text/chat_template.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"

namespace retort {

namespace {

using nlohmann::json;

bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::string trim(std::string_view s) {
  size_t a = 0, b = s.size();
  while (a < b && is_space(s[a])) ++a;
  while (b > a && is_space(s[b - 1])) --b;
  return std::string(s.substr(a, b - a));
}

// The reply's first non-blank line, trimmed.
std::string first_line(std::string_view s) {
  size_t p = 0;
  while (p <= s.size()) {
    size_t e = s.find('\n', p);
    if (e == std::string_view::npos) e = s.size();
    std::string l = trim(s.substr(p, e - p));
    if (!l.empty()) return l;
    p = e + 1;
  }
  return "";
}

// Whole-word containment of normalized strings ("" never matches).
bool has_words(const std::string& hay, const std::string& needle) {
  return !needle.empty() && (" " + hay + " ").find(" " + needle + " ") != std::string::npos;
}

bool starts_with_words(const std::string& hay, const std::string& needle) {
  return !needle.empty() && (hay + " ").rfind(needle + " ", 0) == 0;
}

std::string number_text(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.10g", v);
  return buf;
}

// A letter token at s[i]: one of `letters`, optionally in parentheses, followed by the end or by
// one of . ) : , or whitespace that ends the reply or a line. "A dog" is not one.
std::optional<char> letter_token_at(std::string_view s, size_t i, char last_letter) {
  bool paren = i < s.size() && s[i] == '(';
  if (paren) ++i;
  if (i >= s.size()) return std::nullopt;
  char c = s[i];
  if (c < 'A' || c > last_letter) return std::nullopt;
  size_t j = i + 1;
  if (j == s.size()) return c;
  char d = s[j];
  if (d == '.' || d == ')' || d == ':' || d == ',') return c;
  if (paren) return std::nullopt;
  if (d == '\n' || d == '\r') return c;
  if (is_space(d)) {  // "B" then only spaces to the end of the line
    while (j < s.size() && (s[j] == ' ' || s[j] == '\t')) ++j;
    if (j == s.size() || s[j] == '\n' || s[j] == '\r') return c;
  }
  return std::nullopt;
}

const char* const kNumberWords[] = {"zero",    "one",     "two",       "three",    "four",     "five",    "six",
                                    "seven",   "eight",   "nine",      "ten",      "eleven",   "twelve",  "thirteen",
                                    "fourteen", "fifteen", "sixteen",  "seventeen", "eighteen", "nineteen", "twenty"};

template <class T>
T get_field(const json& j, const char* key, const std::string& where, const char* what) {
  try {
    return j.at(key).get<T>();
  } catch (const json::exception&) {
    fail(where, ": field \"", key, "\" must be ", what, " (got ", j.at(key).dump(), ")");
  }
}

std::string required_string(const json& j, const char* key, const std::string& where) {
  check(j.contains(key), where, ": field \"", key, "\" is missing");
  std::string s = get_field<std::string>(j, key, where, "a string");
  check(!trim(s).empty(), where, ": field \"", key, "\" is empty");
  return s;
}

json accuracy_json(int64_t correct, int64_t total) {
  return {{"correct", correct}, {"total", total}, {"accuracy", total > 0 ? double(correct) / double(total) : 0.0}};
}

std::string pct(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%%", 100 * v);
  return buf;
}

}  // namespace

const std::vector<std::string>& task_checks() {
  static const std::vector<std::string> k = {"number",     "contains",   "starts_with", "choice",  "word_count",
                                             "line_count", "uppercase",  "lowercase",   "json_key"};
  return k;
}

std::string normalize_answer(std::string_view s) {
  std::string o;
  o.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    unsigned char c = s[i];
    if (c == '\'') continue;
    if (c == 0xE2 && i + 2 < s.size() && (unsigned char)s[i + 1] == 0x80 && (unsigned char)s[i + 2] == 0x99) {
      i += 2;  // U+2019, the typographic apostrophe
      continue;
    }
    char out;
    if (c >= 0x80 || is_digit(char(c)) || is_alpha(char(c)))
      out = (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : char(c);
    else
      out = ' ';
    if (out == ' ' && (o.empty() || o.back() == ' ')) continue;
    o += out;
  }
  while (!o.empty() && o.back() == ' ') o.pop_back();
  return o;
}

std::optional<double> reply_number(std::string_view reply) {
  const std::string line = first_line(reply);
  std::optional<double> last;
  size_t i = 0;
  while (i < line.size()) {
    char c = line[i];
    const bool sign = c == '-' && i + 1 < line.size() && is_digit(line[i + 1]) &&
                      (i == 0 || !(is_digit(line[i - 1]) || is_alpha(line[i - 1])));
    if (is_digit(c) || sign) {
      // Digits with "1,000" commas (a comma followed by exactly three digits), then ".5" decimals.
      if (i > 0 && (is_alpha(line[i - 1]))) {  // "H2O", "x2": part of a word, not a number
        while (i < line.size() && (is_digit(line[i]) || is_alpha(line[i]))) ++i;
        continue;
      }
      std::string t;
      if (sign) t += '-', ++i;
      while (i < line.size()) {
        if (is_digit(line[i])) {
          t += line[i++];
        } else if (line[i] == ',' && i + 3 < line.size() && is_digit(line[i + 1]) && is_digit(line[i + 2]) &&
                   is_digit(line[i + 3]) && (i + 4 == line.size() || !is_digit(line[i + 4]))) {
          ++i;  // thousands separator
        } else {
          break;
        }
      }
      if (i + 1 < line.size() && line[i] == '.' && is_digit(line[i + 1])) {
        t += line[i++];
        while (i < line.size() && is_digit(line[i])) t += line[i++];
      }
      if (i < line.size() && is_alpha(line[i])) {  // "3rd", "2x": keep the number, skip the letters
        while (i < line.size() && is_alpha(line[i])) ++i;
      }
      last = std::stod(t);
      continue;
    }
    if (is_alpha(c)) {
      size_t j = i;
      while (j < line.size() && is_alpha(line[j])) ++j;
      std::string w = normalize_answer(line.substr(i, j - i));
      for (int k = 0; k <= 20; ++k)
        if (w == kNumberWords[k]) last = double(k);
      i = j;
      continue;
    }
    ++i;
  }
  return last;
}

std::optional<char> reply_letter(std::string_view reply, const std::vector<std::string>& choices) {
  if (choices.empty()) return std::nullopt;
  const char last_letter = char('A' + std::min<size_t>(choices.size(), 26) - 1);
  const std::string r = trim(reply);
  // (1) The reply opens with a letter token.
  if (auto c = letter_token_at(r, 0, last_letter)) return c;
  // (2) "answer is X" / "answer: X", case-insensitive "answer".
  std::string lower = r;
  for (auto& ch : lower) ch = (ch >= 'A' && ch <= 'Z') ? char(ch - 'A' + 'a') : ch;
  for (size_t p = lower.find("answer"); p != std::string::npos; p = lower.find("answer", p + 1)) {
    size_t q = p + 6;
    if (lower.compare(q, 3, " is") == 0)
      q += 3;
    else if (lower.compare(q, 1, ":") == 0)
      q += 1;
    else
      continue;
    while (q < r.size() && (r[q] == ' ' || r[q] == '\t')) ++q;
    if (auto c = letter_token_at(r, q, last_letter)) return c;
  }
  // (3) Exactly one option's text appears in the reply.
  const std::string nr = normalize_answer(r);
  std::optional<char> found;
  int hits = 0;
  for (size_t i = 0; i < choices.size() && i < 26; ++i)
    if (has_words(nr, normalize_answer(choices[i]))) ++hits, found = char('A' + i);
  return hits == 1 ? found : std::nullopt;
}

int64_t count_words(std::string_view s) {
  int64_t n = 0;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && is_space(s[i])) ++i;
    bool word = false;
    while (i < s.size() && !is_space(s[i])) {
      unsigned char c = s[i++];
      word = word || c >= 0x80 || is_alpha(char(c)) || is_digit(char(c));
    }
    n += word;
  }
  return n;
}

int64_t count_lines(std::string_view s) {
  int64_t n = 0;
  size_t p = 0;
  while (p <= s.size()) {
    size_t e = s.find('\n', p);
    if (e == std::string_view::npos) e = s.size();
    if (!trim(s.substr(p, e - p)).empty()) ++n;
    p = e + 1;
  }
  return n;
}

TaskScore score_task(const Task& t, std::string_view reply) {
  TaskScore s;
  const std::string& c = t.check;
  if (c == "number") {
    auto v = reply_number(reply);
    if (!v) return s;
    const double want = std::stod(t.answer);
    s.got = number_text(*v);
    s.correct = std::fabs(*v - want) <= 1e-9 * std::max(1.0, std::fabs(want));
  } else if (c == "contains" || c == "starts_with") {
    const std::string nr = normalize_answer(reply);
    std::vector<std::string> right = {t.answer};
    right.insert(right.end(), t.accept.begin(), t.accept.end());
    for (const auto& a : right) {
      const std::string na = normalize_answer(a);
      if (c == "contains" ? has_words(nr, na) : starts_with_words(nr, na)) {
        s.correct = true;
        s.got = a;
        return s;
      }
    }
    if (c == "starts_with") s.got = nr.substr(0, nr.find(' '));
  } else if (c == "choice") {
    auto l = reply_letter(reply, t.choices);
    if (!l) return s;
    s.got = std::string(1, *l);
    s.correct = s.got == t.answer;
  } else if (c == "word_count") {
    const int64_t n = count_words(reply);
    s.got = cat(n, n == 1 ? " word" : " words");
    s.correct = n == t.n;
  } else if (c == "line_count") {
    const int64_t n = count_lines(reply);
    s.got = cat(n, n == 1 ? " line" : " lines");
    s.correct = n == t.n;
  } else if (c == "uppercase" || c == "lowercase") {
    bool upper = false, lower = false;
    for (char ch : reply) upper = upper || (ch >= 'A' && ch <= 'Z'), lower = lower || (ch >= 'a' && ch <= 'z');
    s.got = !upper && !lower ? "no letters" : upper && lower ? "mixed case" : upper ? "uppercase" : "lowercase";
    s.correct = c == "uppercase" ? upper && !lower : lower && !upper;
    if (!t.answer.empty() && !has_words(normalize_answer(reply), normalize_answer(t.answer))) {
      s.correct = false;
      s.got += ", without \"" + t.answer + "\"";
    }
  } else if (c == "json_key") {
    size_t a = reply.find('{'), b = reply.rfind('}');
    if (a == std::string_view::npos || b == std::string_view::npos || b < a) {
      s.got = "no JSON object";
      return s;
    }
    json j = json::parse(reply.substr(a, b - a + 1), nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      s.got = "invalid JSON";
      return s;
    }
    s.correct = j.contains(t.key);
    s.got = s.correct ? cat("\"", t.key, "\": ", j[t.key].dump()) : "object without the key";
  } else {
    fail("task ", t.id, ": unknown check \"", c, "\"");
  }
  return s;
}

std::string task_expected(const Task& t) {
  const std::string& c = t.check;
  if (c == "number" || c == "contains") {
    std::string o = t.answer;
    for (const auto& a : t.accept) o += " | " + a;
    return c == "contains" ? "contains " + o : o;
  }
  if (c == "starts_with") {
    std::string o = "starts with " + t.answer;
    for (const auto& a : t.accept) o += " | " + a;
    return o;
  }
  if (c == "choice") return cat(t.answer, " (", t.choices[size_t(t.answer[0] - 'A')], ")");
  if (c == "word_count") return cat("exactly ", t.n, t.n == 1 ? " word" : " words");
  if (c == "line_count") return cat("exactly ", t.n, t.n == 1 ? " line" : " lines");
  if (c == "uppercase" || c == "lowercase")
    return cat("all ", c, t.answer.empty() ? "" : cat(", containing ", t.answer));
  if (c == "json_key") return cat("a JSON object with key \"", t.key, "\"");
  return c;
}

Task parse_task(const json& j, const std::string& where) {
  check(j.is_object(), where, ": a task must be a JSON object");
  static const std::set<std::string> known = {"id",      "category", "prompt", "check", "answer", "accept",
                                              "choices", "n",        "key",    "max_tokens", "comment"};
  for (const auto& [k, v] : j.items())
    check(known.count(k) > 0, where, ": unknown field \"", k,
          "\" (known: id, category, prompt, check, answer, accept, choices, n, key, max_tokens, comment)");
  Task t;
  t.id = required_string(j, "id", where);
  t.category = required_string(j, "category", where);
  t.prompt = required_string(j, "prompt", where);
  t.check = required_string(j, "check", where);
  const auto& checks = task_checks();
  if (std::find(checks.begin(), checks.end(), t.check) == checks.end()) {
    std::string list;
    for (const auto& c : checks) list += (list.empty() ? "" : ", ") + c;
    fail(where, ": field \"check\": unknown rule \"", t.check, "\" (known: ", list, ")");
  }
  if (j.contains("max_tokens")) {
    check(j["max_tokens"].is_number_integer(), where, ": field \"max_tokens\" must be an integer (got ",
          j["max_tokens"].dump(), ")");
    t.max_tokens = j["max_tokens"].get<int64_t>();
    check(t.max_tokens >= 1 && t.max_tokens <= 4096, where, ": field \"max_tokens\" must be in 1..4096 (got ",
          t.max_tokens, ")");
  }
  auto needs = [&](const char* key, bool needed) {
    check(!needed || j.contains(key), where, ": check \"", t.check, "\" needs field \"", key, "\"");
    check(needed || !j.contains(key), where, ": field \"", key, "\" is not used by check \"", t.check, "\"");
  };
  const std::string& c = t.check;
  if (c != "uppercase" && c != "lowercase")  // for those two an answer is optional
    needs("answer", c == "number" || c == "contains" || c == "starts_with" || c == "choice");
  needs("choices", c == "choice");
  needs("n", c == "word_count" || c == "line_count");
  needs("key", c == "json_key");
  if (j.contains("accept"))
    check(c == "contains" || c == "starts_with", where, ": field \"accept\" is not used by check \"", c, "\"");

  if (j.contains("answer")) {
    if (c == "number" && j["answer"].is_number()) {
      t.answer = number_text(j["answer"].get<double>());
    } else {
      t.answer = required_string(j, "answer", where);
    }
  }
  if (c == "number") {
    std::optional<double> v;
    try {
      size_t used = 0;
      double d = std::stod(t.answer, &used);
      if (used == t.answer.size() && std::isfinite(d)) v = d;
    } catch (const std::exception&) {
    }
    check(v.has_value(), where, ": field \"answer\" must be a number for check \"number\" (got \"", t.answer, "\")");
  }
  if (c == "contains" || c == "starts_with" || !t.answer.empty()) {
    check(!normalize_answer(t.answer).empty(), where, ": field \"answer\" (\"", t.answer,
          "\") has no letter or digit, so it can never match");
    if (j.contains("accept")) {
      t.accept = get_field<std::vector<std::string>>(j, "accept", where, "an array of strings");
      for (const auto& a : t.accept)
        check(!normalize_answer(a).empty(), where, ": field \"accept\": \"", a, "\" has no letter or digit");
    }
  }
  if (c == "choice") {
    t.choices = get_field<std::vector<std::string>>(j, "choices", where, "an array of strings");
    check(t.choices.size() >= 2 && t.choices.size() <= 26, where, ": field \"choices\" must hold 2..26 options (got ",
          t.choices.size(), ")");
    const char last = char('A' + t.choices.size() - 1);
    check(t.answer.size() == 1 && t.answer[0] >= 'A' && t.answer[0] <= last, where,
          ": field \"answer\" must be one letter A..", std::string(1, last), " for ", t.choices.size(),
          " choices (got \"", t.answer, "\")");
  }
  if (c == "word_count" || c == "line_count") {
    check(j["n"].is_number_integer() && j["n"].get<int64_t>() >= 1, where,
          ": field \"n\" must be an integer >= 1 (got ", j["n"].dump(), ")");
    t.n = j["n"].get<int64_t>();
  }
  if (c == "json_key") t.key = required_string(j, "key", where);
  return t;
}

std::vector<Task> load_tasks(const std::string& path) {
  std::ifstream f(path);
  check(f.good(), "task file ", path, " not found or unreadable (data/tasks/tasks.jsonl is retort's own)");
  std::vector<Task> tasks;
  std::set<std::string> ids;
  std::string line;
  int64_t lineno = 0;
  while (std::getline(f, line)) {
    ++lineno;
    if (trim(line).empty()) continue;
    const std::string where = cat(path, ":", lineno);
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    check(!j.is_discarded(), where, ": not valid JSON (one task object per line)");
    Task t = parse_task(j, where);
    t.line = lineno;
    check(ids.insert(t.id).second, where, ": field \"id\": \"", t.id, "\" is used by an earlier line");
    tasks.push_back(std::move(t));
  }
  check(!tasks.empty(), "task file ", path, " holds no tasks");
  return tasks;
}

TaskRun run_tasks(const CheckpointInfo& info, CachedLM& lm, const std::vector<Task>& tasks, int64_t max_batch,
                  const TaskDecoding& decoding) {
  check(info.tokenizer != nullptr, "tasks: ", info.path, " has no tokenizer");
  const Tokenizer& tok = *info.tokenizer;
  const bool chat = ChatTemplate::available(info.chat_template, tok);
  std::optional<ChatTemplate> tpl;
  if (chat) tpl = ChatTemplate::from_jinja(info.chat_template, tok);
  std::vector<GenerationRequest> reqs;
  reqs.reserve(tasks.size());
  for (const auto& t : tasks) {
    GenerationRequest r;
    r.prompt = chat ? tpl->encode({{"user", t.prompt}}, tok) : tok.encode(t.prompt, /*parse_special=*/false, /*add_bos=*/true);
    r.sampling = decoding.sampling;
    r.sampling.seed = decoding.sampling.seed + uint64_t(reqs.size());
    if (decoding.processors) r.processor = decoding.processors->make(r.sampling);
    r.max_tokens = t.max_tokens;
    reqs.push_back(std::move(r));
  }
  GenerateOptions go;
  go.max_batch = std::max<int64_t>(1, max_batch);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<GenerationResult> res = generate(info, lm, reqs, go);
  TaskRun run;
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (size_t i = 0; i < tasks.size(); ++i) {
    TaskOutcome o;
    o.reply = res[i].text;
    o.finish_reason = res[i].finish_reason;
    o.tokens = int64_t(res[i].tokens.size());
    o.score = score_task(tasks[i], o.reply);
    run.tokens += o.tokens;
    run.outcomes.push_back(std::move(o));
  }
  return run;
}

json task_accuracy(const std::vector<Task>& tasks, const TaskRun& run) {
  check(run.outcomes.size() == tasks.size(), "task_accuracy: ", run.outcomes.size(), " outcomes for ", tasks.size(),
        " tasks");
  std::vector<std::string> cats;
  std::vector<int64_t> right, total;
  int64_t all_right = 0;
  for (size_t i = 0; i < tasks.size(); ++i) {
    auto it = std::find(cats.begin(), cats.end(), tasks[i].category);
    size_t c = size_t(it - cats.begin());
    if (it == cats.end()) cats.push_back(tasks[i].category), right.push_back(0), total.push_back(0);
    ++total[c];
    right[c] += run.outcomes[i].score.correct;
    all_right += run.outcomes[i].score.correct;
  }
  json out = {{"overall", accuracy_json(all_right, int64_t(tasks.size()))}, {"categories", json::array()}};
  for (size_t c = 0; c < cats.size(); ++c) {
    json row = accuracy_json(right[c], total[c]);
    row["category"] = cats[c];
    out["categories"].push_back(row);
  }
  return out;
}

json compare_task_runs(const std::vector<Task>& tasks, const TaskRun& teacher, const TaskRun& student) {
  const json ta = task_accuracy(tasks, teacher), sa = task_accuracy(tasks, student);
  auto row = [](const std::string& name, const json& t, const json& s) {
    const double tacc = t["accuracy"].get<double>(), sacc = s["accuracy"].get<double>();
    return json{{"category", name},
                {"n", t["total"]},
                {"teacher", tacc},
                {"student", sacc},
                {"teacher_correct", t["correct"]},
                {"student_correct", s["correct"]},
                {"kept", t["correct"].get<int64_t>() > 0 ? json(sacc / tacc) : json(nullptr)}};
  };
  json out = {{"categories", json::array()}, {"items", json::array()}};
  for (size_t c = 0; c < ta["categories"].size(); ++c)
    out["categories"].push_back(
        row(ta["categories"][c]["category"].get<std::string>(), ta["categories"][c], sa["categories"][c]));
  out["overall"] = row("overall", ta["overall"], sa["overall"]);
  for (size_t i = 0; i < tasks.size(); ++i) {
    auto side = [](const TaskOutcome& o) {
      return json{{"reply", o.reply}, {"got", o.score.got}, {"correct", o.score.correct},
                  {"finish_reason", o.finish_reason}};
    };
    out["items"].push_back({{"id", tasks[i].id},
                            {"category", tasks[i].category},
                            {"check", tasks[i].check},
                            {"prompt", tasks[i].prompt},
                            {"expected", task_expected(tasks[i])},
                            {"teacher", side(teacher.outcomes[i])},
                            {"student", side(student.outcomes[i])}});
  }
  out["seconds"] = {{"teacher", teacher.seconds}, {"student", student.seconds}};
  return out;
}

std::string task_table_text(const json& cmp) {
  std::string o;
  char buf[256];
  std::snprintf(buf, sizeof buf, "  %-20s %5s %9s %9s %7s\n", "category", "n", "teacher", "student", "kept");
  o += buf;
  auto line = [&](const json& r) {
    const std::string kept = r["kept"].is_null() ? "-" : pct(r["kept"].get<double>());
    std::snprintf(buf, sizeof buf, "  %-20s %5lld %9s %9s %7s\n", r["category"].get<std::string>().c_str(),
                  static_cast<long long>(r["n"].get<int64_t>()), pct(r["teacher"].get<double>()).c_str(),
                  pct(r["student"].get<double>()).c_str(), kept.c_str());
    o += buf;
  };
  for (const auto& r : cmp["categories"]) line(r);
  line(cmp["overall"]);
  return o;
}

}  // namespace retort
