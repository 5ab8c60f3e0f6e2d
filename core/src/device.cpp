#include "dslens/core/device.h"

#include <sstream>
#include <thread>

#include "dslens/core/errors.h"

namespace dslens {

std::string device_dtype_key(const torch::TensorOptions& options) {
  std::ostringstream key;
  key << options.device() << ' ' << options.dtype();
  return key.str();
}

torch::Device parse_device(const std::string& text) {
  if (text == "cpu") return torch::kCPU;
  if (text == "auto") {
    return torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0)
                                       : torch::Device(torch::kCPU);
  }
  if (text == "cuda" || text.rfind("cuda:", 0) == 0) {
    int index = 0;
    if (text.size() > 5) {
      const std::string digits = text.substr(5);
      if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) {
        throw InvalidArgument("device '" + text + "': expected cpu, cuda, cuda:N or auto");
      }
      index = std::stoi(digits);
    }
    if (!torch::cuda::is_available()) {
      throw InvalidArgument("device '" + text +
                            "': CUDA is not available in this build or machine; use cpu or auto");
    }
    const int count = static_cast<int>(torch::cuda::device_count());
    if (index >= count) {
      throw InvalidArgument("device '" + text + "': only " + std::to_string(count) +
                            " CUDA device(s) present");
    }
    return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  throw InvalidArgument("device '" + text + "': expected cpu, cuda, cuda:N or auto");
}

torch::Dtype parse_dtype(const std::string& text) {
  if (text == "float64" || text == "double") return torch::kFloat64;
  if (text == "float32" || text == "float") return torch::kFloat32;
  throw InvalidArgument("dtype '" + text + "': expected float64 or float32");
}

std::string dtype_name(torch::Dtype dtype) {
  if (dtype == torch::kFloat64) return "float64";
  if (dtype == torch::kFloat32) return "float32";
  return std::string(c10::toString(dtype));
}

Compute make_compute(const std::string& device, const std::string& dtype) {
  return Compute{parse_device(device), parse_dtype(dtype)};
}

int set_num_threads(int n) {
  if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(n);
  return n;
}

}  // namespace dslens
