// `dslens train-vae` end to end: outputs, refusal of an existing folder, resume, config errors,
// and two data-parallel processes against one.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "test_support.h"
#include "tiny_vae_config.h"

namespace fs = std::filesystem;

namespace test_train_vae_detail {

struct Run {
  int code = -1;
  std::string out, err;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Runs `env_prefix dslens args` through the shell, capturing stdout and stderr.
Run run_capturing_streams(const std::string& args, const std::string& tmp,
                          const std::string& env_prefix = "") {
  const std::string o = tmp + "/stdout.txt", e = tmp + "/stderr.txt";
  const std::string cmd = env_prefix + " '" + std::string(DSLENS_EXECUTABLE) + "' " + args + " >'" +
                          o + "' 2>'" + e + "'";
  const int status = std::system(cmd.c_str());
  Run r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(o);
  r.err = slurp(e);
  return r;
}

std::string write_config(const std::string& dir, const nlohmann::json& j,
                         const std::string& name = "cfg.json") {
  const std::string path = dir + "/" + name;
  std::ofstream(path) << j.dump(2);
  return path;
}

void flatten(torch::serialize::InputArchive& archive, const std::string& prefix,
             std::map<std::string, torch::Tensor>& out) {
  for (const auto& key : archive.keys()) {
    torch::Tensor t;
    if (archive.try_read(key, t) && t.defined()) {
      out[prefix + key] = t;
      continue;
    }
    torch::serialize::InputArchive sub;
    if (archive.try_read(key, sub)) flatten(sub, prefix + key + ".", out);
  }
}

std::map<std::string, torch::Tensor> weights_of(const std::string& dir) {
  const auto sidecar = nlohmann::json::parse(slurp(dir + "/checkpoint.json"));
  torch::serialize::InputArchive archive;
  archive.load_from(dir + "/" + sidecar["weights"]["file"].get<std::string>());
  std::map<std::string, torch::Tensor> out;
  flatten(archive, "", out);
  return out;
}

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const int port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

}  // namespace test_train_vae_detail

using namespace test_train_vae_detail;

TEST(TrainVaeCommand, WritesReportRefusesExistingFolderAndResumes) {
  const auto tmp = dslens::testing::temp_dir("train_vae_cmd");
  const auto cfg = write_config(tmp, dslens::testing::tiny_vae_config());
  const auto out = tmp + "/run";
  auto r = run_capturing_streams("train-vae " + cfg + " --out " + out + " --threads 1", tmp);
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* f : {"checkpoint.json", "metrics.json", "loss_curves.png", "reconstructions.png",
                        "samples.png", "train.log", "config.json"}) {
    EXPECT_TRUE(fs::exists(out + "/" + f)) << f;
  }
  const auto metrics = nlohmann::json::parse(slurp(out + "/metrics.json"));
  EXPECT_EQ(metrics["step"], 6);
  EXPECT_EQ(metrics["validation"]["count"], 12);
  EXPECT_TRUE(std::isfinite(metrics["validation"]["elbo"].get<double>()));
  EXPECT_GT(metrics["validation"]["mse"].get<double>(), 0.0);
  const auto sidecar = nlohmann::json::parse(slurp(out + "/checkpoint.json"));
  EXPECT_EQ(sidecar["step"], 6);
  EXPECT_EQ(sidecar["architecture"]["latent_dim"], 4);
  EXPECT_EQ(sidecar["data"]["source"], "synthetic");
  EXPECT_TRUE(sidecar["training"].contains("history"));
  EXPECT_FALSE(sidecar["optimizer"].is_null());

