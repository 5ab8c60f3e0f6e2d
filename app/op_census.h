// Counts the ATen operator calls made while an OpCensus is alive, on every thread (the autograd
// engine runs backward passes on its own threads), in total and by operator name. On a GPU every
// such call is at least one kernel launch plus the dispatcher's and autograd's CPU overhead (about
// 10 us each), so for the small batches of one lens the count, not the arithmetic, sets the time
// per log-density evaluation: the benches print it so that a change can be judged on a machine
// without a GPU. One census at a time: the counts are process-wide.
#pragma once

#include <ATen/record_function.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace dslens::app {

class OpCensus {
 public:
  OpCensus() {
    std::lock_guard<std::mutex> lock(state().mutex);
    state().by_name.clear();
    handle_ = at::addGlobalCallback(
        at::RecordFunctionCallback(&on_start).scopes({at::RecordScope::FUNCTION}));
  }
  ~OpCensus() { at::removeCallback(handle_); }
  OpCensus(const OpCensus&) = delete;
  OpCensus& operator=(const OpCensus&) = delete;

  int64_t operators() const {
    std::lock_guard<std::mutex> lock(state().mutex);
    int64_t n = 0;
    for (const auto& [name, count] : state().by_name) n += count;
    return n;
  }

  // Calls of one operator, e.g. "aten::_local_scalar_dense" (what .item() runs: a read back from
  // the device, which a captured CUDA graph cannot contain).
  int64_t count(const std::string& name) const {
    std::lock_guard<std::mutex> lock(state().mutex);
    const auto it = state().by_name.find(name);
    return it == state().by_name.end() ? 0 : it->second;
  }

  // Logs the `top` most frequent operators at debug level, one line each after `prefix`.
  void log_most_frequent(const std::string& prefix, size_t top) const {
    if (!spdlog::should_log(spdlog::level::debug)) return;
    for (const auto& [name, count] : most_frequent(top)) {
      spdlog::debug("{}{} x {}", prefix, count, name);
    }
  }

  // The `top` most frequent operators, most frequent first.
  std::vector<std::pair<std::string, int64_t>> most_frequent(size_t top) const {
    std::vector<std::pair<std::string, int64_t>> v;
    {
      std::lock_guard<std::mutex> lock(state().mutex);
      v.assign(state().by_name.begin(), state().by_name.end());
    }
    std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    if (v.size() > top) v.resize(top);
    return v;
  }

 private:
  struct State {
    std::mutex mutex;
    std::map<std::string, int64_t> by_name;
  };
  static State& state() {
    static State s;
    return s;
  }
  static std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction& fn) {
    std::lock_guard<std::mutex> lock(state().mutex);
    ++state().by_name[fn.name()];
    return nullptr;
  }
  at::CallbackHandle handle_;
};

}  // namespace dslens::app
