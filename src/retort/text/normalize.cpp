#include "retort/text/normalize.h"

#include <utf8proc.h>

#include <cstdlib>

#include "retort/text/utf8.h"
#include "retort/util/error.h"

namespace retort {

namespace {

// NFC of well-formed UTF-8 (NUL bytes included: no UTF8PROC_NULLTERM).
void nfc_valid(std::string_view s, std::string& out) {
  bool ascii = true;
  for (unsigned char c : s) ascii &= c < 0x80;
  if (ascii) {  // ASCII is its own NFC
    out.append(s);
    return;
  }
  utf8proc_uint8_t* dst = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), static_cast<utf8proc_ssize_t>(s.size()), &dst,
                   static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) {
    std::free(dst);
    fail("NFC normalization of ", s.size(), " bytes failed: ", utf8proc_errmsg(n));
  }
  out.append(reinterpret_cast<const char*>(dst), static_cast<size_t>(n));
  std::free(dst);
}

}  // namespace

std::string nfc(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t run = 0, i = 0;  // [run, i) is well-formed so far
  while (i < text.size()) {
    size_t len = 0;
    uint32_t cp = 0;
    if (utf8_next(text.substr(i), &len, &cp) == Utf8Status::valid) {
      i += len;
      continue;
    }
    nfc_valid(text.substr(run, i - run), out);
    out.append(text.substr(i, len));  // invalid (or incomplete at the end): kept as bytes
    i += len;
    run = i;
  }
  nfc_valid(text.substr(run), out);
  return out;
}

}  // namespace retort
