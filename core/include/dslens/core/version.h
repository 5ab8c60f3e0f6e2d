#pragma once
#include <string>

namespace dslens {
// The dslens version (from CMakeLists.txt's project()).
std::string version();
}  // namespace dslens
