// The SynthGround renderers' random numbers (lego/sdk/synth.h): one stream per use, all from the scene's
// seed. SplitMix64 with integer-only conversions, so the same scene renders to the same bytes with any
// standard library (std:: distributions are implementation-defined).
#pragma once

#include <cstdint>

namespace lego::io {

class SceneRandom {
 public:
  // What a stream is for: streams of one seed are independent of each other.
  enum Stream : uint64_t { kBackground = 1, kSound = 2, kNoise = 3 };

  SceneRandom(uint64_t seed, Stream stream) : state_(seed ^ (0xD1B54A32D192ED03ull * (stream + 1))) { next(); }

  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1), 53 bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  // Uniform in 0 .. n - 1 (n > 0).
  int below(int n) { return static_cast<int>(uniform() * n); }

 private:
  uint64_t state_;
};

}  // namespace lego::io
