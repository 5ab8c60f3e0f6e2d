#include <atomic>

#include "dslens/physics/profile.h"

namespace dslens::physics {
namespace cpu_kernels_detail {

std::atomic<bool>& enabled() {
  static std::atomic<bool> on{true};
  return on;
}

}  // namespace cpu_kernels_detail

void set_cpu_kernels(bool on) {
  cpu_kernels_detail::enabled().store(on);
}

bool cpu_kernels() {
  return cpu_kernels_detail::enabled().load();
}

}  // namespace dslens::physics
