// q4_0h: each 64 values of a head turned by an orthonormal Walsh–Hadamard rotation and stored as two GGUF q4_0
// blocks whose scales minimise the squared error — a 4-bit cache for keys with outlier channels (SmolLM2's), at
// q4_0's size and layout.
//
// Why: q4_0 gives each block of 32 values one scale, d = (value of largest magnitude) / -8. A key row with a few
// large channels (SmolLM2 has them in every head) spends the 16 levels on those channels and rounds the rest to
// 0 or ±d: q4_0 keys cost SmolLM2 +22 % perplexity. An orthogonal rotation spreads each outlier over all 64
// values (QuaRot, SpinQuant; llama.cpp rotates quantised K/V caches the same way), so a block's maximum is near
// its typical value and the levels are spent evenly. A dot product does not change under a shared rotation, so
// attention rotates its query the same way and reads the stored blocks directly (RotatedElement).
//
// The rotation of 64 values x: y = H·x / 8, H the 64 x 64 Sylvester Hadamard matrix (entries ±1, H·H = 64·I).
// H / 8 is orthonormal and symmetric, so it is its own inverse: decoding is x = H·y / 8, and a query turned by
// the same H / 8 has the same dot product with the stored blocks as the query with the decoded values. The
// factor 1/8 is a power of two, so the only rounding the rotation adds is in the butterflies' sums, in a fixed
// order (deterministic everywhere). Each half of y is then one q4_0 block, quantised with the scale of least
// squared error (encode_q4_0_least_squares) rather than q4_0's largest-value rule: after the rotation the values
// are near Gaussian, and a scale that lets the rare extreme value clip rounds the other 31 more finely.
//
// (The first version rotated each 32 values, with a fixed pattern of sign flips first, and used q4_0's own
// quantiser: +8.4 % perplexity on SmolLM2 against +4.5 % now; see docs/quantised-caches.md. Its cache files,
// element code 6, are refused by name.)
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string_view>
#include <type_traits>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "kvcache/element_types.hpp"

