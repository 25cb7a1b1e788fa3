// The int8 product for Q4_1 weights: each activation row is rounded to int8 codes per block of 32 (one float
// scale per block), and each weight block's 4-bit codes meet them in integer multiply-adds. (Q8_0 weights take
// the f32 path: a Q8_0 kernel of the same shape was correct but 1.3-1.5x slower than f32 once its rows came
// from DRAM, eight interleaved 34-byte streams, so it was dropped — see docs/batching.md.)
//
// Why it is faster, and how it stays deterministic:
// - The AVX2 kernel works on eight weight rows at a time and puts the rows in the lanes: a block's codes of
//   the eight rows are transposed once (register g holds values 4g..4g+3 of every row) and then serve every
//   token of the pass, which only broadcasts its four codes per register. vpmaddubsw multiplies 32 code
//   pairs per instruction, the sums stay in 16-bit lanes for a whole Q4_1 block, and one float step per
//   block finishes eight rows at once — no horizontal sums at all.
// - Per output the float arithmetic is: acc = 0; for each block b in order: acc = fma(dw_b * dx_b,
//   float(isum_b), acc), and for Q4_1 then acc = fma(m_b, sum(x_b), acc). isum_b is an exact integer
//   (|isum| < 2^24, so its float is exact too), so the vector lane and the scalar loop below compute the
//   same bits, alone or batched, at any thread count.
#include "matmul_int8.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "kvcache/detail/simd.hpp"
#include "kvcache/detail/thread_pool.hpp"
#include "kvcache/element_types.hpp"

namespace kvcache::detail {

namespace {

constexpr std::size_t kBlock = 32;
constexpr std::size_t kQ4_1Bytes = 2 + 2 + 16;
constexpr std::size_t kRows = 8;           // weight rows per kernel call: the eight float lanes
constexpr std::size_t kRowsPerTask = 16;   // rows one thread finishes before taking the next stretch
constexpr int kTokensPerPass = 8;          // tokens that share one transposed weight block
constexpr std::size_t kPrefetchBlocks = 16; // how far ahead in each row the kernel prefetches

float half_at(const std::byte* p) {
    std::uint16_t bits;
    std::memcpy(&bits, p, 2);
    return fp16::to_float(bits);
}

/// One token's activations as int8 blocks: codes q (cols), scales d and float block sums s (cols / 32 each).
struct QuantizedRow {
    const std::int8_t* q;
    const float* d;
    const float* s;
};

/// Rounds x (cols values) to int8 per block: d = max|x| / 127, q = round-to-nearest-even(x / d), so
/// |q| <= 127 (which the kernels' 16-bit sums rely on). s_b = x_0 + ... + x_31 of the float values, in
/// that order, for Q4_1's min term. Elementwise and order-free apart from s, so any compiler
/// vectorisation gives the same bits.
void quantize_row(const float* x, std::size_t cols, std::int8_t* q, float* d, float* s) {
    for (std::size_t b = 0; b < cols / kBlock; ++b) {
        const float* xb = x + b * kBlock;
        float amax = 0.0f, sum = 0.0f;
        for (std::size_t j = 0; j < kBlock; ++j) {
            amax = std::max(amax, std::fabs(xb[j]));
            sum += xb[j];
        }
        const float scale = amax / 127.0f;
        const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
        for (std::size_t j = 0; j < kBlock; ++j) {
            const float v = std::clamp(std::nearbyint(xb[j] * inv), -127.0f, 127.0f);
            q[b * kBlock + j] = static_cast<std::int8_t>(v);
        }
        d[b] = scale;
        s[b] = sum;
    }
}

/// Integer code j (0..15) of a Q4_1 block.
int weight_code(const std::byte* blk, std::size_t j) {
    const auto byte = static_cast<unsigned>(blk[4 + (j & 15)]);
    return static_cast<int>(j < 16 ? (byte & 0x0Fu) : (byte >> 4));
}

/// The scalar kernel: the definition of the int8 product (see the file comment for its float steps).
void dot_rows_scalar(const std::byte* const* rows, std::size_t cols, const QuantizedRow* xs, int nt,
                     float* const* out) {
    for (std::size_t r = 0; r < kRows; ++r) {
        for (int t = 0; t < nt; ++t) {
            float acc = 0.0f;
            for (std::size_t b = 0; b < cols / kBlock; ++b) {
                const std::byte* blk = rows[r] + b * kQ4_1Bytes;
                std::int32_t isum = 0;
                for (std::size_t j = 0; j < kBlock; ++j) isum += weight_code(blk, j) * xs[t].q[b * kBlock + j];
                const float dd = half_at(blk) * xs[t].d[b];
                acc = std::fma(dd, static_cast<float>(isum), acc);
                acc = std::fma(half_at(blk + 2), xs[t].s[b], acc);
            }
            out[t][r] = acc;
        }
    }
}

#if KVCACHE_HAVE_AVX2
/// The 32 codes of a Q4_1 block as bytes in value order (low nibbles are values 0..15, high nibbles 16..31).
[[gnu::always_inline]] inline __m256i row_codes(const std::byte* blk) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 4));
    const __m128i mask = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(packed, mask);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
    return _mm256_set_m128i(hi, lo);
}

