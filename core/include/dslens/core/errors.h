// Typed exceptions thrown by dslens libraries. Only app/ catches them and maps them to exit codes:
// InputError and its children (bad config, bad file, bad setting) -> exit 2; Interrupted -> 128 +
// the signal that asked for the stop; anything else -> 1.
#pragma once
#include <stdexcept>
#include <string>

namespace dslens {

// Base of every dslens exception.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Something the user gave us is wrong; the message says what and what is allowed.
class InputError : public Error {
 public:
  using Error::Error;
};

// A config value is wrong. `path` is a JSON pointer ("/mass/0/theta_E").
class ConfigError : public InputError {
 public:
  ConfigError(const std::string& path, const std::string& what)
      : InputError("config " + (path.empty() ? std::string("/") : path) + ": " + what),
        path_(path) {}
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A file is missing, unreadable or malformed; the message names the file (and HDU for FITS).
class FileError : public InputError {
 public:
  using InputError::InputError;
};

// An invalid setting passed through the API (negative step size, unknown device, ...).
class InvalidArgument : public InputError {
 public:
  using InputError::InputError;
};

// A computation failed in a way the caller could not have prevented by checking input.
class NumericalError : public Error {
 public:
  using Error::Error;
};

// A device (CUDA) operation failed; the message carries the runtime's error string.
class DeviceError : public Error {
 public:
  using Error::Error;
};

// A long run was asked to stop (e.g. by a signal, through a stop_requested callback) and stopped
// where it can be continued: the message says what was saved and where the run stopped.
class Interrupted : public Error {
 public:
  using Error::Error;
};

}  // namespace dslens
