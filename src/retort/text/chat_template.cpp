#include "retort/text/chat_template.h"

#include <regex>

#include "retort/text/tokenizer.h"
#include "retort/text/utf8.h"
#include "retort/util/error.h"

namespace retort {

namespace {

bool has(const std::string& s, const char* needle) { return s.find(needle) != std::string::npos; }

// The source with whitespace outside string literals removed, real newlines inside literals
// written as \n, and " quotes turned into ', so `message['role'] + '\n'`, `message["role"]+"<newline>"`
// and `message.role+'\n'` compare alike with `has`.
std::string squash(const std::string& s) {
  std::string out;
  char quote = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (quote) {
      if (c == '\\' && i + 1 < s.size()) {
        out += c;
        out += s[++i];
      } else if (c == quote) {
        out += '\'';
        quote = 0;
      } else if (c == '\n') {
        out += "\\n";
      } else {
        out += c == '\'' ? '"' : c;
      }
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
    if (c == '\'' || c == '"') {
      quote = c;
      out += '\'';
      continue;
    }
    out += c;
  }
  return out;
}

// Python str.isspace(), which Jinja's trim (str.strip) uses.
bool py_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

std::string py_strip(const std::string& s) {
  size_t begin = 0, end = s.size();
  // Walk code points; remember the first non-space start and the last non-space end.
  bool any = false;
  size_t i = 0;
  while (i < s.size()) {
    size_t len = 0;
    uint32_t cp = 0;
    const bool ok = utf8_next(std::string_view(s).substr(i), &len, &cp) == Utf8Status::valid;
    if (!ok || !py_space(cp)) {
      if (!any) begin = i;
      any = true;
      end = i + len;
    }
    i += len;
  }
  return any ? s.substr(begin, end - begin) : std::string();
}

// Undo Jinja string-literal escapes (\n, \t, \\, \', \").
std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      const char n = s[++i];
      out += n == 'n' ? '\n' : n == 't' ? '\t' : n;
    } else {
      out += s[i];
    }
  }
  return out;
}

// Gemma's turn markers as special tokens: a Gemma vocabulary, whose base models carry no template.
bool gemma_vocab(const Tokenizer& tok) {
  const auto start = tok.token_id("<start_of_turn>"), end = tok.token_id("<end_of_turn>");
  return start && end && tok.is_special(*start) && tok.is_special(*end);
}

// Gemma 3's template as google/gemma-3-*-it ship it (tests/data/tokenizer/chat/gemma3.jinja).
const char* const kGemma3Jinja = R"JINJA({{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
)JINJA";

}  // namespace

std::string export_chat_template(const std::string& source, const Tokenizer& tok) {
  if (!squash(source).empty()) return source;
  return gemma_vocab(tok) ? kGemma3Jinja : "";
}

bool ChatTemplate::available(const std::string& src, const Tokenizer& tok) {
  return !squash(src).empty() || gemma_vocab(tok);
}

