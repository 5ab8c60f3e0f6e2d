// Logging set-up. Libraries log through spdlog's default logger; app/ configures it once.
#pragma once
#include <string>

namespace dslens {

// Console logger on stderr at `level` ("debug", "info", "warn", "error").
void init_logging(const std::string& level = "info");
// Adds a file sink (everything at debug and above) to the default logger.
void add_log_file(const std::string& path);

}  // namespace dslens
