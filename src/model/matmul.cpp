// Weight storage and the matrix products of the reference model: AVX2 kernels plus a scalar reference.
#include "kvcache/model/matmul.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define KVCACHE_MATMUL_AVX2 1
#endif
#include "kvcache/detail/thread_pool.hpp"
#include "kvcache/element_types.hpp"
#include "kvcache/error.hpp"

namespace kvcache {

namespace {

constexpr std::size_t kBlock = 32;             // elements per quantised block
constexpr std::size_t kQ8_0Bytes = 2 + 32;     // fp16 d, 32 x int8
constexpr std::size_t kQ4_1Bytes = 2 + 2 + 16; // fp16 d, fp16 m, 16 bytes of nibbles
constexpr std::size_t kRowsPerTask = 16;       // rows one thread finishes before taking the next stretch
constexpr int kTokensPerPass = 4;              // tokens that share one decoded weight block

float half_at(const std::byte* p) {
    std::uint16_t bits;
    std::memcpy(&bits, p, 2);
    return fp16::to_float(bits);
}

std::size_t bytes_per_row(WeightFormat f, std::size_t cols) {
    switch (f) {
        case WeightFormat::F32: return cols * sizeof(float);
        case WeightFormat::Q8_0: return cols / kBlock * kQ8_0Bytes;
        case WeightFormat::Q4_1: return cols / kBlock * kQ4_1Bytes;
    }
    return 0;
}

/// Scalar decode of one row into floats; used by dequantize_row and the reference product.
void decode_row(WeightFormat f, const std::byte* row, std::size_t cols, float* out) {
    switch (f) {
        case WeightFormat::F32: std::memcpy(out, row, cols * sizeof(float)); return;
        case WeightFormat::Q8_0:
            for (std::size_t b = 0; b < cols / kBlock; ++b) {
                const std::byte* blk = row + b * kQ8_0Bytes;
                const float d = half_at(blk);
                for (std::size_t j = 0; j < kBlock; ++j) {
                    out[b * kBlock + j] = d * static_cast<float>(static_cast<std::int8_t>(blk[2 + j]));
                }
            }
            return;
        case WeightFormat::Q4_1:
            for (std::size_t b = 0; b < cols / kBlock; ++b) {
                const std::byte* blk = row + b * kQ4_1Bytes;
                const float d = half_at(blk);
                const float m = half_at(blk + 2);
                for (std::size_t j = 0; j < 16; ++j) {
                    const auto byte = static_cast<unsigned>(blk[4 + j]);
                    out[b * kBlock + j] = d * static_cast<float>(byte & 0x0Fu) + m;
                    out[b * kBlock + j + 16] = d * static_cast<float>(byte >> 4) + m;
                }
            }
            return;
    }
}

#if KVCACHE_MATMUL_AVX2
/// Horizontal sum in one fixed order.
inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
inline __m256 u8_to_ps(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)); }
inline __m256 i8_to_ps(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)); }
/// The 32 decoded integer codes of one block (q0..q3, 8 lanes each) against 32 inputs, in one fixed order.
inline __m256 block_dot(__m256 q0, __m256 q1, __m256 q2, __m256 q3, const float* xb) {
    __m256 s = _mm256_mul_ps(q0, _mm256_loadu_ps(xb));
    s = _mm256_fmadd_ps(q1, _mm256_loadu_ps(xb + 8), s);
    s = _mm256_fmadd_ps(q2, _mm256_loadu_ps(xb + 16), s);
    return _mm256_fmadd_ps(q3, _mm256_loadu_ps(xb + 24), s);
}

// Each kernel: out[t] = dot(row, x[t]) for t < NT. A token's accumulators see the same operations for
// every NT, which is what makes batched and single-token results bitwise equal.

template <int NT>
void dot_f32(const std::byte* row_bytes, std::size_t cols, const float* const* x, const float* const*,
             float* out) {
    const auto* w = reinterpret_cast<const float*>(row_bytes);
    __m256 a0[NT], a1[NT];
    for (int t = 0; t < NT; ++t) a0[t] = a1[t] = _mm256_setzero_ps();
    std::size_t c = 0;
    for (; c + 16 <= cols; c += 16) {
        const __m256 w0 = _mm256_loadu_ps(w + c), w1 = _mm256_loadu_ps(w + c + 8);
        for (int t = 0; t < NT; ++t) {
            a0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[t] + c), a0[t]);
            a1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x[t] + c + 8), a1[t]);
        }
    }
    for (int t = 0; t < NT; ++t) {
        float tail = 0;
        for (std::size_t k = c; k < cols; ++k) tail = std::fma(w[k], x[t][k], tail);
        out[t] = hsum(_mm256_add_ps(a0[t], a1[t])) + tail;
    }
}

