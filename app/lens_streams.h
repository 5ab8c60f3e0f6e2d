// A lens's random streams are keyed by its name (the config file's stem), not by its place in the
// batch, so a lens gets the same MAP starts, chain jitter and NUTS chains alone, in any batch, or
// in any shard.
#pragma once
#include <torch/torch.h>

#include <cstdint>

#include "fit_config.h"

namespace dslens::app {

inline uint64_t mix64(uint64_t x) {  // splitmix64's finaliser
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

inline uint64_t lens_key(const FitConfig& c) {
  uint64_t h = 0xCBF29CE484222325ULL;  // FNV-1a
  for (const unsigned char ch : c.name) h = (h ^ ch) * 0x100000001B3ULL;
  return mix64(h);
}

// A CPU generator for one lens and purpose.
inline torch::Generator lens_generator(uint64_t seed, const FitConfig& c) {
  return at::detail::createCPUGenerator(mix64(seed ^ lens_key(c)));
}

}  // namespace dslens::app
