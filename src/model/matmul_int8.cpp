// The int8 product for Q4_1 and Q8_0 weights: each activation row is rounded to int8 codes per block of 32 (one
// float scale per block), and each weight block's codes meet them in integer multiply-adds.
//
// Why it is faster, and how it stays deterministic:
// - The AVX2 kernel works on eight weight rows at a time and puts the rows in the lanes. It reads a copy of the
//   matrix made once (interleave_rows): per block, the eight rows' scales side by side, then their codes laid
//   out so that register g holds values 4g..4g+3 of every row. So a group of eight rows is one contiguous
//   stream, and a block is ready after a few loads and masks. (A first version transposed each block of the
//   rows as stored, in registers, for every product: with its per-block shuffles and eight interleaved row
//   streams a one-token decode step took ~1.4x as long, and a Q8_0 kernel of that shape was slower than f32.)
// - Each token only broadcasts its four codes per register. vpmaddubsw multiplies 32 code pairs per
//   instruction; for Q4_1 the sums stay in 16-bit lanes for a whole block, for Q8_0 (signed codes: |w| times x
//   carrying w's sign) they go to 32 bits per register. One float step per block finishes eight rows at once
//   — no horizontal sums at all.
// - With AVX-512 VNNI (+VL) compiled in, vpdpbusd does the byte products and their sum into 32 bits in one
//   instruction per register; the integer sums, and so the bits, are the same.
// - Per output the float arithmetic is: acc = 0; for each block b in order: acc = fma(dw_b * dx_b,
//   float(isum_b), acc), and for Q4_1 then acc = fma(m_b, sum(x_b), acc) (the sum in one fixed order, see
//   quantize_row). isum_b is an exact integer (|isum| < 2^24, so its float is exact too), so the vector lane
//   and the scalar loop below compute the same bits, alone or batched, at any thread count.
#include "matmul_int8.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "kvcache/detail/simd.hpp"
#include "kvcache/element_types.hpp"

// AVX-512 VNNI at 256 bits (AVX512VL): one instruction for the byte products and their sum into 32 bits.
#if KVCACHE_HAVE_AVX2 && defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define KVCACHE_HAVE_VNNI 1
#else
#define KVCACHE_HAVE_VNNI 0
#endif

namespace kvcache::detail {

namespace {

constexpr std::size_t kBlock = 32;
constexpr std::size_t kQ4_1Bytes = 2 + 2 + 16;
constexpr std::size_t kQ8_0Bytes = 2 + 32;
// Weight rows per kernel call: the float lanes of one register — sixteen with 512-bit VNNI (AVX512BW's byte steps
// too: KVCACHE_HAVE_AVX512_VNNI, detail/simd.hpp), else eight.
constexpr std::size_t kRows = KVCACHE_HAVE_AVX512_VNNI ? 16 : 8;
// With 512-bit VNNI the interleaved copy stores Q8_0 codes plus 128 (as unsigned bytes: vpdpbusd's unsigned
// side), and the kernel takes 128 x the activations' code sum back off (there is no 512-bit vpsignb for the
// |w| and sign(x, w) of the 256-bit kernels).
constexpr bool kBiasedQ8Codes = KVCACHE_HAVE_AVX512_VNNI;
static_assert(kInt8RowsPerTask % kRows == 0, "a task is whole groups of rows");
constexpr int kTokensPerPass = int(kInt8TokensPerPass);  // tokens that share one transposed weight block
// One block of a group of kRows interleaved rows (see interleave_rows). Q4_1: the rows' fp16 scales, their
// fp16 mins, then four registers' worth of codes. Q8_0: the scales, then eight registers of codes.
constexpr std::size_t kGroupBlockBytes = kRows * kQ4_1Bytes;
constexpr std::size_t kQ8GroupBlockBytes = kRows * kQ8_0Bytes;
// How far ahead of the block in hand the kernel asks for the group's stream (a group is one contiguous stream,
// which the hardware prefetcher follows too, but not far enough ahead when tokens are few).
constexpr std::size_t kPrefetchBytes = 1280;

float half_at(const std::byte* p) {
    std::uint16_t bits;
    std::memcpy(&bits, p, 2);
    return fp16::to_float(bits);
}

/// One pass of int8 activations (Int8Activations' layout from the pass's first block): token slot t of block b
/// has its codes at q + (b * 8 + t) * 32 and its scale, float sum and code sum at [b * 8 + t] (slot, codes).
struct PassBlocks {
    const std::int8_t* q;
    const float* d;
    const float* s;
    const std::int32_t* qs;

