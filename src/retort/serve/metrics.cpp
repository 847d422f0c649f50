// retort/serve/metrics.cpp — Prometheus text for the server (see metrics.h).
#include "retort/serve/metrics.h"

#include <cmath>
#include <cstdio>

#include "retort/util/error.h"

namespace retort {

namespace {

// Label values escaped as the exposition format asks: backslash, double quote and newline.
std::string escape_label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::string label_set(const std::map<std::string, std::string>& labels) {
  if (labels.empty()) return "";
  std::string out = "{";
  for (const auto& [k, v] : labels) {
    if (out.size() > 1) out += ",";
    out += k + "=\"" + escape_label(v) + "\"";
  }
  return out + "}";
}

std::string number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

}  // namespace

Metrics::Metrics() {
  declare("retort_requests_total", "counter", "HTTP requests answered, by endpoint and status code.");
  declare("retort_prompt_tokens_total", "counter", "Prompt tokens of served requests.");
  declare("retort_completion_tokens_total", "counter", "Completion tokens generated for served requests.");
  declare("retort_watermarked_tokens_total", "counter", "Completion tokens generated under a watermark, by scheme.");
  declare("retort_policy_actions_total", "counter",
          "Logprob and quota policy actions, by action (capped, refused, rounded, rate_limited, ...).");
  declare("retort_watermark_detect_total", "counter", "Calls of POST /v1/watermark/detect.");
  declare("retort_monitor_events_total", "counter", "Requests the crawl monitor observed.");
  declare("retort_monitor_flagged_total", "counter", "Accounts and clusters the crawl monitor flagged, by kind.");
  declare("retort_monitor_actions_total", "counter", "Actions the crawl monitor decided on flagging, by action.");
  declare("retort_monitor_enforced_total", "counter",
          "Requests a monitor action applied to (block, throttle, cap_logprobs, antidistill), by action.");
  // Step times from ~1 ms (one decode row of a small model) to seconds (a long prefill).
  declare("retort_step_seconds", "histogram", "Duration of one engine step (a forward pass and sampling).",
          {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5});
  declare("retort_time_to_first_token_seconds", "histogram", "From request arrival to its first generated token.",
          {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60});
  declare("retort_request_seconds", "histogram", "From request arrival to its last byte of response.",
          {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120});
}

void Metrics::declare(const std::string& name, const std::string& type, const std::string& help,
                      std::vector<double> bounds) {
  Family f;
  f.help = help;
  f.type = type;
  f.buckets.assign(bounds.size() + 1, 0);
  f.bounds = std::move(bounds);
  families_[name] = std::move(f);
}

void Metrics::add(const std::string& name, const std::map<std::string, std::string>& labels, double v) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = families_.find(name);
  check(it != families_.end() && it->second.type == "counter", "metrics: no counter named ", name);
  it->second.samples[label_set(labels)] += v;
}

void Metrics::observe(const std::string& name, double v) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = families_.find(name);
  check(it != families_.end() && it->second.type == "histogram", "metrics: no histogram named ", name);
  Family& f = it->second;
  size_t b = 0;
  while (b < f.bounds.size() && v > f.bounds[b]) ++b;
  ++f.buckets[b];
  f.sum += v;
  ++f.count;
}

void Metrics::set_gauge_source(std::function<std::map<std::string, double>()> fn) {
  std::lock_guard<std::mutex> lock(mu_);
  gauges_ = std::move(fn);
}

double Metrics::counter(const std::string& name, const std::map<std::string, std::string>& labels) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = families_.find(name);
  if (it == families_.end()) return 0;
  auto s = it->second.samples.find(label_set(labels));
  return s == it->second.samples.end() ? 0 : s->second;
}

std::string Metrics::render() const {
  std::map<std::string, double> gauges;
  std::function<std::map<std::string, double>()> source;
  {
    std::lock_guard<std::mutex> lock(mu_);
    source = gauges_;
  }
  if (source) gauges = source();  // outside the lock: the source may take other locks
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  for (const auto& [name, f] : families_) {
    out += "# HELP " + name + " " + f.help + "\n# TYPE " + name + " " + f.type + "\n";
    if (f.type == "counter") {
      for (const auto& [labels, v] : f.samples) out += name + labels + " " + number(v) + "\n";
    } else {
      uint64_t cum = 0;
      for (size_t b = 0; b <= f.bounds.size(); ++b) {
        cum += f.buckets[b];
        const std::string le = b < f.bounds.size() ? number(f.bounds[b]) : "+Inf";
        out += name + "_bucket{le=\"" + le + "\"} " + std::to_string(cum) + "\n";
      }
      out += name + "_sum " + number(f.sum) + "\n" + name + "_count " + std::to_string(f.count) + "\n";
    }
  }
  for (const auto& [name, v] : gauges) out += "# TYPE " + name + " gauge\n" + name + " " + number(v) + "\n";
  return out;
}

}  // namespace retort
