// retort/serve/metrics.h — the server's counters and histograms, rendered as Prometheus text (GET /metrics).
//
// Exposition format 0.0.4 (https://prometheus.io/docs/instrumenting/exposition_formats/): one
// `# HELP` and `# TYPE` line per family, then `name{label="value",...} number` samples; histograms as
// cumulative `_bucket{le="..."}` samples ending in `le="+Inf"`, plus `_sum` and `_count`.
// Thread-safe: HTTP threads and the scheduler thread update it concurrently.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace retort {

class Metrics {
 public:
  Metrics();
  // Counter family `name` (declared in the constructor) += v, for the given label values.
  void add(const std::string& name, const std::map<std::string, std::string>& labels, double v = 1);
  // Histogram family `name` observes v (seconds).
  void observe(const std::string& name, double v);
  // Gauges read when rendering (queue length, running sequences): name -> current value.
  void set_gauge_source(std::function<std::map<std::string, double>()> fn);
  std::string render() const;
  // The value of one counter sample (0 when never added): for tests and the load benchmark.
  double counter(const std::string& name, const std::map<std::string, std::string>& labels) const;

 private:
  struct Family {
    std::string help, type;  // "counter" | "histogram"
    std::map<std::string, double> samples;  // rendered label set -> value
    std::vector<double> bounds;             // histogram upper bounds
    std::vector<uint64_t> buckets;          // per bound (non-cumulative), last = +Inf
    double sum = 0;
    uint64_t count = 0;
  };
  void declare(const std::string& name, const std::string& type, const std::string& help,
               std::vector<double> bounds = {});
  mutable std::mutex mu_;
  std::map<std::string, Family> families_;
  std::function<std::map<std::string, double>()> gauges_;
};

}  // namespace retort
