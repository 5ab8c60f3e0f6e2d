#include "dslens/samplers/row_parallel.h"

#include <ATen/Config.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "dslens/core/errors.h"

namespace dslens::samplers {
namespace row_parallel_detail {

thread_local bool in_worker = false;
thread_local int worker_intra_threads = 1;  // this worker's intra-op thread count

// Persistent workers with their own intra-op thread counts: a thread per call would cost more than
// a small slice's evaluation, and the intra-op count is per thread (OpenMP's nthreads ICV), so
// each worker keeps the count it was last given.
class SlicePool {
 public:
  explicit SlicePool(int n)
      : slot_(static_cast<size_t>(n), nullptr), outer_(at::get_num_threads()) {
    int ready = 0;
    for (int k = 0; k < n; ++k) {
      workers_.emplace_back([this, k, &ready] {
        // lazy_init first, or the first parallel_for would reset this thread to the global count.
        (void)at::get_num_threads();
        at::set_num_threads(1);
        in_worker = true;
        {
          std::lock_guard<std::mutex> lock(m_);
          ++ready;
        }
        done_.notify_all();
        work(k);
      });
    }
    std::unique_lock<std::mutex> lock(m_);
    done_.wait(lock, [&] { return ready == n; });
    lock.unlock();
    // set_num_threads(1) above also set the process-wide count that new threads start from.
    at::set_num_threads(outer_);
  }

  ~SlicePool() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

  int size() const { return static_cast<int>(workers_.size()); }

  // Runs tasks[k] on worker k (tasks.size() <= size()), each worker with `intra` intra-op threads,
  // and returns when all have finished.
  void run(std::vector<std::function<void()>>& tasks, int intra) {
    std::lock_guard<std::mutex> one_caller(run_);
    std::unique_lock<std::mutex> lock(m_);
    for (size_t k = 0; k < tasks.size(); ++k) slot_[k] = &tasks[k];
    pending_ = static_cast<int>(tasks.size());
    intra_ = intra;
    retuned_ = false;
    ++generation_;
    wake_.notify_all();
    done_.wait(lock, [&] { return pending_ == 0; });
    // A worker that changed its count also set the process-wide one that new threads start from.
    if (retuned_) at::set_num_threads(outer_);
  }

 private:
  void work(int k) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(m_);
    while (true) {
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      std::function<void()>* task = slot_[static_cast<size_t>(k)];
      slot_[static_cast<size_t>(k)] = nullptr;
      if (!task) continue;
      const int intra = intra_;
      if (intra != worker_intra_threads) {
        at::set_num_threads(intra);
        worker_intra_threads = intra;
        retuned_ = true;
      }
      lock.unlock();
      (*task)();  // tasks catch their own exceptions
      lock.lock();
      if (--pending_ == 0) done_.notify_all();
    }
  }

  std::mutex run_, m_;
  std::condition_variable wake_, done_;
  std::vector<std::function<void()>*> slot_;
  std::vector<std::thread> workers_;
  int outer_;  // the creating thread's intra-op count
  int pending_ = 0, intra_ = 1;
  uint64_t generation_ = 0;
  bool stop_ = false, retuned_ = false;
};

// One pool per process, sized by the first caller; later callers use at most its size.
SlicePool& pool(int threads) {
  static std::mutex m;
  static std::unique_ptr<SlicePool> p;
  std::lock_guard<std::mutex> lock(m);
  if (!p) p = std::make_unique<SlicePool>(threads);
  return *p;
}

}  // namespace row_parallel_detail

int row_parallel_threads(const torch::Device& device) {
#if AT_PARALLEL_OPENMP
  return device.is_cpu() ? at::get_num_threads() : 1;
#else
  // The native and TBB backends share one intra-op pool between threads and cannot be set to one
  // thread per caller: slices would only contend for it.
  (void)device;
  return 1;
#endif
}

LogDensityFn row_parallel(LogDensityFn f, int64_t groups, int threads) {
  if (threads <= 1) return f;
  return [f = std::move(f), groups, threads](const torch::Tensor& q) -> LogDensityValue {
    using row_parallel_detail::in_worker;
    if (in_worker || !q.device().is_cpu() || q.dim() != 2 || groups < 1 ||
        q.size(0) % groups != 0) {
      return f(q);
    }
    auto& workers = row_parallel_detail::pool(threads);
    const int64_t rows = q.size(0) / groups, dim = q.size(1);
    const int64_t parts = std::min<int64_t>({rows, threads, workers.size()});
    if (parts < 2) return f(q);

    const auto q3 = q.reshape({groups, rows, dim});
    std::vector<LogDensityValue> out(static_cast<size_t>(parts));
    std::vector<std::exception_ptr> errors(static_cast<size_t>(parts));
    std::vector<std::function<void()>> tasks;
    std::vector<int64_t> sizes;  // rows of every group in each slice
    int64_t begin = 0;
    for (int64_t k = 0; k < parts; ++k) {
      const int64_t n = sizes.emplace_back(rows / parts + (k < rows % parts ? 1 : 0));
      const auto slice = q3.narrow(1, begin, n).reshape({groups * n, dim});
      begin += n;
      tasks.emplace_back([&f, &out, &errors, slice, k] {
        try {
          out[static_cast<size_t>(k)] = f(slice);
        } catch (...) {
          errors[static_cast<size_t>(k)] = std::current_exception();
        }
      });
    }
    // Threads left over when rows are few (a many-core node) go to the slices' own ops.
    workers.run(tasks, std::max(1, threads / static_cast<int>(parts)));
    for (const auto& e : errors) {
      if (e) std::rethrow_exception(e);
    }

    std::vector<torch::Tensor> lp, grad;
    for (int64_t k = 0; k < parts; ++k) {
      const auto& v = out[static_cast<size_t>(k)];
      const int64_t n = sizes[static_cast<size_t>(k)];
      if (!v.log_p.defined() || !v.grad.defined() || v.log_p.numel() != groups * n ||
          v.grad.numel() != groups * n * dim) {
        throw Error("log-density returned values of the wrong size for a slice of " +
                    std::to_string(groups * n) + " rows");
      }
      lp.push_back(v.log_p.view({groups, n}));
      grad.push_back(v.grad.view({groups, n, dim}));
    }
    return LogDensityValue{torch::cat(lp, 1).reshape({groups * rows}),
                           torch::cat(grad, 1).reshape({groups * rows, dim})};
  };
}

}  // namespace dslens::samplers
