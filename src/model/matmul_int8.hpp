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

/// Tokens that share one pass over a weight block (the kernels' widest token count).
inline constexpr std::size_t kInt8TokensPerPass = 8;

/// Activations rounded to int8 for the kernels, block-major within each pass of kInt8TokensPerPass tokens: for
/// pass p, block b and token slot i (token p * 8 + i), the 32 codes sit at q + ((p * nb + b) * 8 + i) * 32 and
/// the scalars at [(p * nb + b) * 8 + i]. So one pointer per block reaches every token's codes at fixed offsets,
/// and the vector kernel takes them as broadcast memory operands instead of holding eight tokens' pointers.
/// Slots past the last token are never read. The storage is the calling thread's, reused by its next
/// quantize_activations: a product's tasks read it while that thread waits for them.
struct Int8Activations {
    const std::int8_t* q;      // (passes, nb, 8, 32) codes
    const float* d;            // (passes, nb, 8) block scales
    const float* s;            // (passes, nb, 8) float block sums (Q4_1's min term)
    const std::int32_t* qsum;  // (passes, nb, 8) sums of each block's codes (the 512-bit Q8_0 correction)
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
