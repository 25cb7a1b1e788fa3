// Weight matrices (float or kept in a GGUF quantised format) and the matrix-vector products of the model.
//
// Determinism contract (the cache's bitwise guarantees rest on it): every output element y[t][r] is the
// dot product of weight row r with input row x[t], computed by one fixed routine in one fixed order. The
// batched kernel decodes a weight block once and feeds it to up to eight tokens, but each token's
// accumulators see exactly the same sequence of operations as when it is processed alone; threads split
// the rows, never a dot product. So y does not depend on the batch size n or on the thread count.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "kvcache/detail/aligned_buffer.hpp"

namespace kvcache {

namespace gguf {
struct TensorInfo;
}

/// How a weight matrix is stored. Q8_0 and Q4_1 are ggml's blocks of 32: Q8_0 = fp16 scale d + 32 int8
/// (w = d*q); Q4_1 = fp16 scale d, fp16 min m, 16 bytes of nibbles (w = d*q + m; element j < 16 is the low
/// nibble of byte j, element j + 16 its high nibble).
enum class WeightFormat { F32, Q8_0, Q4_1 };

/// How WeightMatrix::from_gguf keeps a GGUF tensor.
enum class WeightStorage {
    as_stored,  ///< Q8_0 and Q4_1 stay as they are (the kernels read them); every other type becomes float
    f32,        ///< every type is dequantised to float
};

std::string weight_format_name(WeightFormat f);

class WeightMatrix;

namespace detail {
struct Int8Layout;
/// The int8 kernel's copy of a Q4_1 or Q8_0 matrix: its rows interleaved eight (sixteen with AVX-512 VNNI) at a
/// time (src/model/matmul_int8.cpp), built on the first int8 product and kept (thread-safe). Internal to matmul;
/// null for other formats.
const std::byte* int8_layout(const WeightMatrix& w);
}  // namespace detail

/// The arithmetic of a product with quantised weights. f32 (the default) multiplies the weights by the float
/// activations. int8 first rounds each activation row to int8 per block of 32 (one float scale d = max|x|/127
/// per block, q = round(x/d)) and then sums code times code in integers, the way llama.cpp's q8 kernels do:
/// several times less arithmetic per token, at the price of the activations' rounding (docs/accuracy.md
/// gives the perplexity delta). Bitwise deterministic like f32: the integer sums are exact and the float
/// steps per output run in one fixed order, the same in the vector kernel and the scalar one. It applies to
/// Q4_1 and Q8_0 matrices (F32 ones take the f32 path in either mode); a decoder running int8 on a build with
/// AVX-512 VNNI also rounds its queries for integer q·k over q8_0 keys (ScorePrecision::int8,
/// attention/int8_scores.hpp; elsewhere its attention stays f32). The vector kernel reads a second copy of each
/// such matrix, its rows interleaved eight (or sixteen) at a time, made on the matrix's first int8 product and
/// kept: int8 holds the quantised weights twice.
enum class MatmulPrecision { f32, int8 };

/// "f32" / "int8"; parse_matmul_precision is its inverse and throws ConfigError on anything else.
std::string matmul_precision_name(MatmulPrecision p);
MatmulPrecision parse_matmul_precision(const std::string& name);

/// A [rows][cols] matrix; row r holds the weights of output r (ggml's shape [cols, rows]).
class WeightMatrix {
public:
    WeightMatrix() = default;

    /// Float weights, row-major. Throws ShapeError unless data.size() == rows * cols.
    static WeightMatrix from_floats(std::size_t rows, std::size_t cols, std::span<const float> data);
    /// Raw ggml blocks of `format`, row-major (rows * cols / 32 blocks). Throws ShapeError if cols is not a
    /// multiple of 32 for a quantised format or the byte count does not match.
    static WeightMatrix from_blocks(WeightFormat format, std::size_t rows, std::size_t cols,
                                    std::span<const std::byte> bytes);
    /// A 2-D GGUF tensor (ggml order: shape {cols, rows}), copied out of the mapping and kept as `storage` says.
    /// Throws ShapeError unless the tensor has 2 dimensions.
    static WeightMatrix from_gguf(const gguf::TensorInfo& tensor, WeightStorage storage);

    WeightMatrix(WeightMatrix&&) noexcept = default;
    WeightMatrix& operator=(WeightMatrix&&) noexcept = default;

    WeightFormat format() const { return format_; }
    std::size_t rows() const { return rows_; }
    std::size_t cols() const { return cols_; }
    std::size_t bytes() const { return data_.bytes(); }
    std::size_t row_bytes() const;
    const std::byte* row_data(std::size_t r) const { return data_.data() + r * row_bytes(); }

    /// Row r as floats (cols values). Throws IndexError if r >= rows.
    void dequantize_row(std::size_t r, float* out) const;

private:
    WeightFormat format_ = WeightFormat::F32;
    std::size_t rows_ = 0;
    std::size_t cols_ = 0;
    detail::AlignedBuffer<std::byte> data_;
    // Q4_1 and Q8_0: the int8 kernel's interleaved copy, made on first use so that f32-only users never hold it.
    std::shared_ptr<detail::Int8Layout> int8_;

    friend const std::byte* detail::int8_layout(const WeightMatrix& w);
};

/// y[t][r] = sum_c w[r][c] * x[t][c] for t < n: x is [n][cols], y is [n][rows]. threads = 0 → all the
/// hardware offers. Vectorised (AVX2 + FMA when compiled for it); see the determinism contract above.
/// precision: see MatmulPrecision (int8 changes the results of Q4_1 and Q8_0 matrices only).
void matmul(const WeightMatrix& w, const float* x, std::size_t n, float* y, int threads = 0,
            MatmulPrecision precision = MatmulPrecision::f32);

/// One product of matmul_shared_input: y = w · x, y laid out [n][w->rows()].
struct MatmulOutput {
    const WeightMatrix* w = nullptr;
    float* y = nullptr;
};

/// Several products of the same input x ([n][cols]): outputs[i].y = outputs[i].w · x for each i, bitwise what
/// matmul gives for each alone, at any thread count. The products run as one parallel dispatch (one hand-off to the
/// pool instead of one per matrix) and int8 rounds x once: a layer's Q, K and V, or its gate and up. Throws
/// ShapeError, before anything is written, if an output has no matrix or no buffer, or if the matrices' column
/// counts differ.
void matmul_shared_input(std::span<const MatmulOutput> outputs, const float* x, std::size_t n, int threads = 0,
                         MatmulPrecision precision = MatmulPrecision::f32);

/// The float product over a bare row-major [rows][cols] array that the caller owns (no WeightMatrix, no copy):
/// y[t][r] = sum_c w[r * cols + c] * x[t][c]. The same kernels and determinism contract as matmul on an F32
/// WeightMatrix (bitwise the same results); used by the encoder-decoder, whose weights are PyTorch tensors.
void matmul_f32(const float* w, std::size_t rows, std::size_t cols, const float* x, std::size_t n, float* y,
                int threads = 0);

/// The same product by the obvious scalar loop (dequantise, then sum in double): what matmul is tested against.
void matmul_reference(const WeightMatrix& w, const float* x, std::size_t n, float* y);

/// matmul(..., MatmulPrecision::int8) by the scalar routine (the portable build's kernel): the vector kernel
/// must give exactly these bits. Throws ShapeError unless w is Q4_1 or Q8_0 (the formats with an int8 path).
void matmul_int8_scalar(const WeightMatrix& w, const float* x, std::size_t n, float* y);

}  // namespace kvcache