    /// Index of token slot t of block b among the pass's scalars (times kBlock: among its codes).
    static std::size_t slot(std::size_t b, std::size_t t) { return b * kInt8TokensPerPass + t; }
    /// Token slot t's codes of block b.
    const std::int8_t* codes(std::size_t b, std::size_t t) const { return q + slot(b, t) * kBlock; }
};

/// The slot of token t's first block in Int8Activations (cols / 32 blocks per token).
std::size_t first_slot(std::size_t t, std::size_t nb) {
    return PassBlocks::slot(t / kInt8TokensPerPass * nb, t % kInt8TokensPerPass);
}

/// Rounds x (cols values) to int8 per block (round_block32_int8): d = max|x| / 127, q = round-to-nearest-even(x / d),
/// so |q| <= 127 (which the kernels' 16-bit sums rely on); qs_b = q_0 + ... + q_31, an exact integer (the 512-bit
/// kernel's Q8_0 correction); s_b = the float sum of the block in round_block32_int8's fixed tree order, for Q4_1's
/// min term. Block b's codes go to q + slot(b, 0) * 32 and its scalars to d, s, qs [slot(b, 0)] (PassBlocks):
/// one token slot of Int8Activations' pass layout.
void quantize_row(const float* x, std::size_t cols, std::int8_t* q, float* d, float* s, std::int32_t* qs) {
    for (std::size_t b = 0; b < cols / kBlock; ++b) {
        const std::size_t at = PassBlocks::slot(b, 0);
        d[at] = round_block32_int8(x + b * kBlock, q + at * kBlock, qs + at, s + at);
    }
}

/// Integer code j (0..15) of a Q4_1 block.
int weight_code(const std::byte* blk, std::size_t j) {
    const auto byte = static_cast<unsigned>(blk[4 + (j & 15)]);
    return static_cast<int>(j < 16 ? (byte & 0x0Fu) : (byte >> 4));
}

// The two block dots below are kept out of GCC's vectoriser (KVCACHE_NO_VECTORIZE, detail/simd.hpp): GCC 12
// with -march=native on a CPU with AVX-512 VNNI turned the Q8_0 loop (signed codes times signed activations)
// into vpdpbusd, which takes its first operand as unsigned bytes, so a code of -1 counted as 255 (found by
// matmul_int8_test on an AMD Zen 4). The scalar kernel is the definition the vector kernels are checked
// against; it has to be the plain arithmetic.

/// sum over j of code_j * x_j for one Q4_1 block (codes 0..15).
KVCACHE_NO_VECTORIZE std::int32_t block_dot_q4_1(const std::byte* blk, const std::int8_t* x) {
    std::int32_t isum = 0;
    for (std::size_t j = 0; j < kBlock; ++j) isum += weight_code(blk, j) * x[j];
    return isum;
}

/// sum over j of code_j * x_j for one Q8_0 block (codes -128..127).
KVCACHE_NO_VECTORIZE std::int32_t block_dot_q8_0(const std::byte* blk, const std::int8_t* x) {
    std::int32_t isum = 0;
    for (std::size_t j = 0; j < kBlock; ++j) isum += int(static_cast<std::int8_t>(blk[2 + j])) * x[j];
    return isum;
}

/// The scalar kernel: the definition of the int8 product (see the file comment for its float steps).
void dot_rows_scalar(WeightFormat format, const std::byte* const* rows, std::size_t cols, const PassBlocks& x,
                     int nt, float* const* out) {
    const bool q4_1 = format == WeightFormat::Q4_1;
    const std::size_t block_bytes = q4_1 ? kQ4_1Bytes : kQ8_0Bytes;
    for (std::size_t r = 0; r < kRows; ++r) {
        for (int t = 0; t < nt; ++t) {
            float acc = 0.0f;
            for (std::size_t b = 0; b < cols / kBlock; ++b) {
                const std::byte* blk = rows[r] + b * block_bytes;
                const std::size_t slot = PassBlocks::slot(b, std::size_t(t));
                const std::int8_t* xq = x.codes(b, std::size_t(t));
                const std::int32_t isum = q4_1 ? block_dot_q4_1(blk, xq) : block_dot_q8_0(blk, xq);
                const float dd = half_at(blk) * x.d[slot];
                acc = std::fma(dd, static_cast<float>(isum), acc);
                if (q4_1) acc = std::fma(half_at(blk + 2), x.s[slot], acc);
            }
            out[t][r] = acc;
        }
    }
}

#if KVCACHE_HAVE_AVX2
/// The vector kernel over one group of eight interleaved rows of format F: out[t][0..7] for NT tokens; lane r
/// carries row r's scalar steps.
/// - Q4_1: codes 0..15 times |x| <= 127, so a 16-bit lane sums a whole block (16 products, <= 30480) before one
///   vpmaddwd takes it to 32 bits.
/// - Q8_0: signed codes meet signed activations, so vpmaddubsw takes |w| and x carrying w's sign (|w| <= 128,
///   |x| <= 127: a pair sums to at most 32512), and every register's pairs go to 32 bits at once.
template <WeightFormat F, int NT>
void dot_group_avx2(const std::byte* group, std::size_t nb, const PassBlocks& x, float* const* out) {
    constexpr bool q4_1 = F == WeightFormat::Q4_1;
    constexpr std::size_t block_bytes = q4_1 ? kGroupBlockBytes : kQ8GroupBlockBytes;
    constexpr std::size_t codes_at = q4_1 ? 32 : 16;  // after the scales (and Q4_1's mins)
    const __m256i mask = _mm256_set1_epi8(0x0F);
    __m256 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    for (std::size_t b = 0; b < nb; ++b) {
        const std::byte* blk = group + b * block_bytes;
        for (std::size_t ahead = 0; ahead < block_bytes; ahead += 64) {
            _mm_prefetch(reinterpret_cast<const char*>(blk + kPrefetchBytes + ahead), _MM_HINT_T0);
        }
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk)));
        [[maybe_unused]] __m256 mw;  // Q4_1's mins, once per block
        if constexpr (q4_1) mw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 16)));
        const auto* codes = reinterpret_cast<const __m256i*>(blk + codes_at);
        // Register g holds values 4g..4g+3 of every row (lane r = row r): Q4_1's as two nibbles of four loads,
        // Q8_0's magnitudes (their signs are read again per token).
        __m256i w[8];
        if constexpr (q4_1) {
            for (int k = 0; k < 4; ++k) {
                const __m256i packed = _mm256_loadu_si256(codes + k);
                w[k] = _mm256_and_si256(packed, mask);
                w[k + 4] = _mm256_and_si256(_mm256_srli_epi16(packed, 4), mask);
            }
        } else {
            for (int g = 0; g < 8; ++g) w[g] = _mm256_abs_epi8(_mm256_loadu_si256(codes + g));
        }
        for (int t = 0; t < NT; ++t) {
            const std::size_t slot = PassBlocks::slot(b, std::size_t(t));
            const std::int8_t* q = x.codes(b, std::size_t(t));
            __m256i isum;
#if KVCACHE_HAVE_VNNI
            // vpdpbusd: four unsigned-times-signed byte products added straight into each 32-bit lane (no 16-bit
            // step, nothing saturates at these magnitudes). Two chains, even and odd registers, so one token does
            // not wait on the instruction's latency; integer sums, so the same isum as the AVX2 steps.
            __m256i even = _mm256_setzero_si256(), odd = _mm256_setzero_si256();
            for (int g = 0; g < 8; g += 2) {
                std::int32_t four[2];
                std::memcpy(four, q + 4 * g, 8);
                __m256i x0 = _mm256_set1_epi32(four[0]), x1 = _mm256_set1_epi32(four[1]);
                if constexpr (!q4_1) {  // Q8_0: |w| against x carrying w's sign
                    x0 = _mm256_sign_epi8(x0, _mm256_loadu_si256(codes + g));
                    x1 = _mm256_sign_epi8(x1, _mm256_loadu_si256(codes + g + 1));
                }
                even = _mm256_dpbusd_epi32(even, w[g], x0);
                odd = _mm256_dpbusd_epi32(odd, w[g + 1], x1);
            }
            isum = _mm256_add_epi32(even, odd);
#else
            const __m256i ones = _mm256_set1_epi16(1);  // vpmaddwd by 1: adjacent 16-bit sums to 32 bits
            if constexpr (q4_1) {
                __m256i p = _mm256_setzero_si256();
                for (int g = 0; g < 8; ++g) {
                    std::int32_t four;
                    std::memcpy(&four, q + 4 * g, 4);
                    p = _mm256_add_epi16(p, _mm256_maddubs_epi16(w[g], _mm256_set1_epi32(four)));
                }
                isum = _mm256_madd_epi16(p, ones);
            } else {
                isum = _mm256_setzero_si256();
                for (int g = 0; g < 8; ++g) {
                    std::int32_t four;
                    std::memcpy(&four, q + 4 * g, 4);
                    const __m256i x = _mm256_sign_epi8(_mm256_set1_epi32(four), _mm256_loadu_si256(codes + g));
                    isum = _mm256_add_epi32(isum, _mm256_madd_epi16(_mm256_maddubs_epi16(w[g], x), ones));
                }
            }
#endif
            const __m256 dd = _mm256_mul_ps(dw, _mm256_set1_ps(x.d[slot]));
            acc[t] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(isum), acc[t]);
            if constexpr (q4_1) acc[t] = _mm256_fmadd_ps(mw, _mm256_set1_ps(x.s[slot]), acc[t]);
        }
    }
    for (int t = 0; t < NT; ++t) _mm256_storeu_ps(out[t], acc[t]);
}

