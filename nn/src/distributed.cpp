#include "dslens/nn/distributed.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdlib>

#include "dslens/core/errors.h"

// Gloo's process group is declared only when USE_C10D_GLOO is defined and gloo's headers exist
// (Debian: libgloo-dev, matching the libgloo0 that libtorch_cpu links).
#if !defined(DSLENS_NO_C10D) && __has_include(<gloo/config.h>) &&       \
    __has_include(<torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>)
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#define DSLENS_HAVE_GLOO 1
#endif
#if defined(USE_C10D_NCCL) && defined(DSLENS_NO_C10D)
#undef USE_C10D_NCCL
#endif
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif

namespace dslens::nn {
namespace distributed_detail {

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return (v && *v) ? std::string(v) : fallback;
}

int env_int(const char* name, int fallback) {
  const std::string text = env_or(name, "");
  if (text.empty()) return fallback;
  try {
    size_t pos = 0;
    const int v = std::stoi(text, &pos);
    if (pos != text.size()) throw std::invalid_argument(text);
    return v;
  } catch (const std::exception&) {
    throw InvalidArgument(std::string("environment variable ") + name + "='" + text +
                          "' is not an integer");
  }
}

bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr == "::1" || addr.rfind("127.", 0) == 0;
}

std::chrono::milliseconds timeout() {
  return std::chrono::milliseconds(1000LL * env_int("DSLENS_DIST_TIMEOUT", 300));
}

#if defined(DSLENS_HAVE_GLOO) || defined(USE_C10D_NCCL)
c10::intrusive_ptr<c10d::Store> make_store(const DistributedEnv& env) {
  c10d::TCPStoreOptions opts;
  opts.port = static_cast<std::uint16_t>(env.master_port);
  opts.isServer = env.rank == 0;
  opts.numWorkers = static_cast<std::size_t>(env.world_size);
  opts.waitWorkers = true;
  opts.timeout = timeout();
  return c10::make_intrusive<c10d::TCPStore>(env.master_addr, opts);
}

// Collectives on one process group type (ProcessGroupGloo, ProcessGroupNCCL).
template <class PG>
class C10dCommunicator : public Communicator {
 public:
  C10dCommunicator(c10::intrusive_ptr<c10d::Store> store, c10::intrusive_ptr<PG> pg, int rank,
                   int world, std::string backend, torch::Device device)
      : store_(std::move(store)),
        pg_(std::move(pg)),
        rank_(rank),
        world_(world),
        backend_(std::move(backend)),
        device_(device),
        via_cpu_(backend_ == "gloo" && !device.is_cpu()) {}
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  std::string backend() const override { return backend_; }

  void allreduce_mean(torch::Tensor& t) override {
    torch::NoGradGuard guard;
    auto buf = via_cpu_ ? t.to(torch::kCPU).contiguous() : t.contiguous();
    std::vector<torch::Tensor> v{buf};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    pg_->allreduce(v, opts)->wait();
    buf.div_(static_cast<double>(world_));
    if (!buf.is_same(t)) t.copy_(buf);
  }

  void broadcast(torch::Tensor& t, int root) override {
    torch::NoGradGuard guard;
    auto buf = via_cpu_ ? t.to(torch::kCPU).contiguous() : t.contiguous();
    std::vector<torch::Tensor> v{buf};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    pg_->broadcast(v, opts)->wait();
    if (!buf.is_same(t)) t.copy_(buf);
  }

  void barrier() override {
    // A tiny all-reduce: works the same on every backend.
    auto t = torch::zeros({1}, torch::TensorOptions().device(device_));
    allreduce_mean(t);
  }

 private:
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<PG> pg_;
  int rank_, world_;
  std::string backend_;
  torch::Device device_;
  bool via_cpu_;
};
#endif

// The world of one process: collectives are identities.
class SingleCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  std::string backend() const override { return "single"; }
  void allreduce_mean(torch::Tensor&) override {}
  void broadcast(torch::Tensor&, int) override {}
  void barrier() override {}
};

}  // namespace distributed_detail

DistributedEnv DistributedEnv::from_environment() {
  using namespace distributed_detail;
  DistributedEnv env;
  if (!env_or("WORLD_SIZE", "").empty()) {
    env.world_size = env_int("WORLD_SIZE", 1);
    env.rank = env_int("RANK", 0);
    env.source = "env";
  } else if (!env_or("SLURM_NTASKS", "").empty()) {
    env.world_size = env_int("SLURM_NTASKS", 1);
    env.rank = env_int("SLURM_PROCID", 0);
    env.source = "slurm";
  } else {
    env.source = "single";
  }
  if (env.world_size < 1) {
    throw InvalidArgument("world size must be >= 1, got " + std::to_string(env.world_size));
  }
  if (env.rank < 0 || env.rank >= env.world_size) {
    throw InvalidArgument("rank " + std::to_string(env.rank) + " is outside the world of " +
                          std::to_string(env.world_size) + " process(es)");
  }
  env.master_addr = env_or("MASTER_ADDR", "");
  env.master_port = env_int("MASTER_PORT", 29500);
  if (env.world_size > 1 && env.master_addr.empty()) {
    throw InvalidArgument("distributed run of " + std::to_string(env.world_size) +
                          " processes needs MASTER_ADDR (and optionally MASTER_PORT) set to the "
                          "address of rank 0");
  }
  if (env.master_port < 1 || env.master_port > 65535) {
    throw InvalidArgument("MASTER_PORT " + std::to_string(env.master_port) +
                          " is not a valid port");
  }
  return env;
}

bool gloo_available() {
#ifdef DSLENS_HAVE_GLOO
  return true;
#else
  return false;
#endif
}

bool nccl_available() {
#ifdef USE_C10D_NCCL
  return true;
#else
  return false;
#endif
}

std::unique_ptr<Communicator> make_communicator(const DistributedEnv& env, torch::Device device) {
  using namespace distributed_detail;
  if (!env.active()) return std::make_unique<SingleCommunicator>();
  const std::string where = env.master_addr + ":" + std::to_string(env.master_port);
  spdlog::info("rank {} of {}: joining the process group at {}", env.rank, env.world_size, where);
  try {
#ifdef USE_C10D_NCCL
    if (device.is_cuda()) {
      auto store = make_store(env);
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, env.rank, env.world_size, opts);
      return std::make_unique<C10dCommunicator<c10d::ProcessGroupNCCL>>(
          store, pg, env.rank, env.world_size, "nccl", device);
    }
#endif
#ifdef DSLENS_HAVE_GLOO
    auto store = make_store(env);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout());
    const std::string ifname = env_or("GLOO_SOCKET_IFNAME", "");
    if (!ifname.empty()) {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    } else if (is_loopback(env.master_addr)) {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    opts->threads = 2;
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, env.rank, env.world_size, opts);
    return std::make_unique<C10dCommunicator<c10d::ProcessGroupGloo>>(
        store, pg, env.rank, env.world_size, "gloo", device);
#else
    (void)device;
    throw InvalidArgument(
        "this dslens was built without a c10d backend for " + device.str() +
        ": install gloo's headers (Debian: libgloo-dev) and rebuild, or run a single process");
#endif
  } catch (const InputError&) {
    throw;
  } catch (const c10::Error& e) {
    throw Error("distributed rendezvous at " + where + " failed (rank " + std::to_string(env.rank) +
                " of " + std::to_string(env.world_size) + "): " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw Error("distributed rendezvous at " + where + " failed (rank " + std::to_string(env.rank) +
                " of " + std::to_string(env.world_size) + "): " + e.what());
  }
}

}  // namespace dslens::nn
