// Storage element types of a cache: float, fp16 (IEEE binary16) and bf16; arithmetic is always float.
#pragma once

#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#if defined(__F16C__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace kvcache {

/// IEEE 754 binary16 storage. Converts exactly to float; from float with round-to-nearest-even.
struct fp16 {
    std::uint16_t bits = 0;

    fp16() = default;
    explicit fp16(float f) : bits(from_float(f)) {}
    explicit operator float() const { return to_float(bits); }

    static constexpr fp16 from_bits(std::uint16_t b) {
        fp16 h;
        h.bits = b;
        return h;
    }

    static std::uint16_t from_float(float f) {
#if defined(__F16C__)
        return static_cast<std::uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
#else
        const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
        const std::uint32_t sign = (x >> 16) & 0x8000u;
        const std::uint32_t abs = x & 0x7fffffffu;
        if (abs >= 0x7f800000u) {  // inf or nan (keep nan quiet and non-zero)
            return static_cast<std::uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
        }
        if (abs >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds to inf
        if (abs < 0x38800000u) {  // subnormal half (or zero): shift the implicit-1 mantissa down
            if (abs < 0x33000000u) return static_cast<std::uint16_t>(sign);  // below half the smallest subnormal
            const std::uint32_t exp = abs >> 23;
            const std::uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
            const std::uint32_t shift = 126u - exp;  // 14 + (113 - exp) - ... chosen so result is in units of 2^-24
            std::uint32_t h = mant >> shift;
            const std::uint32_t rem = mant & ((1u << shift) - 1u);
            const std::uint32_t half = 1u << (shift - 1u);
            if (rem > half || (rem == half && (h & 1u))) ++h;
            return static_cast<std::uint16_t>(sign | h);
        }
        std::uint32_t h = ((abs - 0x38000000u) >> 13);  // rebias exponent 127 -> 15
        const std::uint32_t rem = abs & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
        return static_cast<std::uint16_t>(sign | h);
#endif
    }

    static float to_float(std::uint16_t h) {
#if defined(__F16C__)
        return _cvtsh_ss(h);
#else
        const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
        const std::uint32_t exp = (h >> 10) & 0x1fu;
        const std::uint32_t mant = h & 0x3ffu;
        std::uint32_t x;
        if (exp == 0) {
            if (mant == 0) {
                x = sign;
            } else {  // subnormal: value = mant * 2^-24, exact in float
                const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
                x = sign | std::bit_cast<std::uint32_t>(v);
            }
        } else if (exp == 31) {
            x = sign | 0x7f800000u | (mant << 13);
        } else {
            x = sign | ((exp + 112u) << 23) | (mant << 13);
        }
        return std::bit_cast<float>(x);
#endif
    }
};

/// bfloat16 storage: the top 16 bits of a float. From float with round-to-nearest-even; NaN stays NaN.
struct bf16 {
    std::uint16_t bits = 0;

    bf16() = default;
    explicit bf16(float f) : bits(from_float(f)) {}
    explicit operator float() const { return to_float(bits); }

    static constexpr bf16 from_bits(std::uint16_t b) {
        bf16 h;
        h.bits = b;
        return h;
    }

    static std::uint16_t from_float(float f) {
        const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
        if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);  // quiet nan
        const std::uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
        return static_cast<std::uint16_t>((x + rounding) >> 16);
    }

    static float to_float(std::uint16_t h) { return std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16); }
};

/// The storage types a cache may use.
template <class T>
concept StorageElement = std::same_as<T, float> || std::same_as<T, fp16> || std::same_as<T, bf16>;

template <StorageElement T>
inline float to_float(T v) {
    if constexpr (std::same_as<T, float>) {
        return v;
    } else {
        return T::to_float(v.bits);
    }
}

template <StorageElement T>
inline T from_float(float f) {
    if constexpr (std::same_as<T, float>) {
        return f;
    } else {
        return T::from_bits(T::from_float(f));
    }
}

/// Converts n floats to storage type T (vectorised where the CPU allows).
template <StorageElement T>
inline void convert_from_float(const float* src, T* dst, std::size_t n) {
    if constexpr (std::same_as<T, float>) {
        if (n) std::memcpy(dst, src, n * sizeof(float));
    } else {
        std::size_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
        if constexpr (std::same_as<T, fp16>) {
            for (; i + 8 <= n; i += 8) {
                const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
                _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
            }
        }
#endif
        for (; i < n; ++i) dst[i] = from_float<T>(src[i]);
    }
}

/// Converts n storage elements to floats (vectorised where the CPU allows).
template <StorageElement T>
inline void convert_to_float(const T* src, float* dst, std::size_t n) {
    if constexpr (std::same_as<T, float>) {
        if (n) std::memcpy(dst, src, n * sizeof(float));
    } else {
        std::size_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
        if constexpr (std::same_as<T, fp16>) {
            for (; i + 8 <= n; i += 8) {
                const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
                _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
            }
        }
#endif
        for (; i < n; ++i) dst[i] = to_float(src[i]);
    }
}

/// A short name for messages, file headers and benchmark labels.
template <StorageElement T>
constexpr std::string_view element_name() {
    if constexpr (std::same_as<T, float>) return "f32";
    else if constexpr (std::same_as<T, fp16>) return "f16";
    else return "bf16";
}

static_assert(sizeof(fp16) == 2 && sizeof(bf16) == 2, "16-bit storage types must be 2 bytes");

}  // namespace kvcache