ChatTemplate ChatTemplate::from_jinja(const std::string& src, const Tokenizer& tok) {
  const std::string sq = squash(src);
  auto bos = [&]() {
    check(tok.bos_id().has_value(), "chat template uses bos_token but the tokenizer has no BOS token");
    return tok.token_bytes(*tok.bos_id());
  };
  if (sq.empty() && gemma_vocab(tok)) {  // Gemma 3's own template, as its instruction-tuned models carry it
    ChatTemplate t;
    t.name_ = "gemma";
    t.trim_content_ = true;
    t.bos_ = bos();
    t.system_joiner_ = "\n\n";
    t.alternate_roles_ = true;
    return t;
  }
  check(!sq.empty(), "chat template is empty: this model defines no chat format; use --no-chat and pass a raw prompt");
  auto unsupported = [&](const char* why) {
    fail("chat template is not supported (", why, "); retort renders ChatML, Llama-3 and Gemma templates only. "
         "Use --no-chat and pass a raw prompt. Template starts: ", src.substr(0, 120));
  };
  // Features that change the rendering in ways the two native formats do not model.
  for (const char* marker : {"<think>", "reasoning_content", "Cutting Knowledge Date", "[INST]", "<|user|>",
                             "<|assistant|>", "date_string", "strftime_now", "ipython"}) {
    if (has(src, marker)) unsupported(marker);
  }
  ChatTemplate t;
  const bool chatml = has(sq, "<|im_start|>") && has(sq, "<|im_end|>");
  const bool llama3 = has(sq, "<|start_header_id|>") && has(sq, "<|end_header_id|>") && has(sq, "<|eot_id|>");
  const bool gemma = has(sq, "<start_of_turn>") && has(sq, "<end_of_turn>");
  const bool trims = has(sq, "trim");
  if (gemma && !chatml && !llama3) {
    // Both Gemma templates: role = 'model' for 'assistant', then '<start_of_turn>'+role+'\n', the content
    // trimmed, '<end_of_turn>\n'.
    const bool turn = has(sq, "'<start_of_turn>'+role+'\\n'");
    const bool model_role = has(sq, "setrole='model'");
    const bool content = has(sq, "message['content']|trim") || has(sq, "message.content|trim");
    const bool end = has(sq, "'<end_of_turn>\\n'") || has(sq, "'<end_of_turn>'+'\\n'");
    if (!turn || !model_role || !content || !end)
      unsupported("Gemma markers, but not the <start_of_turn>role\\n content|trim<end_of_turn>\\n shape");
    t.name_ = "gemma";
    t.trim_content_ = true;
    if (has(sq, "bos_token")) t.bos_ = bos();
    // Gemma 3: {% set first_user_prefix = messages[0]['content'] + '\n\n' %}, the system message untrimmed.
    static const std::regex re(R"(setfirst_user_prefix=messages\[0\]\['content'\]\+'([^']*)')");
    std::smatch m;
    if (std::regex_search(sq, m, re)) {
      if (!has(sq, "(first_user_prefixifloop.firstelse'')"))
        unsupported("a Gemma first_user_prefix used other than before the first turn's content");
      t.system_joiner_ = unescape(m[1].str());
    } else if (!has(src, "System role not supported")) {
      unsupported("a Gemma template that neither prepends nor refuses a system message");
    }
    t.alternate_roles_ = has(sq, "(message['role']=='user')!=(loop.index0%2==0)");
    return t;
  }
  if (chatml && !llama3) {
    const bool role_line =
        has(sq, "'<|im_start|>'+message['role']+'\\n'") || has(sq, "'<|im_start|>'+message.role+'\\n'");
    const bool content_line = has(sq, "message['content']+'<|im_end|>'") || has(sq, "message.content+'<|im_end|>'");
    if (!role_line || !content_line) unsupported("ChatML markers, but not the <|im_start|>role\\n content<|im_end|> shape");
    if (trims) {
      if (!has(sq, "message['content']|trim+'<|im_end|>'") && !has(sq, "message.content|trim+'<|im_end|>'"))
        unsupported("ChatML with `trim` applied to something other than the message content");
      t.trim_content_ = true;
    }
    t.name_ = "chatml";
    // Default system prompt: a literal '<|im_start|>system\n...<|im_end|>' with no quotes inside
    // (a `+ messages[0]['content'] +` variant has quotes and is the user-system branch).
    static const std::regex re(R"(<\|im_start\|>system(?:\\n|\n)([^'"]*?)<\|im_end\|>)");
    std::smatch m;
    if (std::regex_search(src, m, re)) {
      t.default_system_ = unescape(m[1].str());
      const size_t loop_at = src.find("for message in messages");
      t.default_system_in_loop_ = loop_at != std::string::npos && static_cast<size_t>(m.position(0)) > loop_at;
      if (!has(sq, "messages[0]['role']!='system'") && !has(sq, "messages[0]['role']=='system'") &&
          !has(sq, "messages[0].role!='system'") && !has(sq, "messages[0].role=='system'"))
        unsupported("a default system prompt under a condition retort does not recognise");
    }
    t.reject_tool_role_ = has(sq, "tool_response");
    return t;
  }
  if (llama3 && !chatml) {
    const bool header = has(sq, "'<|start_header_id|>'+message['role']+'<|end_header_id|>\\n\\n'") ||
                        has(sq, "'<|start_header_id|>'+message.role+'<|end_header_id|>\\n\\n'");
    if (!header) unsupported("Llama-3 markers, but not the <|start_header_id|>role<|end_header_id|>\\n\\n shape");
    if (trims) {
      if (!has(sq, "message['content']|trim+'<|eot_id|>'") && !has(sq, "message.content|trim+'<|eot_id|>'"))
        unsupported("Llama-3 with `trim` applied to something other than the message content");
      t.trim_content_ = true;
    }
    if (has(sq, "bos_token")) t.bos_ = bos();
    t.name_ = "llama3";
    return t;
  }
  unsupported(int(chatml) + int(llama3) + int(gemma) > 1 ? "markers of more than one format"
                                                         : "no ChatML, Llama-3 or Gemma markers");
  return t;  // not reached: unsupported() throws
}

