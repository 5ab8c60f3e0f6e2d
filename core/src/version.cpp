#include "dslens/core/version.h"

namespace dslens {
std::string version() {
  return DSLENS_VERSION;
}
}  // namespace dslens
