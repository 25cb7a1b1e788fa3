// The int8 product (MatmulPrecision::int8): activations rounded to int8 per block of 32, integer block dots.
// Internal to src/model: matmul.cpp dispatches here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>

#include "kvcache/detail/aligned_buffer.hpp"
#include "kvcache/model/matmul.hpp"

namespace kvcache::detail {

/// A Q4_1 or Q8_0 matrix's rows interleaved eight (sixteen with 512-bit VNNI) at a time for the vector kernel (layout: matmul_int8.cpp), built
/// once by whichever thread asks first.
struct Int8Layout {
    std::once_flag built;
    AlignedBuffer<std::byte> groups;
};

/// The interleaved layout of `rows` Q4_1 or Q8_0 rows of `cols` values (row r at base + r * row_stride):
/// ceil(rows/8) groups of eight rows (of sixteen with 512-bit VNNI), the last one padded with copies of the
/// last row.
AlignedBuffer<std::byte> interleave_rows(WeightFormat format, const std::byte* base, std::size_t row_stride,
                                         std::size_t rows, std::size_t cols);

/// Activations rounded to int8 for the kernels (per token: codes, block scales, float block sums). The storage is
/// the calling thread's, reused by its next quantize_activations: a product's tasks read it while that thread
/// waits for them.
struct Int8Activations {
    const std::int8_t* q;  // (n, cols)
    const float* ds;       // (n, 2, cols / 32): scales, then block sums
    const std::int32_t* qsum;  // (n, cols / 32): sums of the int8 codes of each block
    std::size_t n, cols;
};
Int8Activations quantize_activations(const float* x, std::size_t n, std::size_t cols);

/// Rows of one unit of parallel work of an int8 product (a multiple of the kernel's eight or sixteen rows).
inline constexpr std::size_t kInt8RowsPerTask = 16;

/// y[t][r] = the int8 dot of weight row r (Q4_1 or Q8_0) with x's token t, for the rows of task `task`
/// ([task * kInt8RowsPerTask, ...)) and every token; y is [n][rows]. With `groups` (interleave_rows of the same rows)
/// and AVX2 compiled in, the vector kernel reads the groups; otherwise the scalar kernel reads the rows (row r at
/// base + r * row_stride). Both give the same bits, and a task writes only its own rows.
void matmul_int8_task(WeightFormat format, const std::byte* base, std::size_t row_stride, const std::byte* groups,
                      std::size_t rows, const Int8Activations& x, float* y, std::size_t task);

}  // namespace kvcache::detail
