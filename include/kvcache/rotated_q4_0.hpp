// q4_0h: GGUF q4_0 blocks holding a Walsh–Hadamard rotation of each 32 values — a 4-bit cache for keys with
// outlier channels (SmolLM2's), at q4_0's size and layout.
//
// Why: q4_0 gives each block of 32 values one scale, d = (value of largest magnitude) / -8. A key row with a few
// large channels (SmolLM2 has them in every head) spends the 16 levels on those channels and rounds the rest to
// 0 or ±d: q4_0 keys cost SmolLM2 +26 % perplexity. An orthogonal rotation spreads each outlier over the whole
// block (QuaRot, SpinQuant; the MX-format papers rotate per quantisation block as here), so the block's maximum
// is near its typical value and the levels are spent evenly. A dot product does not change under a shared
// rotation, so attention rotates its query the same way and reads the stored blocks directly (RotatedElement).
//
// The rotation of one block of 32 values x: y = H·D·x / 8, where D flips the signs of the channels whose bit in
// kRotationSigns is set (a fixed pattern, so a constant offset across channels is spread too, not gathered
// into one coefficient) and H is the 32 x 32 Sylvester Hadamard matrix (entries ±1, H·H = 32·I). y is then
// quantised exactly as q4_0; decoding gives x = D·H·y / 4. The factors 1/8 and 1/4 are powers of two, so the
// only rounding the rotation adds is in the butterflies' sums, in a fixed order (deterministic everywhere).
// Blocks stay self-contained: a block decodes alone, so paged and chunked layouts need nothing new.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#include "kvcache/element_types.hpp"

namespace kvcache {

/// 32 values stored as the q4_0 block of their rotation H·D·x / 8 (see the top of this header). 18 bytes.
struct q4_0h {
    q4_0 block;
};
static_assert(sizeof(q4_0h) == sizeof(q4_0) && std::is_standard_layout_v<q4_0h>, "q4_0h is one q4_0 block");

namespace detail {

/// D's signs: bit j set = channel j negated. The first 32 bits of the fraction of sqrt(2) — any fixed pattern
/// that is not itself a row of H works; this one is part of the format (cache-file code 6).
inline constexpr std::uint32_t kRotationSigns = 0x6a09e667u;

/// x <- H·x for 32 values: five rounds of butterflies (a, b) -> (a + b, a - b), always in this order.
inline void walsh_hadamard32(float* x) {
    for (std::size_t len = 1; len < 32; len *= 2) {
        for (std::size_t i = 0; i < 32; i += 2 * len) {
            for (std::size_t j = i; j < i + len; ++j) {
                const float a = x[j], b = x[j + len];
                x[j] = a + b;
                x[j + len] = a - b;
            }
        }
    }
}

/// x <- D·x: negates the channels whose bit in kRotationSigns is set.
inline void flip_signs32(float* x) {
    for (std::size_t j = 0; j < 32; ++j)
        if ((kRotationSigns >> j) & 1u) x[j] = -x[j];
}

/// x <- x * s (s a power of two: exact).
inline void scale32(float* x, float s) {
    for (std::size_t j = 0; j < 32; ++j) x[j] *= s;
}

}  // namespace detail

template <>
struct ElementTraits<q4_0h> {
    static constexpr std::string_view name = "q4_0h";
    static constexpr std::size_t block_values = q4_0::kValues;
    static constexpr std::uint32_t file_code = 6;
    using stored_block = q4_0;

    static const q4_0* stored(const q4_0h* p) { return &p->block; }

    /// x -> H·D·x / 4 per block: (H·D·q / 4) · y = q · (D·H·y / 4) = q · decode(y).
    static void rotate_query(float* x, std::size_t n) {
        for (std::size_t b = 0; b < n; b += block_values, x += block_values) {
            detail::flip_signs32(x);
            detail::walsh_hadamard32(x);
            detail::scale32(x, 0.25f);
        }
    }
    /// y -> D·H·y / 4 per block (what decode does after dequantising).
    static void unrotate(float* x, std::size_t n) {
        for (std::size_t b = 0; b < n; b += block_values, x += block_values) {
            detail::walsh_hadamard32(x);
            detail::flip_signs32(x);
            detail::scale32(x, 0.25f);
        }
    }
    static void encode(const float* src, q4_0h* dst, std::size_t n) {
        float y[block_values];
        for (std::size_t b = 0; b < n / block_values; ++b, src += block_values) {
            std::memcpy(y, src, sizeof(y));
            detail::flip_signs32(y);
            detail::walsh_hadamard32(y);
            detail::scale32(y, 0.125f);
            ElementTraits<q4_0>::encode(y, &dst[b].block, block_values);
        }
    }
    static void decode(const q4_0h* src, float* dst, std::size_t n) {
        for (std::size_t b = 0; b < n / block_values; ++b, dst += block_values) {
            ElementTraits<q4_0>::decode(&src[b].block, dst, block_values);
            unrotate(dst, block_values);
        }
    }
};

static_assert(StorageElement<q4_0h> && RotatedElement<q4_0h> && !RotatedElement<q4_0>);

}  // namespace kvcache
