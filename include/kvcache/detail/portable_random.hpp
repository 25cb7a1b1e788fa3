// PortableUniform: uniform numbers that are the same on every platform, for random weights and sampling.
#pragma once

#include <cstdint>
#include <random>

namespace kvcache::detail {

/// Uniform numbers from mt19937_64's raw bits. std::uniform_real_distribution differs between standard
/// libraries; the mt19937_64 sequence does not, so the same seed gives the same weights and samples everywhere.
class PortableUniform {
public:
    explicit PortableUniform(std::uint64_t seed) : generator_(seed) {}

    /// Restarts the sequence from `seed`.
    void reseed(std::uint64_t seed) { generator_.seed(seed); }
    /// Uniform in [0, 1), from the 53 high bits of one draw.
    double unit() { return static_cast<double>(generator_() >> 11) * 0x1.0p-53; }
    /// Uniform in [-bound, bound), rounded to float.
    float symmetric(float bound) { return static_cast<float>((2 * unit() - 1) * bound); }

private:
    std::mt19937_64 generator_;
};

}  // namespace kvcache::detail
