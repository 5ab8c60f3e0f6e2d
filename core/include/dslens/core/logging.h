// Logging set-up. Libraries log through spdlog's default logger; app/ configures it once.
#pragma once
#include <memory>
#include <string>

namespace spdlog::sinks {
class sink;
}

namespace dslens {

// Console logger on stderr at `level` ("debug", "info", "warn", "error").
void init_logging(const std::string& level = "info");
// A file sink (everything at debug and above, flushed per record) on the default logger for as
// long as this object lives: a command that runs inside another (`bench fit` and `mock-study` call
// the fit in-process) must not leave its log file attached after it returns.
class ScopedLogFile {
 public:
  explicit ScopedLogFile(const std::string& path);
  ~ScopedLogFile();
  ScopedLogFile(const ScopedLogFile&) = delete;
  ScopedLogFile& operator=(const ScopedLogFile&) = delete;

 private:
  std::shared_ptr<spdlog::sinks::sink> sink_;
};

}  // namespace dslens
