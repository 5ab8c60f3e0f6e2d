#include "dslens/core/logging.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "dslens/core/errors.h"

namespace dslens {

void init_logging(const std::string& level) {
  auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  console->set_level(spdlog::level::from_str(level));
  auto logger = std::make_shared<spdlog::logger>("dslens", console);
  logger->set_pattern("[%H:%M:%S] %^%l%$ %v");
  logger->set_level(spdlog::level::debug);
  spdlog::set_default_logger(logger);
}

ScopedLogFile::ScopedLogFile(const std::string& path) {
  try {
    auto file = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, false);
    file->set_level(spdlog::level::debug);
    file->set_pattern("[%Y-%m-%d %H:%M:%S.%e] %l %v");
    sink_ = file;
    spdlog::default_logger()->sinks().push_back(sink_);
    // Log files are read while long jobs run (and after a kill): flush every record.
    spdlog::default_logger()->flush_on(spdlog::level::debug);
  } catch (const spdlog::spdlog_ex& e) {
    throw FileError("cannot open log file '" + path + "': " + e.what());
  }
}

ScopedLogFile::~ScopedLogFile() {
  auto& sinks = spdlog::default_logger()->sinks();
  sinks.erase(std::remove(sinks.begin(), sinks.end(), sink_), sinks.end());
}

}  // namespace dslens
