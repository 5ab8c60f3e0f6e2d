#include "command.h"

#include <spdlog/spdlog.h>

#include <iostream>
#include <optional>
#include <streambuf>

#include "dslens/core/errors.h"
#include "dslens/core/logging.h"
#include "dslens/physics/profile.h"

namespace dslens::app {

std::vector<Command>& commands() {
  static std::vector<Command> table;
  return table;
}

std::vector<Command>& benches() {
  static std::vector<Command> table;
  return table;
}

namespace {
// Points std::cout at a buffer that drops everything until destroyed, also when the command throws.
class StdoutDropped {
 public:
  StdoutDropped() : saved_(std::cout.rdbuf(&sink_)) {}
  ~StdoutDropped() { std::cout.rdbuf(saved_); }
  StdoutDropped(const StdoutDropped&) = delete;
  StdoutDropped& operator=(const StdoutDropped&) = delete;

 private:
  struct Sink : std::streambuf {
    int overflow(int c) override { return traits_type::not_eof(c); }
    std::streamsize xsputn(const char*, std::streamsize n) override { return n; }
  } sink_;
  std::streambuf* saved_;
};
}  // namespace

int run_command(const std::string& name, std::vector<std::string> args, bool quiet_stdout) {
  for (const auto& c : commands()) {
    if (c.name != name) continue;
    args.insert(args.begin(), "dslens " + name);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    std::optional<StdoutDropped> quiet;
    if (quiet_stdout) quiet.emplace();
    return c.run(static_cast<int>(argv.size()), argv.data());
  }
  throw InvalidArgument("no command '" + name + "'");
}

std::string shell_quote(const std::string& a) {
  if (!a.empty() && a.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                        "0123456789-_=./,:+@%") == std::string::npos) {
    return a;
  }
  std::string q = "'";
  for (char c : a) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string resume_command(int argc, char** argv) {
  std::string out = argc > 0 ? argv[0] : "dslens";
  bool resume = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--overwrite" || a.rfind("--stop-after=", 0) == 0) continue;
    if (a == "--stop-after") {
      ++i;  // and its value
      continue;
    }
    resume |= a == "--resume";
    out += " " + shell_quote(a);
  }
  return resume ? out : out + " --resume";
}

void add_compute_options(cxxopts::Options& options, const std::string& default_dtype) {
  options.add_options("compute")("device", "cpu, cuda, cuda:N or auto",
                                 cxxopts::value<std::string>()->default_value("auto"))(
      "dtype", "float64 or float32", cxxopts::value<std::string>()->default_value(default_dtype))(
      "threads", "CPU threads (0 = one per core)", cxxopts::value<int>()->default_value("0"))(
      "log-level", "debug, info, warn or error",
      cxxopts::value<std::string>()->default_value("info"))(
      "cuda-kernels",
      "on: dslens's fused CUDA kernels for the EPL and the pixelated source, where built; off: "
      "LibTorch's tensor ops on CUDA (to compare the two)",
      cxxopts::value<std::string>()->default_value("on"));
}

Compute compute_from(const cxxopts::ParseResult& result) {
  init_logging(result["log-level"].as<std::string>());
  set_num_threads(result["threads"].as<int>());
  const std::string kernels = result["cuda-kernels"].as<std::string>();
  if (kernels != "on" && kernels != "off")
    throw InvalidArgument("--cuda-kernels: '" + kernels + "' is not one of on, off");
  physics::set_cuda_kernels(kernels == "on");
  Compute compute =
      make_compute(result["device"].as<std::string>(), result["dtype"].as<std::string>());
  if (compute.device.is_cuda()) {
    spdlog::info("fused CUDA kernels: {}", !physics::cuda_kernels_built() ? "not built"
                                           : kernels == "on"              ? "on"
                                                                          : "off");
  }
  return compute;
}

bool parse_or_help(cxxopts::Options& options, int argc, char** argv, cxxopts::ParseResult& out) {
  options.add_options()("h,help", "Show this help");
  try {
    out = options.parse(argc, argv);
  } catch (const cxxopts::exceptions::exception& e) {
    throw InvalidArgument(std::string(e.what()) + " (see --help)");
  }
  if (out.count("help")) {
    std::cout << options.help() << std::endl;
    return false;
  }
  return true;
}

}  // namespace dslens::app
