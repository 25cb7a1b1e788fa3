// Weight storage and the matrix products of the reference model: vector kernels (detail/simd.hpp) plus a
// scalar reference.
#include "kvcache/model/matmul.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "kvcache/detail/simd.hpp"
#include "kvcache/detail/thread_pool.hpp"
#include "kvcache/element_types.hpp"
#include "kvcache/error.hpp"
#include "matmul_int8.hpp"

namespace kvcache {

namespace {

constexpr std::size_t kBlock = 32;             // elements per quantised block
constexpr std::size_t kQ8_0Bytes = 2 + 32;     // fp16 d, 32 x int8
constexpr std::size_t kQ4_1Bytes = 2 + 2 + 16; // fp16 d, fp16 m, 16 bytes of nibbles
// Rows one thread finishes before taking the next stretch: one constant for the f32 and the int8 tasks, which
// run_products cuts alike.
constexpr std::size_t kRowsPerTask = detail::kInt8RowsPerTask;
// Tokens that share one decoded weight block: the batch width of one pass over the weights. Any value >= 1
// gives the same bits (a token's arithmetic does not depend on its neighbours); wider decodes each block
// fewer times per batch but needs one accumulator register per token. 8 is what AVX2's 16 registers hold
// for the quantised kernels (8 accumulators + 4 codes + scale + min sums); f32 runs 8 as two passes of 4.
constexpr int kTokensPerPass = 8;
// The f32 kernel keeps two accumulators per token, so at most this many tokens share a pass over a row.
constexpr int kF32TokensPerPass = 4;

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

// Each kernel: out[t] = dot(row, x[t]) for t < NT. A token's accumulators see the same operations for
// every NT, which is what makes batched and single-token results bitwise equal. The vector primitives are
// detail/simd.hpp's, shared with attention.
#if KVCACHE_HAVE_AVX2
using V8 = detail::Simd<8>;

/// Sets every accumulator to zero in straight-line code: GCC turns the loop form into a call to memset for
/// the 8-token kernels (one call per row), and the accumulators live in registers anyway.
template <int NT>
void zero_all(V8::V (&acc)[NT]) {
    [&]<int... I>(std::integer_sequence<int, I...>) { ((acc[I] = V8::zero()), ...); }(
        std::make_integer_sequence<int, NT>{});
}

template <int NT>
void dot_f32(const std::byte* row_bytes, std::size_t cols, const float* const* x, const float* const* xsum,
             float* out) {
    if constexpr (NT > kF32TokensPerPass) {
        // More accumulators than registers: the row again from L1 for the rest (nothing to decode in f32).
        dot_f32<kF32TokensPerPass>(row_bytes, cols, x, xsum, out);
        dot_f32<NT - kF32TokensPerPass>(row_bytes, cols, x + kF32TokensPerPass, xsum, out + kF32TokensPerPass);
        return;
    }
    const auto* w = reinterpret_cast<const float*>(row_bytes);
    V8::V a0[NT], a1[NT];
    for (int t = 0; t < NT; ++t) a0[t] = a1[t] = V8::zero();
    std::size_t c = 0;
    for (; c + 16 <= cols; c += 16) {
        const V8::V w0 = V8::loadf(w + c), w1 = V8::loadf(w + c + 8);
        for (int t = 0; t < NT; ++t) {
            a0[t] = V8::fmadd(w0, V8::loadf(x[t] + c), a0[t]);
            a1[t] = V8::fmadd(w1, V8::loadf(x[t] + c + 8), a1[t]);
        }
    }
    for (int t = 0; t < NT; ++t) {
        float tail = 0;
        for (std::size_t k = c; k < cols; ++k) tail = std::fma(w[k], x[t][k], tail);
        out[t] = detail::hsum(V8::add(a0[t], a1[t])) + tail;
    }
}

template <int NT>
void dot_q8_0(const std::byte* row, std::size_t cols, const float* const* x, const float* const*, float* out) {
    V8::V acc[NT];
    zero_all(acc);
    V8::V q[4];
    for (std::size_t b = 0; b < cols / kBlock; ++b) {
        const std::byte* blk = row + b * kQ8_0Bytes;
        const V8::V d = V8::set1(half_at(blk));
        detail::q8_codes(blk + 2, q);
        for (int t = 0; t < NT; ++t) acc[t] = V8::fmadd(d, detail::block32_dot(q, x[t] + b * kBlock), acc[t]);
    }
    for (int t = 0; t < NT; ++t) out[t] = detail::hsum(acc[t]);
}

/// Q4_1: dot = sum_b d_b * (q_b . x_b) + m_b * sum(x_b); the block sums of x are computed once per token.
/// xsum[0] holds them block-major for the pass's tokens (block b of token t at b * kTokensPerPass + t), so the
/// min terms of all tokens are one vector fma per block: lane t computes fma(m_b, sum_b[t], macc[t]), exactly
/// the scalar std::fma a token alone gets (one rounding either way), and keeps 8 scalars out of the registers.
template <int NT>
void dot_q4_1(const std::byte* row, std::size_t cols, const float* const* x, const float* const* xsum,
              float* out) {
    static_assert(kTokensPerPass == 8, "the min sums of one pass fill one 8-lane vector");
    V8::V acc[NT];
    zero_all(acc);
    V8::V macc = V8::zero();
    const float* sums = xsum[0];
    V8::V q[4];
    for (std::size_t b = 0; b < cols / kBlock; ++b) {
        const std::byte* blk = row + b * kQ4_1Bytes;
        const V8::V d = V8::set1(half_at(blk));
        macc = V8::fmadd(V8::set1(half_at(blk + 2)), V8::loadf(sums + b * kTokensPerPass), macc);
        detail::q4_codes(blk + 4, q);
        for (int t = 0; t < NT; ++t) acc[t] = V8::fmadd(d, detail::block32_dot(q, x[t] + b * kBlock), acc[t]);
    }
    alignas(32) float m[8];
    V8::store(m, macc);
    for (int t = 0; t < NT; ++t) out[t] = detail::hsum(acc[t]) + m[t];
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

/// The kernels for 1..kTokensPerPass tokens of one format, indexed by token count - 1.
template <std::size_t... I>
constexpr std::array<DotFn, sizeof...(I)> f32_kernels(std::index_sequence<I...>) {
    return {dot_f32<int(I) + 1>...};
}
template <std::size_t... I>
constexpr std::array<DotFn, sizeof...(I)> q8_0_kernels(std::index_sequence<I...>) {
    return {dot_q8_0<int(I) + 1>...};
}
template <std::size_t... I>
constexpr std::array<DotFn, sizeof...(I)> q4_1_kernels(std::index_sequence<I...>) {
    return {dot_q4_1<int(I) + 1>...};
}

DotFn kernel_for(WeightFormat f, int nt) {
    static constexpr auto widths = std::make_index_sequence<kTokensPerPass>{};
    static constexpr auto f32 = f32_kernels(widths);
    static constexpr auto q8 = q8_0_kernels(widths);
    static constexpr auto q4 = q4_1_kernels(widths);
    switch (f) {
        case WeightFormat::F32: return f32[std::size_t(nt - 1)];
        case WeightFormat::Q8_0: return q8[std::size_t(nt - 1)];
        case WeightFormat::Q4_1: return q4[std::size_t(nt - 1)];
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
    if (format != WeightFormat::F32) w.int8_ = std::make_shared<detail::Int8Layout>();
    return w;
}

namespace detail {

const std::byte* int8_layout(const WeightMatrix& w) {
    // Only the vector kernel reads the copy: a build without it (the portable kernel reads the rows as stored)
    // makes none.
    if (!KVCACHE_HAVE_AVX2 || !w.int8_ || w.rows_ == 0) return nullptr;
    std::call_once(w.int8_->built, [&] {
        w.int8_->groups = interleave_rows(w.format_, w.row_data(0), w.row_bytes(), w.rows_, w.cols_);
    });
    return w.int8_->groups.data();
}

}  // namespace detail

void WeightMatrix::dequantize_row(std::size_t r, float* out) const {
    if (r >= rows_) throw IndexError(fmt::format("weight row {} out of range (there are {})", r, rows_));
    decode_row(format_, row_data(r), cols_, out);
}

namespace {

/// One product of a driver call, as the kernels see it: `rows` rows of `format` (row r at base + r * row_stride)
/// into y ([n][rows]); int8 ones read the interleaved `groups` (null: the scalar kernel reads the rows).
struct RowProduct {
    WeightFormat format;
    const std::byte* base;
    std::size_t row_stride;
    std::size_t rows;
    float* y;
    bool int8 = false;
    const std::byte* groups = nullptr;
    std::size_t tasks() const { return (rows + kRowsPerTask - 1) / kRowsPerTask; }
};

/// Per-token block sums of x for Q4_1's min term in the f32 kernels: computed once per call, in one fixed order,
/// and stored block-major within each pass of kTokensPerPass tokens (what dot_q4_1 loads as one vector).
struct BlockSums {
    const float* sums = nullptr;
    std::size_t pass_stride = 0;
};
BlockSums block_sums(const float* x, std::size_t n, std::size_t cols) {
    thread_local std::vector<float> storage;  // (passes, cols / 32, kTokensPerPass)
    const std::size_t nb = cols / kBlock;
    const std::size_t pass_stride = nb * kTokensPerPass;
    const std::size_t passes = (n + kTokensPerPass - 1) / kTokensPerPass;
    storage.assign(passes * pass_stride, 0.0f);
    for (std::size_t t = 0; t < n; ++t) {
        float* sums = storage.data() + t / kTokensPerPass * pass_stride + t % kTokensPerPass;
        const float* xt = x + t * cols;
        // Each block's sum is x[0] + x[1] + ... + x[31] in that order; the blocks' sums are interleaved
        // (block loop inside) so the CPU runs nb independent add chains instead of one serial chain.
        for (std::size_t b = 0; b < nb; ++b) sums[b * kTokensPerPass] = 0.0f;
        for (std::size_t j = 0; j < kBlock; ++j) {
            for (std::size_t b = 0; b < nb; ++b) sums[b * kTokensPerPass] += xt[b * kBlock + j];
        }
    }
    return {storage.data(), pass_stride};
}

/// Rows [task * kRowsPerTask, ...) of a float-kernel product, every token: each task writes those rows and nothing
/// else, so its output does not depend on the thread that runs it.
void f32_task(const RowProduct& p, std::size_t cols, const float* x, std::size_t n, const BlockSums& sums,
              std::size_t task) {
    const std::size_t r0 = task * kRowsPerTask;
    const std::size_t r1 = std::min(p.rows, r0 + kRowsPerTask);
    for (std::size_t t = 0; t < n; t += kTokensPerPass) {
        const int nt = static_cast<int>(std::min<std::size_t>(kTokensPerPass, n - t));
        const float* xs[kTokensPerPass];
        const float* ss[kTokensPerPass];
        for (int i = 0; i < nt; ++i) {
            xs[i] = x + (t + i) * cols;
            ss[i] = nullptr;
        }
        if (p.format == WeightFormat::Q4_1) ss[0] = sums.sums + t / kTokensPerPass * sums.pass_stride;  // only Q4_1 has sums
        const DotFn dot = kernel_for(p.format, nt);
        float out[kTokensPerPass];
        for (std::size_t r = r0; r < r1; ++r) {
            dot(p.base + r * p.row_stride, cols, xs, ss, out);
            for (int i = 0; i < nt; ++i) p.y[(t + i) * p.rows + r] = out[i];
        }
    }
}

/// The one driver behind matmul, matmul_shared_input and matmul_f32: every product of one input x ([n][cols])
/// as one parallel_for over all their tasks. A row's result comes from the same task code whichever products
/// share the call, so the determinism contract holds by construction.
void run_products(std::span<const RowProduct> products, std::size_t cols, const float* x, std::size_t n,
                  int threads) {
    if (n == 0) return;
    bool any_int8 = false, any_f32_q4_1 = false;
    std::size_t tasks = 0, bytes = 0;
    for (const RowProduct& p : products) {
        any_int8 |= p.int8;
        any_f32_q4_1 |= !p.int8 && p.format == WeightFormat::Q4_1;
        tasks += p.tasks();
        bytes += p.rows * p.row_stride;
    }
    if (tasks == 0) return;
    const BlockSums sums = any_f32_q4_1 ? block_sums(x, n, cols) : BlockSums{};
    const detail::Int8Activations qx = any_int8 ? detail::quantize_activations(x, n, cols) : detail::Int8Activations{};
    const int n_threads = detail::thread_count(threads, tasks, bytes);
    detail::parallel_for(tasks, 1, n_threads, {.size = bytes * n}, [&](std::size_t first, std::size_t end) {
        // A claim is a run of consecutive tasks: find the product of the first, then walk on.
        std::size_t p = 0, p_first = 0;  // product, and the index of its first task among all
        while (first >= p_first + products[p].tasks()) p_first += products[p++].tasks();
        for (std::size_t task = first; task < end; ++task) {
            while (task >= p_first + products[p].tasks()) p_first += products[p++].tasks();
            const RowProduct& prod = products[p];
            if (prod.int8) {
                detail::matmul_int8_task(prod.format, prod.base, prod.row_stride, prod.groups, prod.rows, qx, prod.y,
                                         task - p_first);
            } else {
                f32_task(prod, cols, x, n, sums, task - p_first);
            }
        }
    });
}

RowProduct product_of(const WeightMatrix& w, float* y, MatmulPrecision precision) {
    RowProduct p{w.format(), w.row_data(0), w.row_bytes(), w.rows(), y};
    if (precision == MatmulPrecision::int8 && w.format() != WeightFormat::F32) {
        p.int8 = true;
        p.groups = detail::int8_layout(w);
    }
    return p;
}

}  // namespace

std::string matmul_precision_name(MatmulPrecision p) { return p == MatmulPrecision::int8 ? "int8" : "f32"; }

MatmulPrecision parse_matmul_precision(const std::string& name) {
    if (name == "f32") return MatmulPrecision::f32;
    if (name == "int8") return MatmulPrecision::int8;
    throw ConfigError(fmt::format("unknown matmul precision '{}' (expected f32 or int8)", name));
}

void matmul(const WeightMatrix& w, const float* x, std::size_t n, float* y, int threads, MatmulPrecision precision) {
    if (w.rows() == 0) return;
    const RowProduct p = product_of(w, y, precision);
    run_products(std::span<const RowProduct>(&p, 1), w.cols(), x, n, threads);
}

void matmul_shared_input(std::span<const MatmulOutput> outputs, const float* x, std::size_t n, int threads,
                         MatmulPrecision precision) {
    if (outputs.empty()) return;
    for (std::size_t i = 0; i < outputs.size(); ++i) {
        if (outputs[i].w == nullptr || outputs[i].y == nullptr) {
            throw ShapeError(fmt::format("matmul_shared_input: output {} has no {}", i,
                                         outputs[i].w == nullptr ? "matrix" : "result buffer"));
        }
        if (outputs[i].w->cols() != outputs[0].w->cols()) {
            throw ShapeError(fmt::format("matmul_shared_input: matrix {} has {} columns but matrix 0 has {}; the "
                                         "products share one input",
                                         i, outputs[i].w->cols(), outputs[0].w->cols()));
        }
    }
    constexpr std::size_t kInline = 8;  // products without an allocation
    std::array<RowProduct, kInline> small{};
    std::vector<RowProduct> large;
    RowProduct* products = small.data();
    if (outputs.size() > kInline) {
        large.resize(outputs.size());
        products = large.data();
    }
    std::size_t count = 0;
    for (const MatmulOutput& o : outputs) {
        if (o.w->rows() > 0) products[count++] = product_of(*o.w, o.y, precision);
    }
    run_products(std::span<const RowProduct>(products, count), outputs[0].w->cols(), x, n, threads);
}

void matmul_f32(const float* w, std::size_t rows, std::size_t cols, const float* x, std::size_t n, float* y,
                int threads) {
    if (rows == 0) return;
    const RowProduct p{WeightFormat::F32, reinterpret_cast<const std::byte*>(w), cols * sizeof(float), rows, y};
    run_products(std::span<const RowProduct>(&p, 1), cols, x, n, threads);
}

void matmul_int8_scalar(const WeightMatrix& w, const float* x, std::size_t n, float* y) {
    if (w.format() == WeightFormat::F32) {
        throw ShapeError(fmt::format("matmul_int8_scalar: the int8 kernel is for Q4_1 and Q8_0 weights, not {}",
                                     weight_format_name(w.format())));
    }
    if (w.rows() == 0) return;
    // No groups: the scalar kernel, reading the rows as stored.
    const RowProduct p{w.format(), w.row_data(0), w.row_bytes(), w.rows(), y, /*int8=*/true, /*groups=*/nullptr};
    run_products(std::span<const RowProduct>(&p, 1), w.cols(), x, n, 1);
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
