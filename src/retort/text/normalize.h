// retort/text/normalize.h — Unicode normalization for tokenizer.json "normalizer" (NFC), via libutf8proc.
#pragma once

#include <string>
#include <string_view>

namespace retort {

// Canonical composition (NFC) of the valid UTF-8 in `text`. Invalid bytes are kept as they are and
// split the text: each valid run between them is normalized on its own (what the tokenizer does,
// since every maximal invalid run is a pre-token of its own). ASCII-only input is returned unchanged
// without calling utf8proc.
std::string nfc(std::string_view text);

}  // namespace retort
