#include <algorithm>
#include <atomic>

#include "dslens/physics/profile.h"

namespace dslens::physics {
namespace cpu_kernels_detail {

std::atomic<bool>& enabled() {
  static std::atomic<bool> on{true};
  return on;
}

std::atomic<bool>& cuda_enabled() {
  static std::atomic<bool> on{true};
  return on;
}

std::atomic<int>& epl_terms() {
  static std::atomic<int> n{0};
  return n;
}

}  // namespace cpu_kernels_detail

void set_cpu_kernels(bool on) {
  cpu_kernels_detail::enabled().store(on);
}

bool cpu_kernels() {
  return cpu_kernels_detail::enabled().load();
}

void set_cuda_kernels(bool on) {
  cpu_kernels_detail::cuda_enabled().store(on);
}

bool cuda_kernels() {
  return cuda_kernels_built() && cpu_kernels_detail::cuda_enabled().load();
}

bool cuda_kernels_built() {
#ifdef DSLENS_WITH_CUDA_KERNELS
  return true;
#else
  return false;
#endif
}

void set_epl_series_terms(int n) {
  cpu_kernels_detail::epl_terms().store(std::max(n, 0));
}

int fixed_epl_series_terms() {
  return cpu_kernels_detail::epl_terms().load();
}

}  // namespace dslens::physics