/// 8x8 transpose of 32-bit groups: in, row r's groups g = 0..7; out, group g's rows r = 0..7.
[[gnu::always_inline]] inline void transpose8(__m256i v[8]) {
    __m256i t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_epi32(v[i], v[i + 1]);      // r_i g0 r_i+1 g0 r_i g1 r_i+1 g1 | g4 g5
        t[i + 1] = _mm256_unpackhi_epi32(v[i], v[i + 1]);  // g2 g3 | g6 g7
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);          // rows i..i+3 of g0 | g4
        u[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]);      // g1 | g5
        u[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);  // g2 | g6
        u[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);  // g3 | g7
    }
    for (int g = 0; g < 4; ++g) {
        v[g] = _mm256_permute2x128_si256(u[g], u[g + 4], 0x20);
        v[g + 4] = _mm256_permute2x128_si256(u[g], u[g + 4], 0x31);
    }
}

/// The fp16 values at byte offset `offset` of the eight rows, as floats (lane r = row r). Inserted into a
/// register one by one: eight 2-byte stores read back as one 16-byte load would stall store forwarding.
[[gnu::always_inline]] inline __m256 row_halves(const std::byte* const* rows, std::size_t offset) {
    const auto h = [&](std::size_t r) {
        std::int16_t v;
        std::memcpy(&v, rows[r] + offset, 2);
        return v;
    };
    return _mm256_cvtph_ps(_mm_setr_epi16(h(0), h(1), h(2), h(3), h(4), h(5), h(6), h(7)));
}

/// The vector kernel: out[t][0..7] for eight rows and NT tokens; lane r carries row r's scalar steps.
template <int NT>
void dot_rows_avx2(const std::byte* const* rows, std::size_t cols, const QuantizedRow* xs, float* const* out) {
    constexpr std::size_t block_bytes = kQ4_1Bytes;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    for (std::size_t b = 0; b < cols / kBlock; ++b) {
        const std::size_t at = b * block_bytes;
        // Eight rows are eight interleaved streams of 20 or 34 bytes a step, which the hardware prefetcher
        // follows poorly once the weights come from DRAM (int8 was 1.3-1.7x slower than f32 on a 37 MB matrix
        // without this): ask for each row's line a few blocks ahead.
        for (std::size_t r = 0; r < kRows; ++r) {
            _mm_prefetch(reinterpret_cast<const char*>(rows[r] + at + kPrefetchBlocks * block_bytes), _MM_HINT_T0);
        }
        __m256i w[8];
        for (std::size_t r = 0; r < kRows; ++r) w[r] = row_codes(rows[r] + at);
        transpose8(w);
        const __m256 dw = row_halves(rows, at);
        const __m256 mw = row_halves(rows, at + 2);
        for (int t = 0; t < NT; ++t) {
            const std::int8_t* q = xs[t].q + b * kBlock;
            // codes 0..15 times |x| <= 127: a 16-bit lane sums at most 16 products (<= 30480), no overflow
            __m256i p = _mm256_setzero_si256();
            for (int g = 0; g < 8; ++g) {
                std::int32_t four;
                std::memcpy(&four, q + 4 * g, 4);
                p = _mm256_add_epi16(p, _mm256_maddubs_epi16(w[g], _mm256_set1_epi32(four)));
            }
            const __m256i isum = _mm256_madd_epi16(p, ones);
            const __m256 dd = _mm256_mul_ps(dw, _mm256_set1_ps(xs[t].d[b]));
            acc[t] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(isum), acc[t]);
            acc[t] = _mm256_fmadd_ps(mw, _mm256_set1_ps(xs[t].s[b]), acc[t]);
        }
    }
    for (int t = 0; t < NT; ++t) _mm256_storeu_ps(out[t], acc[t]);
}

