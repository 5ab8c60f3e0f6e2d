// Data-parallel training over LibTorch's c10d: ProcessGroupGloo for CPU tensors, ProcessGroupNCCL
// for CUDA tensors when LibTorch was built with it (USE_C10D_NCCL), rendezvous through a TCPStore
// on MASTER_ADDR:MASTER_PORT.
//
// Ranks come from RANK / WORLD_SIZE, or SLURM_PROCID / SLURM_NTASKS under srun. MASTER_ADDR is
// required when the world has more than one process; MASTER_PORT defaults to 29500. Gloo binds to
// GLOO_SOCKET_IFNAME when set, else to the loopback address when MASTER_ADDR is local, else to the
// address of the host name.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>

namespace dslens::nn {

struct DistributedEnv {
  int rank = 0;
  int world_size = 1;
  std::string master_addr;
  int master_port = 29500;
  std::string source;  // "single", "env" or "slurm"
  bool active() const { return world_size > 1; }
  // Reads the variables above; InvalidArgument when they are inconsistent (rank outside the
  // world, MASTER_ADDR missing for a world of several processes, non-numeric values).
  static DistributedEnv from_environment();
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual std::string backend() const = 0;
  // In place: every rank ends with the mean over ranks of `t` (any device; same shape everywhere).
  virtual void allreduce_mean(torch::Tensor& t) = 0;
  // In place: every rank ends with root's `t`.
  virtual void broadcast(torch::Tensor& t, int root = 0) = 0;
  virtual void barrier() = 0;
};

// Whether this build has the Gloo process group (needs gloo headers at build time).
bool gloo_available();
// Whether this build has the NCCL process group.
bool nccl_available();

// A communicator for `env` whose collectives act on tensors on `device` (NCCL for CUDA devices
// when available, else Gloo with a copy through the CPU). Blocks until all ranks have joined.
// InvalidArgument when the build has no c10d backend; dslens::Error when the rendezvous fails.
std::unique_ptr<Communicator> make_communicator(const DistributedEnv& env, torch::Device device);

}  // namespace dslens::nn
