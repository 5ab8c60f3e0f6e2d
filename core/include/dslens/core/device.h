// Device and dtype selection: every tensor dslens creates takes its options from a Compute.
#pragma once
#include <torch/torch.h>

#include <string>

namespace dslens {

struct Compute {
  torch::Device device = torch::kCPU;
  torch::Dtype dtype = torch::kFloat64;
  torch::TensorOptions options() const {
    return torch::TensorOptions().device(device).dtype(dtype);
  }
};

// "cpu", "cuda", "cuda:N" or "auto" (CUDA device 0 when available, else CPU).
// Throws InvalidArgument for anything else or for a CUDA device that is not present.
torch::Device parse_device(const std::string& text);
// "float64" (alias "double") or "float32" (alias "float").
torch::Dtype parse_dtype(const std::string& text);
std::string dtype_name(torch::Dtype dtype);
Compute make_compute(const std::string& device, const std::string& dtype);

// "cuda:0 float" etc.: a key for constants cached per device and dtype (copied to a device once,
// so that later calls copy nothing from the host).
std::string device_dtype_key(const torch::TensorOptions& options);

// Sets LibTorch's intra-op thread count; n <= 0 means one per hardware thread. Returns the count.
int set_num_threads(int n);

}  // namespace dslens
