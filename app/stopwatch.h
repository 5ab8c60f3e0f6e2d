// Wall-clock seconds for the app's logs and outputs (steady clock: immune to clock changes).
#pragma once
#include <chrono>

namespace dslens::app {

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace dslens::app
