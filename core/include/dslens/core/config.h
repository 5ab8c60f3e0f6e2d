// Reading JSON configs with errors that name the JSON path, the bad value and what is allowed.
//
//   auto cfg = ConfigNode::root(load_json_file(path));
//   cfg.allow_only({"grid", "mass"});                  // unknown key -> ConfigError
//   double q = cfg.at("lens").number("q", Range::open(0, 1));
//
// Every accessor throws dslens::ConfigError whose message reads e.g.
//   config /mass/0/theta_E: value -1 is out of range; allowed: > 0
#pragma once
#include <nlohmann/json.hpp>

#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace dslens {

using json = nlohmann::json;

// Reads and parses a JSON file; FileError names the file and the parse position.
json load_json_file(const std::string& path);

// An allowed interval for a number; bounds are inclusive unless marked open.
struct Range {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  bool lo_open = false;
  bool hi_open = false;
  static Range any() { return {}; }
  static Range positive() { return {0.0, std::numeric_limits<double>::infinity(), true, false}; }
  static Range non_negative() {
    return {0.0, std::numeric_limits<double>::infinity(), false, false};
  }
  static Range closed(double lo, double hi) { return {lo, hi, false, false}; }
  static Range open(double lo, double hi) { return {lo, hi, true, true}; }
  static Range left_open(double lo, double hi) { return {lo, hi, true, false}; }
  bool contains(double v) const;
  std::string describe() const;  // "> 0", "in (0, 1]", ...
};

class ConfigNode {
 public:
  ConfigNode(const json& value, std::string path) : value_(&value), path_(std::move(path)) {}
  static ConfigNode root(const json& value) { return ConfigNode(value, ""); }

  const json& value() const { return *value_; }
  const std::string& path() const { return path_; }
  std::string child_path(const std::string& key) const;
  std::string child_path(size_t index) const;

  bool has(const std::string& key) const;
  bool is_object() const { return value_->is_object(); }
  bool is_array() const { return value_->is_array(); }
  size_t size() const { return value_->size(); }

  // Child access; a missing key is a ConfigError ("missing required key").
  ConfigNode at(const std::string& key) const;
  ConfigNode at(size_t index) const;
  // Elements of an array (error if this node is not an array).
  std::vector<ConfigNode> elements() const;
  // Keys of an object, in file order.
  std::vector<std::string> keys() const;

  // This node must be an object whose keys are all among `allowed`.
  void allow_only(const std::vector<std::string>& allowed) const;
  void require_object() const;
  void require_array() const;

  double number(const std::string& key, const Range& range = Range::any()) const;
  double number_or(const std::string& key, double fallback,
                   const Range& range = Range::any()) const;
  long long integer(const std::string& key, const Range& range = Range::any()) const;
  long long integer_or(const std::string& key, long long fallback,
                       const Range& range = Range::any()) const;
  bool boolean(const std::string& key) const;
  bool boolean_or(const std::string& key, bool fallback) const;
  std::string string(const std::string& key) const;
  std::string string_or(const std::string& key, const std::string& fallback) const;
  // A string that must be one of `allowed`.
  std::string choice(const std::string& key, const std::vector<std::string>& allowed) const;
  std::string choice_or(const std::string& key, const std::string& fallback,
                        const std::vector<std::string>& allowed) const;
  std::vector<double> numbers(const std::string& key, const Range& range = Range::any()) const;

  // Value of this node itself.
  double as_number(const Range& range = Range::any()) const;
  std::string as_string() const;

  [[noreturn]] void fail(const std::string& what) const;
  [[noreturn]] void fail_at(const std::string& key, const std::string& what) const;

 private:
  const json* value_;
  std::string path_;
};

// Short printable form of a JSON value for error messages (truncated).
std::string json_excerpt(const json& value);

}  // namespace dslens
