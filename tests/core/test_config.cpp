#include <gtest/gtest.h>

#include "dslens/core/config.h"
#include "dslens/core/errors.h"

using dslens::ConfigError;
using dslens::ConfigNode;
using dslens::json;
using dslens::Range;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Config, MissingKeyNamesPath) {
  json j = json::parse(R"({"mass": [{"type": "SIE"}]})");
  auto root = ConfigNode::root(j);
  const auto msg = error_of([&] { root.at("mass").at(0).number("theta_E"); });
  EXPECT_NE(msg.find("/mass/0/theta_E"), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing"), std::string::npos) << msg;
}

TEST(Config, OutOfRangeNamesValueAndAllowed) {
  json j = json::parse(R"({"q": -0.5})");
  const auto msg = error_of([&] { ConfigNode::root(j).number("q", Range::left_open(0, 1)); });
  EXPECT_NE(msg.find("/q"), std::string::npos) << msg;
  EXPECT_NE(msg.find("-0.5"), std::string::npos) << msg;
  EXPECT_NE(msg.find("(0, 1]"), std::string::npos) << msg;
}

TEST(Config, WrongTypeAndUnknownKey) {
  json j = json::parse(R"({"n": "three", "extra": 1})");
  auto root = ConfigNode::root(j);
  EXPECT_NE(error_of([&] { root.number("n"); }).find("expected a number"), std::string::npos);
  const auto msg = error_of([&] { root.allow_only({"n"}); });
  EXPECT_NE(msg.find("/extra"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unknown key"), std::string::npos) << msg;
}

TEST(Config, IntegerAndChoice) {
  json j = json::parse(R"({"k": 2.5, "m": 3, "c": "bad"})");
  auto root = ConfigNode::root(j);
  EXPECT_NE(error_of([&] { root.integer("k"); }).find("integer"), std::string::npos);
  EXPECT_EQ(root.integer("m"), 3);
  EXPECT_NE(error_of([&] {
              root.choice("c", {"a", "b"});
            }).find("allowed: a, b"),
            std::string::npos);
  EXPECT_EQ(root.number_or("absent", 7.0), 7.0);
}

TEST(Config, RangeDescribe) {
  EXPECT_EQ(Range::positive().describe(), "> 0");
  EXPECT_FALSE(Range::positive().contains(0.0));
  EXPECT_TRUE(Range::closed(0, 1).contains(1.0));
  EXPECT_FALSE(Range::any().contains(std::nan("")));
}
