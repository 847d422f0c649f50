// retort/util/progress.h — a one-line progress bar on stderr for long jobs (capture, training):
//   capture [#########.........] 1234/5000 samples  812 tok/s  ETA 3m12s  loss 2.31
// Redrawn in place (\r) at most ~10 times a second when stderr is a terminal; otherwise
// one plain line every `log_every_s` seconds (CI logs stay readable). Thread-compatible,
// not thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace retort {

class ProgressBar {
 public:
  // total <= 0: unknown (no bar, no ETA). `unit` names what is counted ("samples", "steps").
  ProgressBar(std::string label, int64_t total, std::string unit, double log_every_s = 10.0);
  ~ProgressBar();  // finish() if not yet finished
  // done = units completed so far; tokens = tokens processed so far (for tok/s; 0 = none);
  // extra = appended text ("loss 2.31").
  void update(int64_t done, int64_t tokens = 0, const std::string& extra = "");
  void finish(const std::string& extra = "");  // final line with totals and elapsed time
  double elapsed_seconds() const;
  void set_enabled(bool on);  // --quiet

 private:
  void draw(bool final_line);
  std::string label_, unit_, extra_;
  int64_t total_ = 0, done_ = 0, tokens_ = 0;
  double log_every_s_;
  bool tty_ = false, enabled_ = true, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

// "3m12s", "1h02m", "45s".
std::string format_duration(double seconds);

}  // namespace retort