template <int NT>
void dot_q8_0(const std::byte* row, std::size_t cols, const float* const* x, const float* const*, float* out) {
    __m256 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    for (std::size_t b = 0; b < cols / kBlock; ++b) {
        const std::byte* blk = row + b * kQ8_0Bytes;
        const __m256 d = _mm256_set1_ps(half_at(blk));
        const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
        const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 18));
        const __m256 q0 = i8_to_ps(lo), q1 = i8_to_ps(_mm_srli_si128(lo, 8));
        const __m256 q2 = i8_to_ps(hi), q3 = i8_to_ps(_mm_srli_si128(hi, 8));
        for (int t = 0; t < NT; ++t) {
            acc[t] = _mm256_fmadd_ps(d, block_dot(q0, q1, q2, q3, x[t] + b * kBlock), acc[t]);
        }
    }
    for (int t = 0; t < NT; ++t) out[t] = hsum(acc[t]);
}

/// Q4_1: dot = sum_b d_b * (q_b . x_b) + m_b * sum(x_b); the block sums of x are computed once per token.
template <int NT>
void dot_q4_1(const std::byte* row, std::size_t cols, const float* const* x, const float* const* xsum,
              float* out) {
    __m256 acc[NT];
    float macc[NT];
    for (int t = 0; t < NT; ++t) {
        acc[t] = _mm256_setzero_ps();
        macc[t] = 0;
    }
    const __m128i nibble = _mm_set1_epi8(0x0F);
    for (std::size_t b = 0; b < cols / kBlock; ++b) {
        const std::byte* blk = row + b * kQ4_1Bytes;
        const __m256 d = _mm256_set1_ps(half_at(blk));
        const float m = half_at(blk + 2);
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 4));
        const __m128i lo = _mm_and_si128(raw, nibble);
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), nibble);
        const __m256 q0 = u8_to_ps(lo), q1 = u8_to_ps(_mm_srli_si128(lo, 8));
        const __m256 q2 = u8_to_ps(hi), q3 = u8_to_ps(_mm_srli_si128(hi, 8));
        for (int t = 0; t < NT; ++t) {
            acc[t] = _mm256_fmadd_ps(d, block_dot(q0, q1, q2, q3, x[t] + b * kBlock), acc[t]);
            macc[t] = std::fma(m, xsum[t][b], macc[t]);
        }
    }
    for (int t = 0; t < NT; ++t) out[t] = hsum(acc[t]) + macc[t];
}
#else
// Portable fallback with the same per-token structure (one fixed order per output).
template <int NT>
void dot_generic(WeightFormat f, const std::byte* row, std::size_t cols, const float* const* x, float* out) {
    thread_local std::vector<float> w;
    w.resize(cols);
    decode_row(f, row, cols, w.data());
    for (int t = 0; t < NT; ++t) {
        float s = 0;
        for (std::size_t c = 0; c < cols; ++c) s = std::fma(w[c], x[t][c], s);
        out[t] = s;
    }
}
template <int NT>
void dot_f32(const std::byte* r, std::size_t c, const float* const* x, const float* const*, float* o) {
    dot_generic<NT>(WeightFormat::F32, r, c, x, o);
}
template <int NT>
void dot_q8_0(const std::byte* r, std::size_t c, const float* const* x, const float* const*, float* o) {
    dot_generic<NT>(WeightFormat::Q8_0, r, c, x, o);
}
template <int NT>
void dot_q4_1(const std::byte* r, std::size_t c, const float* const* x, const float* const*, float* o) {
    dot_generic<NT>(WeightFormat::Q4_1, r, c, x, o);
}
#endif

using DotFn = void (*)(const std::byte*, std::size_t, const float* const*, const float* const*, float*);


DotFn kernel_for(WeightFormat f, int nt) {
    static constexpr DotFn f32[] = {dot_f32<1>, dot_f32<2>, dot_f32<3>, dot_f32<4>};
    static constexpr DotFn q8[] = {dot_q8_0<1>, dot_q8_0<2>, dot_q8_0<3>, dot_q8_0<4>};
    static constexpr DotFn q4[] = {dot_q4_1<1>, dot_q4_1<2>, dot_q4_1<3>, dot_q4_1<4>};
    switch (f) {
        case WeightFormat::F32: return f32[nt - 1];
        case WeightFormat::Q8_0: return q8[nt - 1];
        case WeightFormat::Q4_1: return q4[nt - 1];
    }
    return nullptr;
}

}  // namespace

std::string weight_format_name(WeightFormat f) {
    switch (f) {
        case WeightFormat::F32: return "F32";
        case WeightFormat::Q8_0: return "Q8_0";
        case WeightFormat::Q4_1: return "Q4_1";
    }
    return "?";
}

std::size_t WeightMatrix::row_bytes() const { return bytes_per_row(format_, cols_); }

WeightMatrix WeightMatrix::from_floats(std::size_t rows, std::size_t cols, std::span<const float> data) {
    if (data.size() != rows * cols) {
        throw ShapeError(fmt::format("weight matrix [{}][{}] needs {} floats, got {}", rows, cols, rows * cols,
                                     data.size()));
    }
    WeightMatrix w;
    w.format_ = WeightFormat::F32;
    w.rows_ = rows;
    w.cols_ = cols;
    w.data_ = detail::AlignedBuffer<std::byte>(data.size_bytes());
    if (!data.empty()) std::memcpy(w.data_.data(), data.data(), data.size_bytes());
    return w;
}