namespace kvcache {

/// 64 values (one rotation) stored as the two q4_0 blocks of their rotation H·x / 8 (see the top of this
/// header). 36 bytes.
struct q4_0h {
    static constexpr std::size_t kValues = 64;
    q4_0 blocks[2];
};
static_assert(sizeof(q4_0h) == 2 * sizeof(q4_0) && std::is_standard_layout_v<q4_0h>, "q4_0h is two q4_0 blocks");

namespace detail {

/// x <- H·x / 8 for 64 values: six rounds of butterflies (a, b) -> (a + b, a - b), always in this order, then
/// the exact scaling by 1/8. Its own inverse (H·H / 64 = I).
inline void walsh_hadamard64(float* x) {
    for (std::size_t len = 1; len < 64; len *= 2) {
        for (std::size_t i = 0; i < 64; i += 2 * len) {
            for (std::size_t j = i; j < i + len; ++j) {
                const float a = x[j], b = x[j + len];
                x[j] = a + b;
                x[j + len] = a - b;
            }
        }
    }
    for (std::size_t j = 0; j < 64; ++j) x[j] *= 0.125f;
}

/// What a scale d (reciprocal id) makes of a block of 32 values: the squared error of the nearest levels l,
/// Σ y·l and Σ l², as eight lanes of partial sums added in a fixed order at the end. The AVX path and the
/// portable one do the same operations lane by lane (products rounded before every add), so every build gives
/// the same bits (checked: -march=native with FMA, -mavx, and no vector flags at -O3 and -O0 encode 100 000
/// elements identically); the search calls this 34 times per block, so it is the cost of encoding q4_0h.
struct LevelSums {
    float error = 0.0f, sum_yl = 0.0f, sum_ll = 0.0f;
};
inline LevelSums level_sums(const float* y, float d, float id) {
    constexpr std::size_t kLanes = 8;
    float error[kLanes], yl[kLanes], ll[kLanes];
#if defined(__AVX__)
    // Every product goes through a register barrier: with FMA enabled, GCC would fuse the intrinsics' multiplies
    // into the following adds (one rounding instead of two) and pick another scale for a block now and then.
    const auto product = [](__m256 a, __m256 b) {
        __m256 p = _mm256_mul_ps(a, b);
        __asm__("" : "+x"(p));
        return p;
    };
    const __m256 vd = _mm256_set1_ps(d), vid = _mm256_set1_ps(id), half_up = _mm256_set1_ps(8.5f);
    const __m256 zero = _mm256_setzero_ps(), fifteen = _mm256_set1_ps(15.0f), eight = _mm256_set1_ps(8.0f);
    __m256 e = zero, a = zero, b = zero;
    for (std::size_t j = 0; j < q4_0::kValues; j += kLanes) {
        const __m256 v = _mm256_loadu_ps(y + j);
        __m256 q = _mm256_round_ps(_mm256_add_ps(product(v, vid), half_up), _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        q = _mm256_min_ps(_mm256_max_ps(q, zero), fifteen);  // max(NaN, 0) = 0, as q4_0's nibble
        const __m256 l = _mm256_sub_ps(q, eight);
        const __m256 r = _mm256_sub_ps(v, product(l, vd));
        e = _mm256_add_ps(e, product(r, r));
        a = _mm256_add_ps(a, product(v, l));
        b = _mm256_add_ps(b, product(l, l));
    }
    _mm256_storeu_ps(error, e);
    _mm256_storeu_ps(yl, a);
    _mm256_storeu_ps(ll, b);
#else
    for (std::size_t i = 0; i < kLanes; ++i) error[i] = yl[i] = ll[i] = 0.0f;
    for (std::size_t j = 0; j < q4_0::kValues; j += kLanes) {
        for (std::size_t i = 0; i < kLanes; ++i) {
            // the level: q4_0's nibble (y·id rounded, + 8.5, truncated, clamped to 0..15) minus 8
            const float v = y[j + i], l = static_cast<float>(ElementTraits<q4_0>::nibble(v, id)) - 8.0f;
            const float r = v - rounded(l * d);
            error[i] += rounded(r * r);
            yl[i] += rounded(v * l);
            ll[i] += rounded(l * l);
        }
    }
#endif
    LevelSums s;
    for (std::size_t i = 0; i < kLanes; ++i) {
        s.error += error[i];
        s.sum_yl += yl[i];
        s.sum_ll += ll[i];
    }
    return s;
}

/// One q4_0 block of the 32 values y, with the scale of least squared error over a set of candidates.
/// Candidates: the scales that map the value of largest magnitude m to level -(8 + k/4), k = -4..12 (k > 0 lets
/// m clip so that the rest round more finely), and for each the least-squares refit Σ y·l / Σ l² of the levels l
/// it gave (llama.cpp's k-quants search the same way). Each candidate is rounded to fp16 as stored, quantises
/// the block to its nearest levels, and is scored by its true squared error; the lowest wins (the first on ties).
/// Plain arithmetic in a fixed order: the same bits on every thread, chunking and batching.
inline void encode_q4_0_least_squares(const float* y, q4_0& dst) {
    constexpr std::size_t n = q4_0::kValues, half = n / 2;
    float amax = 0.0f, m = 0.0f;
    for (std::size_t j = 0; j < n; ++j) {
        if (std::fabs(y[j]) > amax) {
            amax = std::fabs(y[j]);
            m = y[j];
        }
    }
    std::uint16_t best_bits = 0;  // an all-zero block keeps scale 0 (every level 0, as q4_0)
    float best_error = std::numeric_limits<float>::infinity();
    // Scores the fp16 scale nearest d; returns the least-squares scale of the levels it gave (0: none).
    const auto try_scale = [&](float d) {
        const std::uint16_t bits = fp16::from_float(d);
        const float d16 = fp16::to_float(bits);
        if (d16 == 0.0f || !std::isfinite(d16)) return 0.0f;
        const LevelSums s = level_sums(y, d16, 1.0f / d16);
        if (s.error < best_error) {
            best_error = s.error;
            best_bits = bits;
        }
        return s.sum_ll > 0.0f ? s.sum_yl / s.sum_ll : 0.0f;
    };
    if (amax > 0.0f) {
        for (int k = -4; k <= 12; ++k) {
            const float refit = try_scale(m / -(8.0f + 0.25f * static_cast<float>(k)));
            if (refit != 0.0f) try_scale(refit);
        }
    }
    dst.d = fp16::from_bits(best_bits);
    const float d16 = fp16::to_float(best_bits);
    const float id = d16 != 0.0f ? 1.0f / d16 : 0.0f;
    for (std::size_t j = 0; j < half; ++j) {  // q4_0's nibble: the same levels, and a NaN becomes 0, not UB
        const std::uint8_t lo = ElementTraits<q4_0>::nibble(y[j], id);
        const std::uint8_t hi = ElementTraits<q4_0>::nibble(y[j + half], id);
        dst.qs[j] = static_cast<std::uint8_t>(lo | (hi << 4));
    }
}

}  // namespace detail

template <>
struct ElementTraits<q4_0h> {
    static constexpr std::string_view name = "q4_0h";
    static constexpr std::size_t block_values = q4_0h::kValues;
    static constexpr std::uint32_t file_code = 7;
    using stored_block = q4_0;

    /// The first of the element's two stored blocks (the second follows it).
    static const q4_0* stored(const q4_0h* p) { return p->blocks; }

    /// x -> H·x / 8 per 64 values: (H·q / 8) · y = q · (H·y / 8) = q · decode(y), H being symmetric.
    static void rotate_query(float* x, std::size_t n) {
        for (std::size_t b = 0; b < n; b += block_values) detail::walsh_hadamard64(x + b);
    }
    /// y -> H·y / 8 per 64 values (what decode does after dequantising).
    static void unrotate(float* x, std::size_t n) {
        for (std::size_t b = 0; b < n; b += block_values) detail::walsh_hadamard64(x + b);
    }
    static void encode(const float* src, q4_0h* dst, std::size_t n) {
        float y[block_values];
        for (std::size_t b = 0; b < n / block_values; ++b, src += block_values) {
            std::memcpy(y, src, sizeof(y));
            detail::walsh_hadamard64(y);
            detail::encode_q4_0_least_squares(y, dst[b].blocks[0]);
            detail::encode_q4_0_least_squares(y + q4_0::kValues, dst[b].blocks[1]);
        }
    }
    static void decode(const q4_0h* src, float* dst, std::size_t n) {
        for (std::size_t b = 0; b < n / block_values; ++b, dst += block_values) {
            ElementTraits<q4_0>::decode(src[b].blocks, dst, block_values);
            unrotate(dst, block_values);
        }
    }
};

static_assert(StorageElement<q4_0h> && RotatedElement<q4_0h> && !RotatedElement<q4_0>);

}  // namespace kvcache