std::vector<ChatTemplate::Part> ChatTemplate::render_parts(const std::vector<ChatMessage>& messages,
                                                          bool add_generation_prompt) const {
  std::vector<Part> parts;
  // `out += markup` and `out += user text` below build the parts; adjacent parts of a kind merge.
  struct Builder {
    std::vector<Part>& parts;
    bool trusted;
    Builder& operator+=(const std::string& t) {
      if (t.empty()) return *this;
      if (!parts.empty() && parts.back().trusted == trusted) parts.back().text += t;
      else parts.push_back({t, trusted});
      return *this;
    }
  };
  Builder out{parts, true}, user{parts, false};
  for (const auto& msg : messages) {
    check(!(reject_tool_role_ && msg.role == "tool"),
          "chat template: role \"tool\" is rendered specially by this template; retort does not support it");
  }
  auto content = [&](const ChatMessage& m) { return trim_content_ ? py_strip(m.content) : m.content; };
  if (name_ == "chatml") {
    const bool need_default = default_system_ && (messages.empty() || messages[0].role != "system") &&
                              !(default_system_in_loop_ && messages.empty());
    if (need_default) out += "<|im_start|>system\n" + *default_system_ + "<|im_end|>\n";  // the template's own text
    for (const auto& m : messages) {
      out += "<|im_start|>" + m.role + "\n";
      user += content(m);
      out += "<|im_end|>\n";
    }
    if (add_generation_prompt) out += "<|im_start|>assistant\n";
  } else if (name_ == "gemma") {
    out += bos_;
    size_t first = 0;
    std::string prefix;
    if (!messages.empty() && messages[0].role == "system") {
      check(system_joiner_.has_value(), "chat template: this Gemma template refuses a system message (\"System role "
            "not supported\"); put the instructions in the first user message");
      prefix = messages[0].content;
      first = 1;
    }
    for (size_t i = first; i < messages.size(); ++i) {
      const ChatMessage& m = messages[i];
      const size_t k = i - first;
      check(!alternate_roles_ || (m.role == "user") == (k % 2 == 0), "chat template: Gemma needs the roles to "
            "alternate user/assistant/user/... after the system message; message ", i, " is \"", m.role, "\"");
      out += "<start_of_turn>" + (m.role == "assistant" ? std::string("model") : m.role) + "\n";
      if (k == 0 && first == 1) {
        user += prefix;
        out += *system_joiner_;
      }
      user += content(m);
      out += "<end_of_turn>\n";
    }
    if (add_generation_prompt) out += "<start_of_turn>model\n";
  } else {
    for (size_t i = 0; i < messages.size(); ++i) {
      if (i == 0) out += bos_;
      out += "<|start_header_id|>" + messages[i].role + "<|end_header_id|>\n\n";
      user += content(messages[i]);
      out += "<|eot_id|>";
    }
    if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  }
  return parts;
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
  std::string out;
  for (const Part& p : render_parts(messages, add_generation_prompt)) out += p.text;
  return out;
}

std::vector<int32_t> ChatTemplate::encode(const std::vector<ChatMessage>& messages, const Tokenizer& tok,
                                          bool add_generation_prompt) const {
  const std::vector<Part> parts = render_parts(messages, add_generation_prompt);
  std::vector<Tokenizer::TextPart> views;
  for (const Part& p : parts) views.push_back({p.text, p.trusted});
  return tok.encode_parts(views, /*add_bos=*/false);
}


}  // namespace retort