WeightMatrix WeightMatrix::from_blocks(WeightFormat format, std::size_t rows, std::size_t cols,
                                       std::span<const std::byte> bytes) {
    if (format != WeightFormat::F32 && cols % kBlock != 0) {
        throw ShapeError(fmt::format("{} weight rows must be a multiple of {} long, got {}",
                                     weight_format_name(format), kBlock, cols));
    }
    const std::size_t expected = rows * bytes_per_row(format, cols);
    if (bytes.size() != expected) {
        throw ShapeError(fmt::format("{} weight matrix [{}][{}] needs {} bytes, got {}", weight_format_name(format),
                                     rows, cols, expected, bytes.size()));
    }
    WeightMatrix w;
    w.format_ = format;
    w.rows_ = rows;
    w.cols_ = cols;
    w.data_ = detail::AlignedBuffer<std::byte>(expected);
    if (expected) std::memcpy(w.data_.data(), bytes.data(), expected);
    return w;
}

void WeightMatrix::dequantize_row(std::size_t r, float* out) const {
    if (r >= rows_) throw IndexError(fmt::format("weight row {} out of range (there are {})", r, rows_));
    decode_row(format_, row_data(r), cols_, out);
}

namespace {

/// The product over `rows` rows of `format`, row r at base + r * row_stride: the one driver behind matmul and
/// matmul_f32, so both keep the determinism contract by construction.
void matmul_rows(WeightFormat format, const std::byte* base, std::size_t row_stride, std::size_t rows,
                 std::size_t cols, const float* x, std::size_t n, float* y, int threads) {
    if (n == 0 || rows == 0) return;

    // Per-token block sums of x for Q4_1's min term: computed once here, in one fixed order.
    thread_local std::vector<float> xsum_storage;  // (n, cols / 32)
    const std::size_t nb = cols / kBlock;
    if (format == WeightFormat::Q4_1) {
        xsum_storage.resize(n * nb);
        for (std::size_t t = 0; t < n; ++t) {
            for (std::size_t b = 0; b < nb; ++b) {
                float s = 0;
                for (std::size_t j = 0; j < kBlock; ++j) s += x[t * cols + b * kBlock + j];
                xsum_storage[t * nb + b] = s;
            }
        }
    }
    const float* xsum = xsum_storage.data();
    const std::size_t tasks = (rows + kRowsPerTask - 1) / kRowsPerTask;
    const int n_threads = detail::thread_count(threads, tasks, rows * row_stride);

    // Each task writes rows [r0, r1) of every token and nothing else: its output does not depend on the thread.
    detail::parallel_for(tasks, 1, n_threads, [&](std::size_t first_task, std::size_t end_task) {
        for (std::size_t task = first_task; task < end_task; ++task) {
            const std::size_t r0 = task * kRowsPerTask;
            const std::size_t r1 = std::min(rows, r0 + kRowsPerTask);
            for (std::size_t t = 0; t < n; t += kTokensPerPass) {
                const int nt = static_cast<int>(std::min<std::size_t>(kTokensPerPass, n - t));
                const float* xs[kTokensPerPass];
                const float* ss[kTokensPerPass];
                for (int i = 0; i < nt; ++i) {
                    xs[i] = x + (t + i) * cols;
                    ss[i] = xsum + (t + i) * nb;
                }
                const DotFn dot = kernel_for(format, nt);
                float out[kTokensPerPass];
                for (std::size_t r = r0; r < r1; ++r) {
                    dot(base + r * row_stride, cols, xs, ss, out);
                    for (int i = 0; i < nt; ++i) y[(t + i) * rows + r] = out[i];
                }
            }
        }
    });
}

}  // namespace

void matmul(const WeightMatrix& w, const float* x, std::size_t n, float* y, int threads) {
    if (w.rows() == 0) return;
    matmul_rows(w.format(), w.row_data(0), w.row_bytes(), w.rows(), w.cols(), x, n, y, threads);
}

void matmul_f32(const float* w, std::size_t rows, std::size_t cols, const float* x, std::size_t n, float* y,
                int threads) {
    matmul_rows(WeightFormat::F32, reinterpret_cast<const std::byte*>(w), cols * sizeof(float), rows, cols, x, n, y,
                threads);
}

void matmul_reference(const WeightMatrix& w, const float* x, std::size_t n, float* y) {
    std::vector<float> row(w.cols());
    for (std::size_t r = 0; r < w.rows(); ++r) {
        w.dequantize_row(r, row.data());
        for (std::size_t t = 0; t < n; ++t) {
            double s = 0;
            for (std::size_t c = 0; c < w.cols(); ++c) s += double(row[c]) * double(x[t * w.cols() + c]);
            y[t * w.rows() + r] = static_cast<float>(s);
        }
    }
}

}  // namespace kvcache
