// The app tests' way of running the dslens executable (DSLENS_EXECUTABLE, set by CMake) and of
// reading and writing the JSON files they exchange with it.
#pragma once
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

namespace dslens::testing {

struct RunResult {
  int code = -1;
  std::string output;  // stdout and stderr
};

inline std::string quote(const std::string& s) {
  return "'" + s + "'";
}

// Runs `dslens ARGS`, appending `--log-level LEVEL` unless log_level is empty (the top-level
// --help and --version take no options).
inline RunResult run_dslens(const std::string& args, const std::string& log_level = "warn") {
  const std::string cmd = quote(DSLENS_EXECUTABLE) + " " + args +
                          (log_level.empty() ? "" : " --log-level " + log_level) + " 2>&1";
  RunResult r;
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) r.output.append(buf, n);
  const int status = pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

inline void write_json(const std::string& path, const nlohmann::json& j) {
  std::ofstream(path) << j.dump(2);
}

inline nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

}  // namespace dslens::testing
