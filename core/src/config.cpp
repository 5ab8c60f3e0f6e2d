#include "dslens/core/config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "dslens/core/errors.h"

namespace dslens {

json load_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw FileError("cannot open config file '" + path + "'");
  std::stringstream buffer;
  buffer << in.rdbuf();
  try {
    return json::parse(buffer.str());
  } catch (const json::parse_error& e) {
    throw FileError("config file '" + path + "' is not valid JSON: " + e.what());
  }
}

bool Range::contains(double v) const {
  if (!std::isfinite(v)) return false;
  const bool lo_ok = lo_open ? v > lo : v >= lo;
  const bool hi_ok = hi_open ? v < hi : v <= hi;
  return lo_ok && hi_ok;
}

static std::string fmt_num(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

std::string Range::describe() const {
  const bool has_lo = std::isfinite(lo);
  const bool has_hi = std::isfinite(hi);
  if (has_lo && has_hi) {
    return std::string("in ") + (lo_open ? "(" : "[") + fmt_num(lo) + ", " + fmt_num(hi) +
           (hi_open ? ")" : "]");
  }
  if (has_lo) return (lo_open ? "> " : ">= ") + fmt_num(lo);
  if (has_hi) return (hi_open ? "< " : "<= ") + fmt_num(hi);
  return "any finite number";
}

std::string json_excerpt(const json& value) {
  std::string s = value.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

static std::string escape_pointer_token(const std::string& key) {
  std::string out;
  for (char c : key) {
    if (c == '~')
      out += "~0";
    else if (c == '/')
      out += "~1";
    else
      out += c;
  }
  return out;
}

std::string ConfigNode::child_path(const std::string& key) const {
  return path_ + "/" + escape_pointer_token(key);
}
std::string ConfigNode::child_path(size_t index) const {
  return path_ + "/" + std::to_string(index);
}

void ConfigNode::fail(const std::string& what) const {
  throw ConfigError(path_, what);
}
void ConfigNode::fail_at(const std::string& key, const std::string& what) const {
  throw ConfigError(child_path(key), what);
}

void ConfigNode::require_object() const {
  if (!value_->is_object()) fail("expected an object, got " + json_excerpt(*value_));
}
void ConfigNode::require_array() const {
  if (!value_->is_array()) fail("expected an array, got " + json_excerpt(*value_));
}

bool ConfigNode::has(const std::string& key) const {
  return value_->is_object() && value_->contains(key);
}

ConfigNode ConfigNode::at(const std::string& key) const {
  require_object();
  auto it = value_->find(key);
  if (it == value_->end()) fail_at(key, "missing required key");
  return ConfigNode(*it, child_path(key));
}

ConfigNode ConfigNode::at(size_t index) const {
  require_array();
  if (index >= value_->size()) {
    fail("index " + std::to_string(index) + " out of range (size " +
         std::to_string(value_->size()) + ")");
  }
  return ConfigNode((*value_)[index], child_path(index));
}

std::vector<ConfigNode> ConfigNode::elements() const {
  require_array();
  std::vector<ConfigNode> out;
  for (size_t i = 0; i < value_->size(); ++i) out.emplace_back((*value_)[i], child_path(i));
  return out;
}

std::vector<std::string> ConfigNode::keys() const {
  require_object();
  std::vector<std::string> out;
  for (auto it = value_->begin(); it != value_->end(); ++it) out.push_back(it.key());
  return out;
}

void ConfigNode::allow_only(const std::vector<std::string>& allowed) const {
  require_object();
  for (auto it = value_->begin(); it != value_->end(); ++it) {
    if (std::find(allowed.begin(), allowed.end(), it.key()) == allowed.end()) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      fail_at(it.key(), "unknown key; allowed keys here: " + list);
    }
  }
}

double ConfigNode::as_number(const Range& range) const {
  if (!value_->is_number()) fail("expected a number, got " + json_excerpt(*value_));
  const double v = value_->get<double>();
  if (!range.contains(v)) {
    fail("value " + json_excerpt(*value_) + " is out of range; allowed: " + range.describe());
  }
  return v;
}

std::string ConfigNode::as_string() const {
  if (!value_->is_string()) fail("expected a string, got " + json_excerpt(*value_));
  return value_->get<std::string>();
}

double ConfigNode::number(const std::string& key, const Range& range) const {
  return at(key).as_number(range);
}

double ConfigNode::number_or(const std::string& key, double fallback, const Range& range) const {
  return has(key) ? number(key, range) : fallback;
}

long long ConfigNode::integer(const std::string& key, const Range& range) const {
  ConfigNode node = at(key);
  const json& v = node.value();
  if (!v.is_number_integer() &&
      !(v.is_number_float() && std::floor(v.get<double>()) == v.get<double>())) {
    node.fail("expected an integer, got " + json_excerpt(v));
  }
  node.as_number(range);
  return static_cast<long long>(v.get<double>());
}

long long ConfigNode::integer_or(const std::string& key, long long fallback,
                                 const Range& range) const {
  return has(key) ? integer(key, range) : fallback;
}

bool ConfigNode::boolean(const std::string& key) const {
  ConfigNode node = at(key);
  if (!node.value().is_boolean())
    node.fail("expected true or false, got " + json_excerpt(node.value()));
  return node.value().get<bool>();
}

bool ConfigNode::boolean_or(const std::string& key, bool fallback) const {
  return has(key) ? boolean(key) : fallback;
}

std::string ConfigNode::string(const std::string& key) const {
  return at(key).as_string();
}

std::string ConfigNode::string_or(const std::string& key, const std::string& fallback) const {
  return has(key) ? string(key) : fallback;
}

std::string ConfigNode::choice(const std::string& key,
                               const std::vector<std::string>& allowed) const {
  const std::string v = string(key);
  if (std::find(allowed.begin(), allowed.end(), v) == allowed.end()) {
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    fail_at(key, "value \"" + v + "\" is not allowed; allowed: " + list);
  }
  return v;
}

std::string ConfigNode::choice_or(const std::string& key, const std::string& fallback,
                                  const std::vector<std::string>& allowed) const {
  return has(key) ? choice(key, allowed) : fallback;
}

std::vector<double> ConfigNode::numbers(const std::string& key, const Range& range) const {
  std::vector<double> out;
  for (const auto& e : at(key).elements()) out.push_back(e.as_number(range));
  return out;
}

}  // namespace dslens