using RowsFn = void (*)(const std::byte* const*, std::size_t, const QuantizedRow*, float* const*);

template <std::size_t... I>
constexpr std::array<RowsFn, sizeof...(I)> avx2_kernels(std::index_sequence<I...>) {
    return {dot_rows_avx2<int(I) + 1>...};
}

RowsFn avx2_kernel(int nt) {
    static constexpr auto kernels = avx2_kernels(std::make_index_sequence<kTokensPerPass>{});
    return kernels[std::size_t(nt - 1)];
}
#endif

}  // namespace

void matmul_int8_rows(const std::byte* base, std::size_t row_stride, std::size_t rows,
                      std::size_t cols, const float* x, std::size_t n, float* y, int threads, bool vector) {
    if (n == 0 || rows == 0) return;
#if !KVCACHE_HAVE_AVX2
    vector = false;
#endif
    // Every token's int8 row, once per product, in one fixed order (each token on its own).
    thread_local std::vector<std::int8_t> q_storage;  // (n, cols)
    thread_local std::vector<float> ds_storage;       // (n, 2, cols / 32): scales, then block sums
    const std::size_t nb = cols / kBlock;
    q_storage.resize(n * cols);
    ds_storage.resize(n * 2 * nb);
    for (std::size_t t = 0; t < n; ++t) {
        quantize_row(x + t * cols, cols, q_storage.data() + t * cols, ds_storage.data() + t * 2 * nb,
                     ds_storage.data() + t * 2 * nb + nb);
    }
    const std::int8_t* qs = q_storage.data();
    const float* ds = ds_storage.data();

    const std::size_t tasks = (rows + kRowsPerTask - 1) / kRowsPerTask;
    const int n_threads = thread_count(threads, tasks, rows * row_stride);
    parallel_for(tasks, 1, n_threads, {.size = rows * row_stride * n},
                 [&](std::size_t first_task, std::size_t end_task) {
        for (std::size_t task = first_task; task < end_task; ++task) {
            const std::size_t task_end = std::min(rows, (task + 1) * kRowsPerTask);
            for (std::size_t r0 = task * kRowsPerTask; r0 < task_end; r0 += kRows) {
                // A group of eight rows; past the last row the final row stands in, its extra results dropped
                // (a row's result does not depend on its neighbours).
                const std::byte* row_ptr[kRows];
                for (std::size_t i = 0; i < kRows; ++i) row_ptr[i] = base + std::min(r0 + i, task_end - 1) * row_stride;
                const std::size_t live = std::min(kRows, task_end - r0);
                for (std::size_t t = 0; t < n; t += kTokensPerPass) {
                    const int nt = static_cast<int>(std::min<std::size_t>(kTokensPerPass, n - t));
                    QuantizedRow xs[kTokensPerPass];
                    alignas(32) float results[kTokensPerPass][kRows];
                    float* outs[kTokensPerPass];
                    for (int i = 0; i < nt; ++i) {
                        const std::size_t tok = t + std::size_t(i);
                        xs[i] = {qs + tok * cols, ds + tok * 2 * nb, ds + tok * 2 * nb + nb};
                        outs[i] = results[i];
                    }
#if KVCACHE_HAVE_AVX2
                    if (vector) {
                        avx2_kernel(nt)(row_ptr, cols, xs, outs);
                    } else {
                        dot_rows_scalar(row_ptr, cols, xs, nt, outs);
                    }
#else
                    dot_rows_scalar(row_ptr, cols, xs, nt, outs);
#endif
                    for (int i = 0; i < nt; ++i) {
                        std::memcpy(y + (t + std::size_t(i)) * rows + r0, results[i], live * sizeof(float));
                    }
                }
            }
        }
    });
}

}  // namespace kvcache::detail
