// The int8 product (MatmulPrecision::int8): activations rounded to int8 per block of 32, integer block dots.
// Internal to src/model: matmul.cpp dispatches here.
#pragma once

#include <cstddef>
#include <mutex>

#include "kvcache/detail/aligned_buffer.hpp"
#include "kvcache/model/matmul.hpp"

namespace kvcache::detail {

/// A Q4_1 or Q8_0 matrix's rows interleaved eight at a time for the vector kernel (layout: matmul_int8.cpp), built
/// once by whichever thread asks first.
struct Int8Layout {
    std::once_flag built;
    AlignedBuffer<std::byte> groups;
};

/// The interleaved layout of `rows` Q4_1 or Q8_0 rows of `cols` values (row r at base + r * row_stride):
/// ceil(rows/8) groups, the last one padded with copies of the last row.
AlignedBuffer<std::byte> interleave_rows(WeightFormat format, const std::byte* base, std::size_t row_stride,
                                         std::size_t rows, std::size_t cols);

/// y[t][r] = the int8 dot of weight row r (Q4_1 or Q8_0) with x[t]. With `groups` (interleave_rows of the same rows) and
/// AVX2 compiled in, the vector kernel reads the groups; otherwise the scalar kernel reads the rows (row r at
/// base + r * row_stride). Both give the same bits.
void matmul_int8_rows(WeightFormat format, const std::byte* base, std::size_t row_stride, const std::byte* groups,
                      std::size_t rows, std::size_t cols, const float* x, std::size_t n, float* y, int threads);

}  // namespace kvcache::detail