#if KVCACHE_HAVE_AVX512_VNNI
/// dot_group_avx2 for sixteen rows in 512-bit registers, with vpdpbusd: the same integer sums per block, so the
/// same bits. (On an AMD Zen 4, where 512-bit instructions take the 256-bit units twice, a 512-bit vpdpbusd
/// still did 1.6x the multiply-adds per second of a 256-bit one — and the broadcasts and float steps per block
/// and token now serve sixteen rows.) Q8_0: the copy holds each code plus 128 as an unsigned byte, so
/// sum (w + 128) x - 128 sum x = sum w x, exactly.
template <WeightFormat F, int NT>
void dot_group_avx512(const std::byte* group, std::size_t nb, const PassBlocks& x, float* const* out) {
    constexpr bool q4_1 = F == WeightFormat::Q4_1;
    constexpr std::size_t block_bytes = q4_1 ? kGroupBlockBytes : kQ8GroupBlockBytes;
    constexpr std::size_t codes_at = q4_1 ? 4 * kRows : 2 * kRows;  // after the scales (and Q4_1's mins)
    const __m512i mask = _mm512_set1_epi8(0x0F);
    __m512 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
    for (std::size_t b = 0; b < nb; ++b) {
        const std::byte* blk = group + b * block_bytes;
        for (std::size_t ahead = 0; ahead < block_bytes; ahead += 64) {
            _mm_prefetch(reinterpret_cast<const char*>(blk + 2 * kPrefetchBytes + ahead), _MM_HINT_T0);
        }
        // (maskz forms with a full mask: GCC 12's plain ones start from an "undefined" register that
        // -Wmaybe-uninitialized reports)
        const __m512 dw = _mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk)));
        [[maybe_unused]] __m512 mw;  // Q4_1's mins, once per block
        if constexpr (q4_1) {
            mw = _mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2 * kRows)));
        }
        const std::byte* codes = blk + codes_at;
        __m512i w[8];  // register g: values 4g..4g+3 of every row, as unsigned bytes
        if constexpr (q4_1) {
            for (int k = 0; k < 4; ++k) {
                const __m512i packed = _mm512_loadu_si512(codes + 64 * k);
                w[k] = _mm512_and_si512(packed, mask);
                w[k + 4] = _mm512_and_si512(_mm512_srli_epi16(packed, 4), mask);
            }
        } else {
            for (int g = 0; g < 8; ++g) w[g] = _mm512_loadu_si512(codes + 64 * g);
        }
        // Every token's codes of this block are at fixed offsets from one pointer, so each four-code broadcast is
        // the memory operand of its vpdpbusd ({1to16}) rather than a load, a shift and a move to a register.
        const std::int8_t* qb = x.codes(b, 0);
        const std::size_t sb = PassBlocks::slot(b, 0);  // token t's scalars at sb + t
        // Register g of the weights meets every token before register g + 1 does: the tokens' sums are
        // independent chains, so one chain per token keeps the unit busy without a second chain to add.
        __m512i isum[NT];
        for (int t = 0; t < NT; ++t) {
            if constexpr (q4_1) {
                isum[t] = _mm512_setzero_si512();
            } else {
                isum[t] = _mm512_set1_epi32(-128 * x.qs[sb + t]);
            }
        }
        for (int g = 0; g < 8; ++g) {
            for (int t = 0; t < NT; ++t) isum[t] = dpbusd_broadcast(isum[t], w[g], qb + t * kBlock + 4 * g);
        }
        for (int t = 0; t < NT; ++t) {
            const __m512 dd = _mm512_mul_ps(dw, _mm512_set1_ps(x.d[sb + t]));
            acc[t] = _mm512_fmadd_ps(dd, _mm512_maskz_cvtepi32_ps(0xFFFF, isum[t]), acc[t]);
            if constexpr (q4_1) acc[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(x.s[sb + t]), acc[t]);
        }
    }
    for (int t = 0; t < NT; ++t) _mm512_storeu_ps(out[t], acc[t]);
}
#endif

