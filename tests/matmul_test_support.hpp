// Shared inputs for the matmul tests (matmul_test, matmul_int8_test).
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace kvcache::test {

/// n floats uniform in [-scale, scale), reproducible from the seed.
inline std::vector<float> random_floats(std::size_t n, std::uint64_t seed, float scale = 1.0f) {
    std::mt19937_64 g(seed);
    std::vector<float> v(n);
    for (auto& x : v) x = (float((g() >> 11) * 0x1.0p-53) * 2 - 1) * scale;
    return v;
}

}  // namespace kvcache::test
