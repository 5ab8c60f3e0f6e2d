// VAE training: ELBO decreases, exact resume, data order, distributed equivalence.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <torch/torch.h>
#include <unistd.h>

#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "dslens/core/errors.h"
#include "dslens/nn/checkpoint.h"
#include "dslens/nn/distributed.h"
#include "dslens/nn/trainer.h"
#include "test_support.h"

using dslens::nn::TrainConfig;
using dslens::nn::VaeArch;

namespace test_trainer_detail {

VaeArch tiny_arch() {
  VaeArch a;
  a.stamp_size = 16;
  a.latent_dim = 4;
  a.channels = {8, 16};
  a.groups = 4;
  return a;
}

// Elliptical Gaussian blobs with random centre, size, axis ratio and angle; unit peak.
torch::Tensor blobs(int64_t n, int64_t s, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  auto u = torch::rand({n, 5}, gen, opts);
  auto cx = (u.select(1, 0) - 0.5) * 4 + (s - 1) / 2.0;
  auto cy = (u.select(1, 1) - 0.5) * 4 + (s - 1) / 2.0;
  auto sig = 1.0 + 2.0 * u.select(1, 2);
  auto q = 0.4 + 0.6 * u.select(1, 3);
  auto phi = 3.14159 * u.select(1, 4);
  auto g = torch::arange(s, opts);
  auto yy = g.view({1, s, 1});
  auto xx = g.view({1, 1, s});
  auto dx = xx - cx.view({n, 1, 1});
  auto dy = yy - cy.view({n, 1, 1});
  auto c = torch::cos(phi).view({n, 1, 1});
  auto sn = torch::sin(phi).view({n, 1, 1});
  auto a = dx * c + dy * sn;
  auto b = -dx * sn + dy * c;
  auto r2 = a.pow(2) + (b / q.view({n, 1, 1})).pow(2);
  return torch::exp(-0.5 * r2 / sig.view({n, 1, 1}).pow(2));
}

TrainConfig tiny_config() {
  TrainConfig c;
  c.steps = 6;
  c.batch_size = 8;
  c.lr = 3e-3;
  c.seed = 11;
  c.pixel_sigma = 0.1;
  c.checkpoint_every = 2;
  c.eval_every = 3;
  c.log_every = 1;
  c.eval_batch = 16;
  return c;
}

// Flips each stamp left-right with probability 1/2 using the step's generator.
torch::Tensor flip_augment(const torch::Tensor& x, torch::Generator& gen) {
  auto flip = torch::rand({x.size(0)}, gen, torch::TensorOptions().dtype(torch::kFloat64)) < 0.5;
  return torch::where(flip.view({-1, 1, 1}), x.flip({2}), x);
}

void expect_same_weights(dslens::nn::VaeImpl& a, dslens::nn::VaeImpl& b, double tol) {
  auto pa = a.named_parameters();
  auto pb = b.named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (const auto& item : pa) {
    const auto& other = pb[item.key()];
    const double diff = (item.value() - other).abs().max().item<double>();
    EXPECT_LE(diff, tol) << item.key();
  }
}

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const int port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

// Runs body(rank, opts with that rank's communicator) on two Gloo ranks, one thread each; returns
// each rank's exception message ("" when none; an Interrupted one prefixed "Interrupted: ").
std::vector<std::string> on_two_ranks(
    const dslens::nn::TrainOptions& opts,
    const std::function<void(int, dslens::nn::TrainOptions&)>& body) {
  const int port = free_port();
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      try {
        dslens::nn::DistributedEnv env;
        env.rank = r;
        env.world_size = 2;
        env.master_addr = "127.0.0.1";
        env.master_port = port;
        auto comm = dslens::nn::make_communicator(env, torch::kCPU);
        auto o = opts;
        o.comm = comm.get();
        body(r, o);
      } catch (const dslens::Interrupted& e) {
        errors[static_cast<size_t>(r)] = std::string("Interrupted: ") + e.what();
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  return errors;
}

}  // namespace test_trainer_detail

using namespace test_trainer_detail;

TEST(Trainer, BatchIndicesAreEpochPermutationsDependingOnlyOnSeedAndStep) {
  // 10 stamps, batch 4: steps 0..4 cover two epochs; each epoch visits every stamp once.
  std::vector<int64_t> seen;
  for (int64_t step = 0; step < 5; ++step) {
    auto idx = dslens::nn::batch_indices(10, 4, step, 3);
    EXPECT_TRUE(torch::equal(idx, dslens::nn::batch_indices(10, 4, step, 3)));
    for (int64_t i = 0; i < 4; ++i) seen.push_back(idx[i].item<int64_t>());
  }
  for (int e = 0; e < 2; ++e) {
    std::vector<int64_t> epoch(seen.begin() + e * 10, seen.begin() + (e + 1) * 10);
    std::sort(epoch.begin(), epoch.end());
    for (int64_t i = 0; i < 10; ++i) EXPECT_EQ(epoch[static_cast<size_t>(i)], i);
  }
  EXPECT_FALSE(
      torch::equal(dslens::nn::batch_indices(10, 4, 0, 3), dslens::nn::batch_indices(10, 4, 0, 4)));
}

TEST(Trainer, ElboDecreases) {
  auto data = blobs(96, 16, 1);
  auto train = data.narrow(0, 0, 64);
  auto val = data.narrow(0, 64, 32);
  auto cfg = tiny_config();
  cfg.steps = 40;
  cfg.batch_size = 16;
  cfg.eval_every = 40;
  dslens::nn::TrainOptions opts;
  torch::manual_seed(cfg.seed);
  dslens::nn::Vae init(tiny_arch(), dslens::nn::PixelNorm::fit(train));
  const auto before = dslens::nn::evaluate_vae(*init, val, cfg.pixel_sigma, cfg.seed, 32);
  auto res = dslens::nn::train_vae(cfg, tiny_arch(), train, val, opts);
  EXPECT_EQ(res.step, 40);
  EXPECT_EQ(res.val.count, 32);
  EXPECT_GT(res.val.elbo, before.elbo + 0.3 * std::abs(before.elbo))
      << before.elbo << " -> " << res.val.elbo;
  EXPECT_LT(res.val.mse, 0.5 * before.mse);
  // Training loss of the last steps below that of the first ones.
  ASSERT_GE(res.train_history.size(), 10u);
  EXPECT_LT(res.train_history.back().loss, res.train_history.front().loss);
  ASSERT_EQ(res.val_history.size(), 1u);
}

TEST(Trainer, ResumeEqualsUninterruptedRun) {
  auto data = blobs(40, 16, 2);
  auto train = data.narrow(0, 0, 32);
  auto val = data.narrow(0, 32, 8);
  auto cfg = tiny_config();
  const auto dir_a = dslens::testing::temp_dir("train_a");
  const auto dir_b = dslens::testing::temp_dir("train_b");
  dslens::nn::TrainOptions opts;
  opts.augment = flip_augment;
  opts.checkpoint_dir = dir_a;
  auto full = dslens::nn::train_vae(cfg, tiny_arch(), train, val, opts);

  opts.checkpoint_dir = dir_b;
  opts.stop_after_step = 3;  // not a multiple of checkpoint_every: a checkpoint is still written
  auto part = dslens::nn::train_vae(cfg, tiny_arch(), train, val, opts);
  EXPECT_EQ(part.step, 3);
  EXPECT_EQ(dslens::nn::read_checkpoint_meta(dir_b).step, 3);
  opts.stop_after_step = -1;
  opts.resume = true;
  auto rest = dslens::nn::train_vae(cfg, tiny_arch(), train, val, opts);
  EXPECT_EQ(rest.start_step, 3);
  EXPECT_EQ(rest.step, 6);
  expect_same_weights(*full.vae, *rest.vae, 0.0);
  // The saved checkpoints agree too, as do the loss histories.
  auto a = dslens::nn::load_vae(dir_a);
  auto b = dslens::nn::load_vae(dir_b);
  expect_same_weights(*a.vae, *b.vae, 0.0);
  ASSERT_EQ(full.train_history.size(), rest.train_history.size());
  EXPECT_DOUBLE_EQ(full.train_history.back().loss, rest.train_history.back().loss);

  // A stop request (a signal, through TrainOptions::stop_requested) after step 3: a checkpoint
  // there (not a multiple of checkpoint_every) and Interrupted; resumed, the uninterrupted weights.
  const auto dir_c = dslens::testing::temp_dir("train_c");
  dslens::nn::TrainOptions stop = opts;
  stop.checkpoint_dir = dir_c;
  stop.resume = false;
  int polls = 0;
  stop.stop_requested = [&polls] { return ++polls == 3; };
  EXPECT_THROW(dslens::nn::train_vae(cfg, tiny_arch(), train, val, stop), dslens::Interrupted);
  EXPECT_EQ(polls, 3);
  EXPECT_EQ(dslens::nn::read_checkpoint_meta(dir_c).step, 3);
  stop.stop_requested = nullptr;
  stop.resume = true;
  auto after_stop = dslens::nn::train_vae(cfg, tiny_arch(), train, val, stop);
  EXPECT_EQ(after_stop.start_step, 3);
  expect_same_weights(*full.vae, *after_stop.vae, 0.0);

  // Resuming with another seed is refused.
  cfg.seed = 12;
  EXPECT_THROW(dslens::nn::train_vae(cfg, tiny_arch(), train, val, opts), dslens::InvalidArgument);
}

TEST(Trainer, BadDataIsAClearError) {
  auto cfg = tiny_config();
  dslens::nn::TrainOptions opts;
  auto data = blobs(16, 16, 3);
  data[5][1][1] = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW(dslens::nn::train_vae(cfg, tiny_arch(), data, {}, opts), dslens::InvalidArgument);
  EXPECT_THROW(
      dslens::nn::train_vae(cfg, tiny_arch(), torch::zeros({0, 16, 16}, torch::kFloat64), {}, opts),
      dslens::InvalidArgument);
  EXPECT_THROW(dslens::nn::train_vae(cfg, tiny_arch(), blobs(16, 32, 3), {}, opts),
               dslens::InvalidArgument);
  opts.resume = true;
  opts.checkpoint_dir = dslens::testing::temp_dir("train_noresume");
  EXPECT_THROW(dslens::nn::train_vae(cfg, tiny_arch(), blobs(16, 16, 3), {}, opts),
               dslens::InputError);
}

TEST(Trainer, ConfigErrorsNameThePath) {
  auto j = nlohmann::json::parse(R"({"train": {"steps": 0}, "model": {"stamp_size": 60}})");
  auto root = dslens::ConfigNode::root(j);
  try {
    TrainConfig::from_config(root.at("train"));
    FAIL();
  } catch (const dslens::ConfigError& e) {
    EXPECT_EQ(e.path(), "/train/steps");
  }
  try {
    dslens::nn::vae_arch_from_config(root.at("model"));
    FAIL();
  } catch (const dslens::ConfigError& e) {
    EXPECT_EQ(e.path(), "/model");
    EXPECT_NE(std::string(e.what()).find("multiple of"), std::string::npos) << e.what();
  }
  j = nlohmann::json::parse(R"({"train": {"stepz": 3}})");
  EXPECT_THROW(TrainConfig::from_config(dslens::ConfigNode::root(j).at("train")),
               dslens::ConfigError);
}

TEST(Distributed, EnvironmentIsReadAndChecked) {
  ::unsetenv("SLURM_NTASKS");
  ::setenv("WORLD_SIZE", "2", 1);
  ::setenv("RANK", "1", 1);
  ::unsetenv("MASTER_ADDR");
  EXPECT_THROW(dslens::nn::DistributedEnv::from_environment(), dslens::InvalidArgument);
  ::setenv("MASTER_ADDR", "127.0.0.1", 1);
  ::setenv("MASTER_PORT", "12345", 1);
  auto env = dslens::nn::DistributedEnv::from_environment();
  EXPECT_EQ(env.rank, 1);
  EXPECT_EQ(env.world_size, 2);
  EXPECT_EQ(env.master_port, 12345);
  ::setenv("RANK", "2", 1);
  EXPECT_THROW(dslens::nn::DistributedEnv::from_environment(), dslens::InvalidArgument);
  for (const char* v : {"WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"}) ::unsetenv(v);
  EXPECT_FALSE(dslens::nn::DistributedEnv::from_environment().active());
}

// Two ranks (threads of this process, each with its own Gloo process group over a local
// TCPStore) taking halves of the global batch end with the weights of one process.
TEST(Distributed, TwoGlooRanksMatchOneProcess) {
  if (!dslens::nn::gloo_available()) GTEST_SKIP() << "built without gloo headers (libgloo-dev)";
  auto data = blobs(40, 16, 4);
  auto train = data.narrow(0, 0, 32);
  auto val = data.narrow(0, 32, 8);
  auto cfg = tiny_config();
  cfg.steps = 4;
  cfg.dtype = "float64";  // so that summation order cannot matter at the tolerance below
  dslens::nn::TrainOptions opts;
  opts.augment = flip_augment;
  auto single = dslens::nn::train_vae(cfg, tiny_arch(), train, val, opts);

  std::vector<dslens::nn::TrainResult> results(2);
  const auto errors = on_two_ranks(opts, [&](int r, dslens::nn::TrainOptions& o) {
    results[static_cast<size_t>(r)] = dslens::nn::train_vae(cfg, tiny_arch(), train, val, o);
  });
  ASSERT_EQ(errors[0], "");
  ASSERT_EQ(errors[1], "");
  expect_same_weights(*results[0].vae, *results[1].vae, 0.0);
  // A stop asked of rank 1 alone (its own signal) stops both ranks after the same step.
  const auto stopped = on_two_ranks(opts, [&](int r, dslens::nn::TrainOptions& o) {
    int polls = 0;
    if (r == 1) o.stop_requested = [&polls] { return ++polls == 2; };
    dslens::nn::train_vae(cfg, tiny_arch(), train, val, o);
  });
  for (const auto& m : stopped)
    EXPECT_NE(m.find("Interrupted: VAE training stopped on request after step 2 of 4"),
              std::string::npos)
        << m;
  expect_same_weights(*results[0].vae, *single.vae, 1e-9);
  // And they moved away from the initial weights by much more than that.
  torch::manual_seed(cfg.seed);
  dslens::nn::Vae init(tiny_arch());
  init->to(torch::kFloat64);
  double moved = 0;
  for (const auto& p : init->named_parameters()) {
    moved = std::max(
        moved, (p.value() - single.vae->named_parameters()[p.key()]).abs().max().item<double>());
  }
  EXPECT_GT(moved, 1e-3);
}