using GroupFn = void (*)(const std::byte*, std::size_t, const PassBlocks&, float* const*);

template <WeightFormat F, std::size_t... I>
constexpr std::array<GroupFn, sizeof...(I)> vector_kernels(std::index_sequence<I...>) {
#if KVCACHE_HAVE_AVX512_VNNI
    return {dot_group_avx512<F, int(I) + 1>...};
#else
    return {dot_group_avx2<F, int(I) + 1>...};
#endif
}

GroupFn vector_kernel(WeightFormat format, int nt) {
    static constexpr auto q4_1 = vector_kernels<WeightFormat::Q4_1>(std::make_index_sequence<kTokensPerPass>{});
    static constexpr auto q8_0 = vector_kernels<WeightFormat::Q8_0>(std::make_index_sequence<kTokensPerPass>{});
    return (format == WeightFormat::Q4_1 ? q4_1 : q8_0)[std::size_t(nt - 1)];
}
#endif

}  // namespace

AlignedBuffer<std::byte> interleave_rows(WeightFormat format, const std::byte* base, std::size_t row_stride,
                                         std::size_t rows, std::size_t cols) {
    const bool q4_1 = format == WeightFormat::Q4_1;
    const std::size_t block_bytes = q4_1 ? kQ4_1Bytes : kQ8_0Bytes;
    const std::size_t group_block_bytes = q4_1 ? kGroupBlockBytes : kQ8GroupBlockBytes;
    const std::size_t nb = cols / kBlock;
    const std::size_t groups = (rows + kRows - 1) / kRows;
    AlignedBuffer<std::byte> out(groups * nb * group_block_bytes);
    for (std::size_t g = 0; g < groups; ++g) {
        for (std::size_t b = 0; b < nb; ++b) {
            std::byte* dst = out.data() + (g * nb + b) * group_block_bytes;
            for (std::size_t r = 0; r < kRows; ++r) {
                const std::byte* blk = base + std::min(g * kRows + r, rows - 1) * row_stride + b * block_bytes;
                constexpr std::size_t reg = 4 * kRows;  // bytes of one register: four codes of every row
                std::memcpy(dst + 2 * r, blk, 2);       // d
                if (q4_1) {
                    std::memcpy(dst + 2 * kRows + 2 * r, blk + 2, 2);  // m
                    // Code bytes 4k..4k+3 of row r (values 4k.. in the low nibbles, 4k+16.. in the high ones) go
                    // to lane r of register k, so that masking gives values 4k.. and shifting values 4(k+4)..
                    for (std::size_t k = 0; k < 4; ++k) {
                        std::memcpy(dst + 4 * kRows + reg * k + 4 * r, blk + 4 + 4 * k, 4);
                    }
                } else {
                    // Codes 4k..4k+3 of row r go to lane r of register k (plus 128, as unsigned bytes, for the
                    // 512-bit kernel).
                    for (std::size_t k = 0; k < 8; ++k) {
                        std::byte* codes = dst + 2 * kRows + reg * k + 4 * r;
                        std::memcpy(codes, blk + 2 + 4 * k, 4);
                        if constexpr (kBiasedQ8Codes) {
                            for (std::size_t j = 0; j < 4; ++j) codes[j] ^= std::byte{0x80};  // int8 c -> c + 128
                        }
                    }
                }
            }
        }
    }
    return out;
}

