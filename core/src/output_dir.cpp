#include "dslens/core/output_dir.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "dslens/core/atomic_file.h"
#include "dslens/core/errors.h"

namespace fs = std::filesystem;

namespace dslens {

void write_file_atomically(const std::string& path,
                           const std::function<void(const std::string& tmp_path)>& write) {
  const fs::path target(path);
  const fs::path tmp = target.parent_path() /
                       ("." + target.filename().string() + ".tmp" + std::to_string(::getpid()));
  try {
    write(tmp.string());
    std::error_code ec;
    fs::rename(tmp, target, ec);
    if (ec)
      throw FileError("cannot move '" + tmp.string() + "' to '" + path + "': " + ec.message());
  } catch (...) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw;
  }
}

void write_text_atomically(const std::string& path, const std::string& text) {
  write_file_atomically(path, [&](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary);
    if (!out) throw FileError("cannot write '" + path + "'");
    out << text;
    out.close();
    if (!out) throw FileError("cannot write '" + path + "'");
  });
}

OutputDir::OutputDir(std::string final_dir, std::string working, bool staged, bool overwrite)
    : final_(std::move(final_dir)),
      working_(std::move(working)),
      staged_(staged),
      overwrite_(overwrite) {}

OutputDir::OutputDir(OutputDir&& other) noexcept
    : final_(std::move(other.final_)),
      working_(std::move(other.working_)),
      staged_(other.staged_),
      overwrite_(other.overwrite_),
      committed_(other.committed_) {
  other.committed_ = true;  // the moved-from object must not clean up
}

static void refuse_existing(const fs::path& dir) {
  throw InputError("output folder '" + dir.string() +
                   "' already exists; choose another --out, or pass --overwrite to replace it");
}

OutputDir OutputDir::staged(const std::string& dir, bool overwrite) {
  if (dir.empty()) throw InputError("no output folder given (--out)");
  const fs::path final_dir = fs::absolute(dir).lexically_normal();
  if (fs::exists(final_dir) && !overwrite) refuse_existing(final_dir);
  const fs::path parent = final_dir.parent_path();
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec) throw FileError("cannot create folder '" + parent.string() + "': " + ec.message());
  const fs::path working =
      parent / ("." + final_dir.filename().string() + ".partial" + std::to_string(::getpid()));
  fs::remove_all(working, ec);
  fs::create_directory(working, ec);
  if (ec) throw FileError("cannot create folder '" + working.string() + "': " + ec.message());
  return OutputDir(final_dir.string(), working.string(), true, overwrite);
}

OutputDir OutputDir::live(const std::string& dir, bool overwrite, bool resume) {
  if (dir.empty()) throw InputError("no output folder given (--out)");
  const fs::path final_dir = fs::absolute(dir).lexically_normal();
  std::error_code ec;
  if (fs::exists(final_dir)) {
    if (resume) {
      return OutputDir(final_dir.string(), final_dir.string(), false, false);
    }
    if (!overwrite) refuse_existing(final_dir);
    fs::remove_all(final_dir, ec);
    if (ec) throw FileError("cannot remove '" + final_dir.string() + "': " + ec.message());
  } else if (resume) {
    throw InputError("cannot resume: output folder '" + final_dir.string() + "' does not exist");
  }
  fs::create_directories(final_dir, ec);
  if (ec) throw FileError("cannot create folder '" + final_dir.string() + "': " + ec.message());
  return OutputDir(final_dir.string(), final_dir.string(), false, false);
}

std::string OutputDir::file(const std::string& name) const {
  return (fs::path(working_) / name).string();
}

void OutputDir::commit() {
  if (committed_) return;
  if (staged_) {
    std::error_code ec;
    fs::path old;
    if (fs::exists(final_)) {
      if (!overwrite_) refuse_existing(final_);  // appeared while we worked
      old = fs::path(final_).parent_path() /
            ("." + fs::path(final_).filename().string() + ".old" + std::to_string(::getpid()));
      fs::rename(final_, old, ec);
      if (ec) throw FileError("cannot move aside '" + final_ + "': " + ec.message());
    }
    fs::rename(working_, final_, ec);
    if (ec) throw FileError("cannot create '" + final_ + "': " + ec.message());
    if (!old.empty()) fs::remove_all(old, ec);
  }
  committed_ = true;
}

OutputDir::~OutputDir() {
  if (!committed_ && staged_) {
    std::error_code ec;
    fs::remove_all(working_, ec);
  }
}

}  // namespace dslens
