// A reader of the Prometheus text exposition format for the metrics tests: enough of it to check
// what coordinator/metrics.cpp writes (sample lines "name{label="value",...} number", comments
// skipped, label values unescaped). The sibling test parse_metrics.py reads the same text with
// prometheus_client's own parser.
#pragma once

#include <cstdlib>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace shardlm::coordinator::testing {

struct MetricSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// Parses every sample line; a malformed one adds a test failure naming it.
inline std::vector<MetricSample> ParseMetricsText(const std::string& text) {
  std::vector<MetricSample> samples;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    MetricSample s;
    size_t i = line.find_first_of("{ ");
    if (i == std::string::npos) {
      ADD_FAILURE() << "metrics line without a value: " << line;
      continue;
    }
    s.name = line.substr(0, i);
    if (line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        const size_t eq = line.find("=\"", i);
        if (eq == std::string::npos) break;
        const std::string key = line.substr(i, eq - i);
        std::string value;
        size_t j = eq + 2;
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\' && j + 1 < line.size()) {
            ++j;
            value += line[j] == 'n' ? '\n' : line[j];
          } else {
            value += line[j];
          }
        }
        s.labels[key] = value;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      if (i >= line.size() || line[i] != '}') {
        ADD_FAILURE() << "metrics line with unterminated labels: " << line;
        continue;
      }
      ++i;
    }
    const std::string number = line.substr(i);
    char* end = nullptr;
    s.value = std::strtod(number.c_str(), &end);
    if (end == number.c_str() || *end != '\0') {
      ADD_FAILURE() << "metrics line with a bad value: " << line;
      continue;
    }
    samples.push_back(std::move(s));
  }
  return samples;
}

// The value of the one sample named `name` whose labels include `labels`; a test failure (and
// -1) when there is none or more than one.
inline double MetricValue(const std::vector<MetricSample>& samples, const std::string& name,
                          const std::map<std::string, std::string>& labels = {}) {
  const MetricSample* found = nullptr;
  int matches = 0;
  for (const MetricSample& s : samples) {
    if (s.name != name) continue;
    bool all = true;
    for (const auto& [k, v] : labels) {
      auto it = s.labels.find(k);
      if (it == s.labels.end() || it->second != v) all = false;
    }
    if (all) {
      found = &s;
      ++matches;
    }
  }
  if (matches != 1) {
    ADD_FAILURE() << matches << " samples named " << name << " match the labels";
    return -1;
  }
  return found->value;
}

}  // namespace shardlm::coordinator::testing
