// retort/util/progress.cpp — see progress.h.
#include "retort/util/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace retort {

namespace {

constexpr int kBarWidth = 20;
constexpr double kTtyRedrawSeconds = 0.1;

double seconds_between(std::chrono::steady_clock::time_point a,
                       std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::string format_rate(double per_second) {
  char buf[32];
  if (per_second >= 100)
    std::snprintf(buf, sizeof buf, "%.0f", per_second);
  else
    std::snprintf(buf, sizeof buf, "%.1f", per_second);
  return buf;
}

}  // namespace

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  auto s = static_cast<int64_t>(std::llround(seconds));
  char buf[48];
  if (s < 60)
    std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
  else if (s < 3600)
    std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  else
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>((s % 3600) / 60));
  return buf;
}

ProgressBar::ProgressBar(std::string label, int64_t total, std::string unit, double log_every_s)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total),
      log_every_s_(log_every_s),
      tty_(isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

ProgressBar::~ProgressBar() {
  if (!finished_) finish();
}

void ProgressBar::set_enabled(bool on) { enabled_ = on; }

double ProgressBar::elapsed_seconds() const {
  return seconds_between(start_, std::chrono::steady_clock::now());
}

void ProgressBar::update(int64_t done, int64_t tokens, const std::string& extra) {
  done_ = done;
  tokens_ = tokens;
  extra_ = extra;
  if (!enabled_ || finished_) return;
  auto now = std::chrono::steady_clock::now();
  double since = seconds_between(last_draw_, now);
  if (since < (tty_ ? kTtyRedrawSeconds : log_every_s_)) return;
  last_draw_ = now;
  draw(false);
}

void ProgressBar::finish(const std::string& extra) {
  if (finished_) return;
  if (!extra.empty()) extra_ = extra;
  if (enabled_) draw(true);
  finished_ = true;
}

void ProgressBar::draw(bool final_line) {
  double elapsed = elapsed_seconds();
  std::string line = label_;
  if (total_ > 0) {
    double frac = std::min(1.0, std::max(0.0, double(done_) / double(total_)));
    int filled = static_cast<int>(frac * kBarWidth);
    line += " [";
    line += std::string(filled, '#');
    line += std::string(kBarWidth - filled, '.');
    line += "] ";
    line.append(std::to_string(done_)).append("/").append(std::to_string(total_));
  } else {
    line.append(" ").append(std::to_string(done_));
  }
  line.append(" ").append(unit_);
  if (tokens_ > 0 && elapsed > 0)
    line.append("  ").append(format_rate(double(tokens_) / elapsed)).append(" tok/s");
  if (final_line) {
    line.append("  in ").append(format_duration(elapsed));
  } else if (total_ > 0 && done_ > 0 && done_ < total_) {
    double eta = elapsed * double(total_ - done_) / double(done_);
    line.append("  ETA ").append(format_duration(eta));
  }
  if (!extra_.empty()) line.append("  ").append(extra_);

  if (tty_) {
    // \r + clear-to-end-of-line so a shorter line leaves no debris.
    std::fprintf(stderr, "\r%s\x1b[K%s", line.c_str(), final_line ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

}  // namespace retort