Int8Activations quantize_activations(const float* x, std::size_t n, std::size_t cols) {
    // Every token's int8 row, once per call, in one fixed order (each token on its own), into its slot of the
    // pass layout (Int8Activations).
    thread_local std::vector<std::int8_t> q_storage;    // (passes, nb, 8, 32)
    thread_local std::vector<float> d_storage, s_storage;  // (passes, nb, 8)
    thread_local std::vector<std::int32_t> qs_storage;  // (passes, nb, 8)
    const std::size_t nb = cols / kBlock;
    const std::size_t passes = (n + kInt8TokensPerPass - 1) / kInt8TokensPerPass;
    const std::size_t slots = passes * nb * kInt8TokensPerPass;
    q_storage.resize(slots * kBlock);
    d_storage.resize(slots);
    s_storage.resize(slots);
    qs_storage.resize(slots);
    for (std::size_t t = 0; t < n; ++t) {
        const std::size_t first = first_slot(t, nb);
        quantize_row(x + t * cols, cols, q_storage.data() + first * kBlock, d_storage.data() + first,
                     s_storage.data() + first, qs_storage.data() + first);
    }
    return {q_storage.data(), d_storage.data(), s_storage.data(), qs_storage.data(), n, cols};
}

void matmul_int8_task(WeightFormat format, const std::byte* base, std::size_t row_stride, const std::byte* groups,
                      std::size_t rows, const Int8Activations& x, float* y, std::size_t task) {
#if !KVCACHE_HAVE_AVX2
    groups = nullptr;
#endif
    const std::size_t cols = x.cols, n = x.n, nb = cols / kBlock;
    const std::size_t task_end = std::min(rows, (task + 1) * kInt8RowsPerTask);
    // kInt8RowsPerTask is a multiple of kRows, so every r0 starts a group.
    for (std::size_t r0 = task * kInt8RowsPerTask; r0 < task_end; r0 += kRows) {
        const std::size_t live = std::min(kRows, task_end - r0);
        for (std::size_t t = 0; t < n; t += kTokensPerPass) {
            const int nt = static_cast<int>(std::min<std::size_t>(kTokensPerPass, n - t));
            const std::size_t first = first_slot(t, nb);  // t starts a pass
            const PassBlocks xs{x.q + first * kBlock, x.d + first, x.s + first, x.qsum + first};
            alignas(64) float results[kTokensPerPass][kRows];
            float* outs[kTokensPerPass];
            for (int i = 0; i < nt; ++i) outs[i] = results[i];
#if KVCACHE_HAVE_AVX2
            if (groups != nullptr) {
                const std::size_t group_bytes = nb * (format == WeightFormat::Q4_1 ? kGroupBlockBytes : kQ8GroupBlockBytes);
                vector_kernel(format, nt)(groups + r0 / kRows * group_bytes, nb, xs, outs);
            }
#endif
            if (groups == nullptr) {
                // Past the last row the final row stands in, its extra results dropped (a row's result
                // does not depend on its neighbours).
                const std::byte* row_ptr[kRows];
                for (std::size_t i = 0; i < kRows; ++i) row_ptr[i] = base + std::min(r0 + i, task_end - 1) * row_stride;
                dot_rows_scalar(format, row_ptr, cols, xs, nt, outs);
            }
            for (int i = 0; i < nt; ++i) {
                float* dst = y + (t + std::size_t(i)) * rows + r0;
                // A whole group as one fixed-size copy: a variable-length one became `rep movs`, whose
                // start-up cost was ~8 % of an eight-token step.
                if (live == kRows) {
                    std::memcpy(dst, results[i], kRows * sizeof(float));
                } else {
                    std::memcpy(dst, results[i], live * sizeof(float));
                }
            }
        }
    }
}

}  // namespace kvcache::detail
