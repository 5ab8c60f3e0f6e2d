// Helpers shared by the test suites: where ../shared is, and a skip when it is absent.
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace dslens::testing {

// The shared data folder: $DSLENS_SHARED_DIR, else ../shared beside the source tree.
inline std::string shared_dir() {
  if (const char* env = std::getenv("DSLENS_SHARED_DIR")) return env;
  return (std::filesystem::path(DSLENS_SOURCE_DIR).parent_path() / "shared").string();
}

// The lenstronomy reference: $DSLENS_LENSTRONOMY_REFERENCE, else
// ../shared/reference/lenstronomy_reference.json.
inline std::string lenstronomy_reference_path() {
  if (const char* env = std::getenv("DSLENS_LENSTRONOMY_REFERENCE")) return env;
  return shared_dir() + "/reference/lenstronomy_reference.json";
}

// A fresh empty temporary folder for one test.
inline std::string temp_dir(const std::string& tag) {
  auto dir = std::filesystem::temp_directory_path() /
             ("dslens_test_" + tag + "_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
              "_" + std::to_string(std::rand()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

}  // namespace dslens::testing

// Skips the current test, saying why, when a file from ../shared is missing.
#define DSLENS_REQUIRE_FILE(path)                                                          \
  do {                                                                                     \
    if (!std::filesystem::exists(path)) GTEST_SKIP() << "not found: " << (path)            \
                                                     << " (../shared is absent; skipping)"; \
  } while (0)
