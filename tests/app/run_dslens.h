// The app tests' way of running the dslens executable (DSLENS_EXECUTABLE, set by CMake) and of
// reading and writing the JSON files they exchange with it.
#pragma once
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace dslens::testing {

struct RunResult {
  int code = -1;
  std::string output;  // stdout and stderr
};

inline std::string quote(const std::string& s) {
  return "'" + s + "'";
}

// Runs a shell command line and returns its exit code and what it wrote on stdout.
inline RunResult run_shell(const std::string& cmd) {
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

// Runs `dslens ARGS`, appending `--log-level LEVEL` unless log_level is empty (the top-level
// --help and --version take no options).
inline RunResult run_dslens(const std::string& args, const std::string& log_level = "warn") {
  return run_shell(quote(DSLENS_EXECUTABLE) + " " + args +
                   (log_level.empty() ? "" : " --log-level " + log_level) + " 2>&1");
}

// Runs `dslens ARGS` with stdout alone in `output` (stderr, the log, goes to the test's stderr):
// for commands whose stdout must be machine-readable by itself, such as --json.
inline RunResult run_dslens_stdout(const std::string& args) {
  return run_shell(quote(DSLENS_EXECUTABLE) + " " + args + " --log-level warn");
}

// Starts `dslens ARGS...` in the background with stdout and stderr in log_path; returns its pid
// (for kill and waitpid), or -1.
inline pid_t spawn_dslens(const std::vector<std::string>& args, const std::string& log_path) {
  const pid_t pid = fork();
  if (pid != 0) return pid;
  const int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) _exit(127);
  dup2(fd, 1);
  dup2(fd, 2);
  std::vector<std::string> all = {DSLENS_EXECUTABLE};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  execv(DSLENS_EXECUTABLE, argv.data());
  _exit(127);
}

inline void write_json(const std::string& path, const nlohmann::json& j) {
  std::ofstream(path) << j.dump(2);
}

inline nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

}  // namespace dslens::testing