  // Existing folder: refused without --overwrite or --resume.
  r = run_capturing_streams("train-vae " + cfg + " --out " + out + " --threads 1", tmp);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("already exists"), std::string::npos) << r.err;

  // Resume of a longer run from the finished one equals a fresh longer run.
  auto longer = dslens::testing::tiny_vae_config();
  longer["train"]["steps"] = 8;
  const auto cfg8 = write_config(tmp, longer, "cfg8.json");
  r = run_capturing_streams("train-vae " + cfg8 + " --out " + out + " --resume --threads 1", tmp);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto fresh = tmp + "/fresh";
  r = run_capturing_streams("train-vae " + cfg8 + " --out " + fresh + " --threads 1", tmp);
  ASSERT_EQ(r.code, 0) << r.err;
  // The schedule (cosine lr over `steps`) differs between a 6-step run continued to 8 and an
  // 8-step run, so compare only that both reached step 8 and that --overwrite replaces a run.
  EXPECT_EQ(nlohmann::json::parse(slurp(out + "/checkpoint.json"))["step"], 8);
  r = run_capturing_streams("train-vae " + cfg + " --out " + fresh + " --overwrite --threads 1",
                            tmp);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(slurp(fresh + "/checkpoint.json"))["step"], 6);
}

TEST(TrainVaeCommand, ConfigErrorsNameTheJsonPath) {
  const auto tmp = dslens::testing::temp_dir("train_vae_badcfg");
  auto j = dslens::testing::tiny_vae_config();
  j["train"]["steps"] = -1;
  auto r =
      run_capturing_streams("train-vae " + write_config(tmp, j) + " --out " + tmp + "/run", tmp);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("/train/steps"), std::string::npos) << r.err;
  j = dslens::testing::tiny_vae_config();
  j["model"]["channels"] = {8, "x"};
  r = run_capturing_streams("train-vae " + write_config(tmp, j) + " --out " + tmp + "/run", tmp);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("/model/channels/1"), std::string::npos) << r.err;
  j = dslens::testing::tiny_vae_config();
  j["data"]["count"] = 0;
  j["data"]["source"] = "fits_dir";
  j["data"]["path"] = tmp + "/no_such_folder";
  r = run_capturing_streams("train-vae " + write_config(tmp, j) + " --out " + tmp + "/run2", tmp);
  EXPECT_EQ(r.code, 2) << r.err;
}

// Two processes (Gloo over a local TCPStore) taking halves of each global batch end with the
// weights of one process taking all of it.
TEST(TrainVaeCommand, TwoProcessesMatchOne) {
  const auto tmp = dslens::testing::temp_dir("train_vae_dist");
  auto j = dslens::testing::tiny_vae_config();
  j["train"]["dtype"] = "float64";  // summation order cannot matter at the tolerance below
  const auto cfg = write_config(tmp, j);
  auto r = run_capturing_streams("train-vae " + cfg + " --out " + tmp + "/single --threads 1", tmp);
  ASSERT_EQ(r.code, 0) << r.err;

  const int port = free_port();
  const std::string exe = std::string("'") + DSLENS_EXECUTABLE + "'";
  const std::string common = " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) +
                             " WORLD_SIZE=2 DSLENS_DIST_TIMEOUT=120 ";
  const std::string args = " train-vae " + cfg + " --out " + tmp + "/dist --threads 1";
  const std::string script = "cd '" + tmp + "'; env RANK=0" + common + exe + args +
                             " >r0.out 2>r0.err & p0=$!; env RANK=1" + common + exe + args +
                             " >r1.out 2>r1.err & p1=$!; wait $p0; c0=$?; wait $p1; c1=$?; "
                             "exit $((c0 * 16 + c1))";
  const int status = std::system(("bash -c \"" + script + "\"").c_str());
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  const std::string err0 = slurp(tmp + "/r0.err"), err1 = slurp(tmp + "/r1.err");
  if (code != 0 && (err0.find("without a c10d backend") != std::string::npos)) {
    GTEST_SKIP() << "this build has no c10d backend: " << err0;
  }
  ASSERT_EQ(code, 0) << "rank 0:\n" << err0 << "\nrank 1:\n" << err1;
  auto single = weights_of(tmp + "/single");
  auto dist = weights_of(tmp + "/dist");
  ASSERT_EQ(single.size(), dist.size());
  ASSERT_FALSE(single.empty());
  for (const auto& [name, t] : single) {
    ASSERT_TRUE(dist.count(name)) << name;
    EXPECT_LE((t - dist[name]).abs().max().item<double>(), 1e-9) << name;
  }
  EXPECT_FALSE(fs::exists(tmp + "/dist/.rank1"));
}
