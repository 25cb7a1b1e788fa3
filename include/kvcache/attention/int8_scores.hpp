// Integer q·k over q8_0 keys (AttentionOptions::scores = ScorePrecision::int8).
//
// Each query head is rounded to int8 per block of 32 values (scale max|q| / 127, round to nearest even), and a
// score is sum over blocks b, in order, of fma(dk_b * dq_b, float(isum_b), acc), where isum_b is the exact
// integer dot of the query's codes with the key's stored codes. Integer sums are exact and the float steps are
// fixed, so the vector kernel (AVX-512 VNNI, sixteen keys per register) and the portable one give the same bits,
// on every build, and a score never depends on which other keys share its tile.
//
// Why it is faster: the float path dequantises every key value (widen, convert, scale) before its multiply-add;
// here sixteen keys' codes are transposed once per block so that lane r holds key r, and vpdpbusd takes four
// byte products per lane per instruction with the query's four codes broadcast from memory. No horizontal sums.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kvcache/detail/simd.hpp"
#include "kvcache/element_types.hpp"

namespace kvcache::detail {

/// Rounded query heads as the kernels read them, from one head on: codes [head][d], and per block of 32 its scale
/// and -128 times its code sum (the vector kernel's correction for the +128 it gives the keys' codes).
struct Int8QueryView {
    const std::int8_t* codes;
    const float* scales;
    const std::int32_t* offsets;

    /// The view from head g on (heads of d values).
    Int8QueryView from(std::size_t g, std::size_t d) const {
        const std::size_t blocks = d / q8_0::kValues;
        return {codes + g * d, scales + g * blocks, offsets + g * blocks};
    }
};

/// The query heads of one (token, kv head), rounded for integer scores: codes [group][d], scales and offsets
/// [group][d / 32] (Int8QueryView).
struct Int8Queries {
    std::vector<std::int8_t> codes;
    std::vector<float> scales;
    std::vector<std::int32_t> offsets;

    void round(const float* qs, std::size_t group, std::size_t d) {
        const std::size_t blocks = d / q8_0::kValues;
        codes.resize(group * d);
        scales.resize(group * blocks);
        offsets.resize(group * blocks);
        for (std::size_t g = 0; g < group; ++g) {
            for (std::size_t b = 0; b < blocks; ++b) {
                std::int32_t sum = 0;
                scales[g * blocks + b] =
                    round_block32_int8(qs + g * d + b * q8_0::kValues, codes.data() + g * d + b * q8_0::kValues, &sum);
                offsets[g * blocks + b] = -128 * sum;
            }
        }
    }

