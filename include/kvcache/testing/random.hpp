// Seeded random tensors for tests: the same seed gives the same numbers on every platform.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvcache::testing {

/// A small, fully specified generator (SplitMix64), so fixtures do not depend on the standard library's
/// distribution implementations.
class Rng {
public:
    explicit Rng(std::uint64_t seed) : state_(seed) {}
    std::uint64_t next_u64() {
        std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    /// Uniform in [0, 1) with 24 random bits.
    float uniform() { return static_cast<float>(next_u64() >> 40) * (1.0f / 16777216.0f); }
    float uniform(float lo, float hi) { return lo + (hi - lo) * uniform(); }
    /// Standard normal (Box-Muller).
    float normal() {
        const float u1 = uniform() + 1.0f / 33554432.0f;  // never 0
        const float u2 = uniform();
        return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.2831853071795864f * u2);
    }

private:
    std::uint64_t state_;
};

/// n floats uniform in [lo, hi).
inline std::vector<float> random_uniform(std::size_t n, std::uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
    Rng rng(seed);
    std::vector<float> out(n);
    for (auto& x : out) x = rng.uniform(lo, hi);
    return out;
}

/// n floats from N(0, stddev²).
inline std::vector<float> random_normal(std::size_t n, std::uint64_t seed, float stddev = 1.0f) {
    Rng rng(seed);
    std::vector<float> out(n);
    for (auto& x : out) x = stddev * rng.normal();
    return out;
}

}  // namespace kvcache::testing
