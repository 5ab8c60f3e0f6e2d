// Durations in progress lines and summaries: "4m07s", "2h13m"; "?" when unknown.
#pragma once
#include <cmath>
#include <cstdio>
#include <string>

namespace dslens::app {

inline std::string duration_text(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const auto total = static_cast<long long>(std::llround(s));
  char buf[32];
  if (total >= 3600) {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", total / 3600, (total / 60) % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", total / 60, total % 60);
  }
  return buf;
}

}  // namespace dslens::app
