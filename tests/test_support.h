// Helpers shared by the test suites: where ../shared is, and a skip when it is absent.
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <string>
#include <system_error>
#include <vector>

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

// The temporary folders of one test program, removed when it ends. ctest runs each test in a
// program of its own, and without this every run left its folders (about 40 per full run, 2.5 MB)
// in the system's temporary directory. When a test failed they are kept and listed, for a look
// at what it wrote.
class TempDirs : public ::testing::Environment {
 public:
  void add(const std::filesystem::path& dir) {
    std::lock_guard<std::mutex> lock(mutex_);
    dirs_.push_back(dir);
  }
  void TearDown() override {
    std::lock_guard<std::mutex> lock(mutex_);
    const bool passed = ::testing::UnitTest::GetInstance()->Passed();
    for (const auto& dir : dirs_) {
      if (!passed) {
        std::cerr << "a test failed: its temporary folder " << dir << " is kept\n";
        continue;
      }
      std::error_code ignored;  // a folder a test removed itself is not an error
      std::filesystem::remove_all(dir, ignored);
    }
    dirs_.clear();
  }

 private:
  std::mutex mutex_;
  std::vector<std::filesystem::path> dirs_;
};

// Registered before main (gtest's advice for programs linked with gtest_main); gtest owns it.
inline TempDirs* const temp_dirs =
    static_cast<TempDirs*>(::testing::AddGlobalTestEnvironment(new TempDirs));

// A fresh empty temporary folder for one test, removed when the test program ends.
inline std::string temp_dir(const std::string& tag) {
  auto dir = std::filesystem::temp_directory_path() /
             ("dslens_test_" + tag + "_" +
              std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
              std::to_string(std::rand()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  temp_dirs->add(dir);
  return dir.string();
}

}  // namespace dslens::testing

// Skips the current test, saying why, when a file from ../shared is missing.
#define DSLENS_REQUIRE_FILE(path)                                                    \
  do {                                                                               \
    if (!std::filesystem::exists(path))                                              \
      GTEST_SKIP() << "not found: " << (path) << " (../shared is absent; skipping)"; \
  } while (0)
