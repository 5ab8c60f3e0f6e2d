// Output folders that never clobber what a user had.
//
// OutputDir::staged(dir, overwrite): files go into a hidden staging folder beside `dir`; commit()
// renames it to `dir` in one step, so `dir` either does not exist or is complete. An existing `dir`
// is refused (InputError) unless `overwrite`, in which case it is replaced only at commit().
// Without commit() (an exception, a kill) the staging folder is removed or left hidden.
//
// For long jobs that checkpoint and resume (training, fitting), use OutputDir::live(dir, overwrite,
// resume): the folder itself is the run, files inside are written atomically.
#pragma once
#include <string>

namespace dslens {

class OutputDir {
 public:
  static OutputDir staged(const std::string& dir, bool overwrite);
  static OutputDir live(const std::string& dir, bool overwrite, bool resume);
  OutputDir(OutputDir&& other) noexcept;
  OutputDir& operator=(OutputDir&&) = delete;
  OutputDir(const OutputDir&) = delete;
  ~OutputDir();

  // Path of a file inside the folder being written (staging folder until commit()).
  std::string file(const std::string& name) const;
  const std::string& working_dir() const { return working_; }
  const std::string& final_dir() const { return final_; }
  void commit();

 private:
  OutputDir(std::string final_dir, std::string working, bool staged, bool overwrite);
  std::string final_;
  std::string working_;
  bool staged_ = false;
  bool overwrite_ = false;
  bool committed_ = false;
};

}  // namespace dslens
