// bench/bench_util.h — what every bench program here repeats: timing, the date in result file names, and a
// main() that turns an exception into one line naming the program and exit status 1.
#pragma once

#include <chrono>
#include <cstdio>
#include <ctime>
#include <exception>
#include <string>

namespace retort_bench {

using clk = std::chrono::steady_clock;

inline double secs_since(clk::time_point t0) { return std::chrono::duration<double>(clk::now() - t0).count(); }

// Today in UTC as YYYY-MM-DD (bench/results/NAME_DATE.json).
inline std::string utc_date() {
  const std::time_t t = std::time(nullptr);
  char b[16];
  std::strftime(b, sizeof b, "%Y-%m-%d", std::gmtime(&t));
  return b;
}

// main() of a bench program: run(argc, argv), or "NAME: what went wrong" on stderr and status 1.
inline int run_main(const char* name, int (*run)(int, char**), int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", name, e.what());
    return 1;
  }
}

}  // namespace retort_bench
