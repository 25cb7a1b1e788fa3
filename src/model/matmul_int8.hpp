// The int8 product (MatmulPrecision::int8): activations rounded to int8 per block of 32, integer block dots.
// Internal to src/model: matmul.cpp dispatches here.
#pragma once

#include <cstddef>

#include "kvcache/model/matmul.hpp"

namespace kvcache::detail {

/// y[t][r] = the int8 dot of Q4_1 weight row r (at base + r * row_stride) with x[t]. vector picks the AVX2
/// kernel (when compiled in) or the scalar one; both give the same bits.
void matmul_int8_rows(const std::byte* base, std::size_t row_stride, std::size_t rows,
                      std::size_t cols, const float* x, std::size_t n, float* y, int threads, bool vector);

}  // namespace kvcache::detail