    Int8QueryView view() const { return {codes.data(), scales.data(), offsets.data()}; }
};

/// scores[g * stride + r] for NB query heads and keys r < n (rows of q8_0 blocks through `k[r]`): the portable
/// definition, one key at a time.
/// (Out of GCC's vectoriser, which miscompiles the byte dot: see KVCACHE_NO_VECTORIZE.)
template <std::size_t NB, class Rows>
KVCACHE_NO_VECTORIZE inline void int8_scores_portable(const Int8QueryView& q, std::size_t d, const Rows& k,
                                                      std::size_t n, float* scores, std::size_t stride) {
    const std::size_t blocks = d / q8_0::kValues;
    for (std::size_t r = 0; r < n; ++r) {
        const q8_0* row = k[r];
        for (std::size_t g = 0; g < NB; ++g) {
            float acc = 0.0f;
            for (std::size_t b = 0; b < blocks; ++b) {
                const std::int8_t* qc = q.codes + g * d + b * q8_0::kValues;
                std::int32_t isum = 0;
                for (std::size_t j = 0; j < q8_0::kValues; ++j) isum += int(qc[j]) * int(row[b].qs[j]);
                const float dd = fp16::to_float(row[b].d.bits) * q.scales[g * blocks + b];
                acc = std::fma(dd, static_cast<float>(isum), acc);
            }
            scores[g * stride + r] = acc;
        }
    }
}

#if KVCACHE_HAVE_AVX512_VNNI
/// int8_scores_portable sixteen keys at a time: the same integers and float steps per key (lane), so the same
/// bits. A short last group repeats key n-1; its extra results land in scores past n (room the caller has).
/// The keys' codes go in as unsigned bytes (code + 128, one xor after the transpose) and the query's as the
/// signed broadcast memory operand of vpdpbusd; sum (k + 128) q - 128 sum q = sum k q, exactly.
template <std::size_t NB, class Rows>
inline void int8_scores_vnni(const Int8QueryView& q, std::size_t d, const Rows& k, std::size_t n, float* scores,
                             std::size_t stride) {
    const std::size_t blocks = d / q8_0::kValues;
    // After the transpose lane L holds key kLaneKey[L] (a swap of keys 4-7 and 8-11, its own inverse).
    static constexpr int kLaneKey[16] = {0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15};
    const __m512i to_keys = _mm512_loadu_si512(kLaneKey);
    const __m512i bias = _mm512_set1_epi32(static_cast<int>(0x80808080u));  // 128 in every byte
    for (std::size_t r = 0; r < n; r += 16) {
        const q8_0* row[16];
        for (std::size_t j = 0; j < 16; ++j) row[j] = k[std::min(r + j, n - 1)];
        k.prefetch_next_tile(r, d, 16);
        __m512 acc[NB];
        for (std::size_t g = 0; g < NB; ++g) acc[g] = _mm512_setzero_ps();
        for (std::size_t b = 0; b < blocks; ++b) {
            // (maskz forms with every lane selected: GCC 12 warns that the plain ones read an uninitialised register)
            // z[j]: the 32 codes of key j, then of key j + 8. Transposed (as two 8x8 dword blocks side by side)
            // into x[p]: codes 4p..4p+3 of every key, lane L = key kLaneKey[L], plus 128.
            __m512i z[8], t[8], u[8], x[8];
            for (std::size_t j = 0; j < 8; ++j) {
                const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row[j][b].qs));
                const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row[j + 8][b].qs));
                const __m512i low_half = _mm512_maskz_inserti64x4(0xFF, _mm512_setzero_si512(), lo, 0);
                z[j] = _mm512_maskz_inserti64x4(0xFF, low_half, hi, 1);
            }
            for (std::size_t j = 0; j < 8; j += 2) {
                t[j] = _mm512_maskz_unpacklo_epi32(0xFFFF, z[j], z[j + 1]);
                t[j + 1] = _mm512_maskz_unpackhi_epi32(0xFFFF, z[j], z[j + 1]);
            }
            for (std::size_t h = 0; h < 8; h += 4) {
                u[h] = _mm512_maskz_unpacklo_epi64(0xFF, t[h], t[h + 2]);
                u[h + 1] = _mm512_maskz_unpackhi_epi64(0xFF, t[h], t[h + 2]);
                u[h + 2] = _mm512_maskz_unpacklo_epi64(0xFF, t[h + 1], t[h + 3]);
                u[h + 3] = _mm512_maskz_unpackhi_epi64(0xFF, t[h + 1], t[h + 3]);
            }
            for (std::size_t p = 0; p < 4; ++p) {
                x[p] = _mm512_xor_si512(_mm512_maskz_shuffle_i32x4(0xFFFF, u[p], u[p + 4], _MM_SHUFFLE(2, 0, 2, 0)), bias);
                x[p + 4] =
                    _mm512_xor_si512(_mm512_maskz_shuffle_i32x4(0xFFFF, u[p], u[p + 4], _MM_SHUFFLE(3, 1, 3, 1)), bias);
            }
            alignas(32) std::uint16_t dbits[16];
            for (std::size_t lane = 0; lane < 16; ++lane) dbits[lane] = row[kLaneKey[lane]][b].d.bits;
            const __m512 dk = _mm512_maskz_cvtph_ps(0xFFFF, _mm256_load_si256(reinterpret_cast<const __m256i*>(dbits)));
            for (std::size_t g = 0; g < NB; ++g) {
                const std::int8_t* qc = q.codes + g * d + b * q8_0::kValues;
                __m512i even = _mm512_set1_epi32(q.offsets[g * blocks + b]), odd = _mm512_setzero_si512();
                for (std::size_t p = 0; p < 8; p += 2) {
                    even = dpbusd_broadcast(even, x[p], qc + 4 * p);
                    odd = dpbusd_broadcast(odd, x[p + 1], qc + 4 * p + 4);
                }
                const __m512 dd = _mm512_mul_ps(dk, _mm512_set1_ps(q.scales[g * blocks + b]));
                acc[g] = _mm512_fmadd_ps(dd, _mm512_maskz_cvtepi32_ps(0xFFFF, _mm512_add_epi32(even, odd)), acc[g]);
            }
        }
        for (std::size_t g = 0; g < NB; ++g) {
            _mm512_storeu_ps(scores + g * stride + r, _mm512_maskz_permutexvar_ps(0xFFFF, to_keys, acc[g]));
        }
    }
}
#endif

/// Whether this build has the vector kernel. Without it the portable loop is slower than the float path, so the
/// decoder asks for integer scores only where this is true (attention() honours an explicit request anyway).
inline constexpr bool kVectorInt8Scores = KVCACHE_HAVE_AVX512_VNNI;

/// Integer scores of NB query heads over n keys: the vector kernel where the build has it, else the portable one
/// (the same bits). scores[g * stride + r]; stride >= n rounded up to 16.
template <std::size_t NB, class Rows>
inline void int8_scores(const Int8QueryView& q, std::size_t d, const Rows& k, std::size_t n, float* scores,
                        std::size_t stride) {
#if KVCACHE_HAVE_AVX512_VNNI
    int8_scores_vnni<NB>(q, d, k, n, scores, stride);
#else
    int8_scores_portable<NB>(q, d, k, n, scores, stride);
#endif
}

}  // namespace kvcache::detail
