// retort/util/error.h — the one error type users see.
//
// Every failure caused by input (a file, a flag, a request) throws retort::Error
// with a message that names the thing (file, field, tensor) and, where possible,
// what the user can do. The CLI catches it, prints "error: <message>" and exits 1.
// Programming errors (broken invariants) may use TORCH_CHECK / assert instead.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace retort {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Concatenate any streamable parts into one message.
template <class... Parts>
std::string cat(Parts&&... parts) {
  std::ostringstream os;
  (os << ... << std::forward<Parts>(parts));
  return os.str();
}

// fail("gguf ", path, ": tensor ", name, " has unknown type ", t) throws retort::Error.
template <class... Parts>
[[noreturn]] void fail(Parts&&... parts) {
  throw Error(cat(std::forward<Parts>(parts)...));
}

// check(cond, parts...) throws retort::Error(parts...) when cond is false.
template <class... Parts>
void check(bool cond, Parts&&... parts) {
  if (!cond) fail(std::forward<Parts>(parts)...);
}

}  // namespace retort
