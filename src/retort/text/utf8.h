// retort/text/utf8.h — UTF-8 validation by the Unicode "maximal subpart" rule.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace retort {

enum class Utf8Status { valid, invalid, incomplete };

// Classify the sequence that starts at s[0] (s non-empty):
//   valid      -> *len = bytes of one well-formed code point (1..4), *cp = the code point
//   invalid    -> *len = bytes of the maximal ill-formed subpart (>= 1), to be replaced by one U+FFFD
//   incomplete -> s ends inside a sequence that is well-formed so far (*len = s.size())
Utf8Status utf8_next(std::string_view s, size_t* len, uint32_t* cp);

// Append the UTF-8 encoding of code point cp.
void utf8_append(std::string& out, uint32_t cp);

// Unicode White_Space (what Rust's char::is_whitespace uses).
bool is_unicode_white_space(uint32_t cp);

}  // namespace retort
