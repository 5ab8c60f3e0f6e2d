// Atomic file output: content is written to a temporary file in the same folder and renamed over
// the target only when complete, so a crash never leaves a half-written file under the real name.
#pragma once
#include <functional>
#include <string>

namespace dslens {

// Calls write(tmp_path), then renames tmp_path to path. On exception the temporary is removed.
void write_file_atomically(const std::string& path,
                           const std::function<void(const std::string& tmp_path)>& write);
void write_text_atomically(const std::string& path, const std::string& text);

}  // namespace dslens
