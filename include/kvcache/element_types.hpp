// Storage element types of a cache — float, fp16, bf16 and the GGUF blocks q8_0 and q4_0 — and the open trait
// (ElementTraits) through which a user adds their own; arithmetic is always float.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
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

/// q8_0: 32 values as an fp16 scale d and 32 signed bytes q, value j = d * q[j] (GGUF's block_q8_0, 34 bytes).
struct q8_0 {
    static constexpr std::size_t kValues = 32;
    fp16 d;
    std::int8_t qs[kValues];
};

/// q4_0: 32 values as an fp16 scale d and 16 bytes of 4-bit q, value j = d * (q_j - 8), where q_j for j < 16
/// is the low nibble of byte j and q_(j+16) its high nibble (GGUF's block_q4_0, 18 bytes).
struct q4_0 {
    static constexpr std::size_t kValues = 32;
    fp16 d;
    std::uint8_t qs[kValues / 2];
};

static_assert(sizeof(q8_0) == 34 && sizeof(q4_0) == 18, "quantised blocks must have GGUF's sizes");

/// The open trait that makes a type a cache storage element. Specialise it for your own type with:
///   static constexpr std::string_view name;          short name for messages, fingerprints, benchmarks
///   static constexpr std::size_t block_values;        values one object of the type holds (1, or a block)
///   static constexpr std::uint32_t file_code;         cache-file type code; 0 = cannot be saved to cache files
///                                                     (codes 1-7 are kvcache's own, see cache-file-format.md)
///   static void encode(const float* src, T* dst, std::size_t n);  n values -> n / block_values objects
///   static void decode(const T* src, float* dst, std::size_t n);  n / block_values objects -> n values
/// A type that stores its blocks in a rotated basis may also declare the members of RotatedElement
/// (rotated_q4_0.hpp): attention then reads the stored blocks directly and rotates the queries instead.
/// n is always a multiple of block_values (a cache refuses head sizes that are not: ConfigError). The type
/// must be trivially copyable (caches copy it with memcpy). Every cache, attention and layout conversion
/// then accepts it; attention reads a user type by decoding one block at a time into a small buffer on the
/// stack, the built-in types in registers. See tests/element_types_quant_test.cpp for a user type.
template <class T>
struct ElementTraits;

/// The storage types a cache may use: any T with a complete ElementTraits<T>.
template <class T>
concept StorageElement = std::is_trivially_copyable_v<T> && requires(const float* f, float* out, T* dst, const T* src,
                                                                     std::size_t n) {
    { ElementTraits<T>::name } -> std::convertible_to<std::string_view>;
    { ElementTraits<T>::block_values } -> std::convertible_to<std::size_t>;
    { ElementTraits<T>::file_code } -> std::convertible_to<std::uint32_t>;
    ElementTraits<T>::encode(f, dst, n);
    ElementTraits<T>::decode(src, out, n);
    requires ElementTraits<T>::block_values >= 1;
};

/// A storage type whose blocks hold their values in a rotated basis, as blocks of a type B with a kernel of its
/// own (B = stored_block; one T is a whole number of consecutive B). Its ElementTraits add:
///   using stored_block = B;
///   static const B* stored(const T* p);              the first stored block inside *p (the others follow it)
///   static void rotate_query(float* x, std::size_t n);  x -> R·x, blockwise, so that R·x · (stored values)
///                                                     = x · (decoded values) for any stored block
///   static void unrotate(float* x, std::size_t n);   stored-basis values (or a weighted sum of them) -> values
/// encode/decode stay the true values (rotation included), so every cache, file and conversion is unchanged;
/// attention reads the stored blocks directly, rotating its queries (keys) and its output (values) instead.
template <class T>
concept RotatedElement = requires(const T* p, float* x, std::size_t n) {
    typename ElementTraits<T>::stored_block;
    { ElementTraits<T>::stored(p) } -> std::same_as<const typename ElementTraits<T>::stored_block*>;
    ElementTraits<T>::rotate_query(x, n);
    ElementTraits<T>::unrotate(x, n);
};

/// Values one storage object of T holds (1 for float/fp16/bf16, 32 for q8_0/q4_0).
template <StorageElement T>
inline constexpr std::size_t block_values_v = ElementTraits<T>::block_values;

/// A storage type whose objects each hold one value (float, fp16, bf16): element-wise access works.
template <class T>
concept ScalarElement = StorageElement<T> && block_values_v<T> == 1;

/// Storage objects holding `values` values (a row of a head: head_dim values -> head_dim / block_values).
template <StorageElement T>
constexpr std::size_t storage_units(std::size_t values) {
    return values / block_values_v<T>;
}

/// Whether a head of `head_dim` values can be stored as T (a whole number of blocks).
template <StorageElement T>
constexpr bool fits_blocks(std::size_t head_dim) {
    return head_dim % block_values_v<T> == 0;
}

template <ScalarElement T>
inline float to_float(T v) {
    if constexpr (std::same_as<T, float>) {
        return v;
    } else {
        float f;
        ElementTraits<T>::decode(&v, &f, 1);
        return f;
    }
}

template <ScalarElement T>
inline T from_float(float f) {
    T v;
    ElementTraits<T>::encode(&f, &v, 1);
    return v;
}

/// Converts n floats to storage type T (n / block_values objects; vectorised where the CPU allows).
template <StorageElement T>
inline void convert_from_float(const float* src, T* dst, std::size_t n) {
    ElementTraits<T>::encode(src, dst, n);
}

/// Converts n values stored as T (n / block_values objects) to floats (vectorised where the CPU allows).
template <StorageElement T>
inline void convert_to_float(const T* src, float* dst, std::size_t n) {
    ElementTraits<T>::decode(src, dst, n);
}

/// A short name for messages, file headers and benchmark labels.
template <StorageElement T>
constexpr std::string_view element_name() {
    return ElementTraits<T>::name;
}

template <>
struct ElementTraits<float> {
    static constexpr std::string_view name = "f32";
    static constexpr std::size_t block_values = 1;
    static constexpr std::uint32_t file_code = 1;
    static void encode(const float* src, float* dst, std::size_t n) {
        if (n) std::memcpy(dst, src, n * sizeof(float));
    }
    static void decode(const float* src, float* dst, std::size_t n) {
        if (n) std::memcpy(dst, src, n * sizeof(float));
    }
};

template <>
struct ElementTraits<fp16> {
    static constexpr std::string_view name = "f16";
    static constexpr std::size_t block_values = 1;
    static constexpr std::uint32_t file_code = 2;
    static void encode(const float* src, fp16* dst, std::size_t n) {
        std::size_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
        for (; i + 8 <= n; i += 8) {
            const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
            _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
        }
#endif
        for (; i < n; ++i) dst[i] = fp16::from_bits(fp16::from_float(src[i]));
    }
    static void decode(const fp16* src, float* dst, std::size_t n) {
        std::size_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
        for (; i + 8 <= n; i += 8) {
            const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
        }
#endif
        for (; i < n; ++i) dst[i] = fp16::to_float(src[i].bits);
    }
};

template <>
struct ElementTraits<bf16> {
    static constexpr std::string_view name = "bf16";
    static constexpr std::size_t block_values = 1;
    static constexpr std::uint32_t file_code = 3;
    static void encode(const float* src, bf16* dst, std::size_t n) {
        for (std::size_t i = 0; i < n; ++i) dst[i] = bf16::from_bits(bf16::from_float(src[i]));
    }
    static void decode(const bf16* src, float* dst, std::size_t n) {
        for (std::size_t i = 0; i < n; ++i) dst[i] = bf16::to_float(src[i].bits);
    }
};

namespace detail {

/// x, with the compiler barred from fusing the multiply that produced it into a following add: gguf-py
/// rounds x * id and then x * id + 8.5 separately, and a fused multiply-add would round once.
inline float rounded(float x) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __asm__("" : "+x"(x));
    return x;
#else
    volatile float v = x;
    return v;
#endif
}

#if defined(__AVX2__)
/// Loads 32 floats into v[0..3] and returns the largest magnitude among them, NaN ignored (as std::max(m, |x|)
/// from m = 0 ignores it). A max is exact in any order, so this is the scalar loop's result.
inline float load_block32_max_abs(const float* x, __m256* v) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        m = _mm256_max_ps(_mm256_andnot_ps(sign, v[i]), m);  // a NaN lane leaves m as it was
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
    return _mm_cvtss_f32(m4);
}

/// 32 int32 values in -128..127 (four vectors of eight, in order) as 32 bytes in order.
inline __m256i pack_block32_int8(const __m256i* q32) {
    // 32 -> 16 -> 8 bits; packs interleave the 128-bit halves, the permute puts the values back in order
    const __m256i q16a = _mm256_packs_epi32(q32[0], q32[1]), q16b = _mm256_packs_epi32(q32[2], q32[3]);
    return _mm256_permutevar8x32_epi32(_mm256_packs_epi16(q16a, q16b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}
#endif

/// Rounds a block of 32 floats to int8 codes the way the int8 products round their activations and queries:
/// scale = max|x| / 127, code = round-to-nearest-even(x * (1 / scale)) clamped to [-127, 127] (NaN -> -127;
/// all codes 0 when the scale is 0). Writes the codes and their sum (*code_sum) and returns the scale. The AVX2
/// steps are elementwise (max is exact in any order), so both paths give the same bits.
/// With value_sum, also the float sum of x in one fixed order, a tree over eight lanes:
/// t_i = (x_i + x_{8+i}) + (x_{16+i} + x_{24+i}), u_i = t_i + t_{4+i}, w_i = u_i + u_{2+i}, sum = w_0 + w_1
/// (four vector adds where a sum in index order took 31 dependent ones).
inline float round_block32_int8(const float* x, std::int8_t* codes, std::int32_t* code_sum,
                                float* value_sum = nullptr) {
#if defined(__AVX2__)
    __m256 v[4];
    const float scale = load_block32_max_abs(x, v) / 127.0f;
    if (value_sum != nullptr) {
        const __m256 t = _mm256_add_ps(_mm256_add_ps(v[0], v[1]), _mm256_add_ps(v[2], v[3]));
        const __m128 u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
        const __m128 w = _mm_add_ps(u, _mm_movehl_ps(u, u));
        *value_sum = _mm_cvtss_f32(_mm_add_ss(w, _mm_movehdup_ps(w)));
    }
    const __m256 inv = _mm256_set1_ps(scale > 0.0f ? 1.0f / scale : 0.0f);
    const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    __m256i q32[4];
    for (int i = 0; i < 4; ++i) {
        // _MM_FROUND_TO_NEAREST_INT is nearbyint's round-to-nearest-even; max(NaN, lo) is lo
        const __m256 r = _mm256_round_ps(_mm256_mul_ps(v[i], inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q32[i] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes), pack_block32_int8(q32));
    const __m256i sum8 = _mm256_add_epi32(_mm256_add_epi32(q32[0], q32[1]), _mm256_add_epi32(q32[2], q32[3]));
    const __m128i sum4 = _mm_add_epi32(_mm256_castsi256_si128(sum8), _mm256_extracti128_si256(sum8, 1));
    const __m128i sum2 = _mm_add_epi32(sum4, _mm_unpackhi_epi64(sum4, sum4));
    *code_sum = _mm_cvtsi128_si32(_mm_add_epi32(sum2, _mm_shuffle_epi32(sum2, 1)));
    return scale;
#else
    if (value_sum != nullptr) {
        float t[8], u[4], w[2];
        for (std::size_t i = 0; i < 8; ++i) t[i] = (x[i] + x[8 + i]) + (x[16 + i] + x[24 + i]);
        for (std::size_t i = 0; i < 4; ++i) u[i] = t[i] + t[4 + i];
        for (std::size_t i = 0; i < 2; ++i) w[i] = u[i] + u[2 + i];
        *value_sum = w[0] + w[1];
    }
    float amax = 0.0f;
    for (std::size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float scale = amax / 127.0f;
    const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
    std::int32_t sum = 0;
    for (std::size_t j = 0; j < 32; ++j) {
        float v = std::nearbyint(x[j] * inv);
        v = v > -127.0f ? v : -127.0f;  // NaN -> -127, as the vector path's max
        v = v < 127.0f ? v : 127.0f;
        codes[j] = static_cast<std::int8_t>(v);
        sum += codes[j];
    }
    *code_sum = sum;
    return scale;
#endif
}

/// gguf-py's np_roundf: round half away from zero, as floor(|x|) + floor(2 * (|x| - floor(|x|))) with the sign.
inline float round_half_away(float x) {
    const float a = std::fabs(x);
    const float whole = std::floor(a);
    const float b = whole + std::floor(2.0f * (a - whole));
    return x < 0.0f ? -b : b;
}

}  // namespace detail

/// Quantisation exactly as gguf-py's Q8_0.quantize_blocks (which is ggml's reference): d = max|x| / 127,
/// q = round-half-away(x / d) computed as x * (1 / d); d stored as fp16. Non-finite inputs give q = 0 where
/// the result would not be a number (gguf-py leaves those undefined).
template <>
struct ElementTraits<q8_0> {
    static constexpr std::string_view name = "q8_0";
    static constexpr std::size_t block_values = q8_0::kValues;
    static constexpr std::uint32_t file_code = 4;
    static void encode(const float* src, q8_0* dst, std::size_t n) {
#if defined(__AVX2__)
        // The same steps eight lanes at a time: a cache append quantises every new row, and the scalar floors
        // were ~4 % of an eight-sequence decode step. Every step is elementwise, or a max (exact in any order),
        // so the bits are the scalar loop's.
        for (std::size_t b = 0; b < n / block_values; ++b, src += block_values) encode_block_avx2(src, dst[b]);
#else
        for (std::size_t b = 0; b < n / block_values; ++b, src += block_values) {
            float amax = 0.0f;
            for (std::size_t j = 0; j < block_values; ++j) amax = std::max(amax, std::fabs(src[j]));
            const float d = amax / 127.0f;
            const float id = d != 0.0f ? 1.0f / d : 0.0f;
            dst[b].d = fp16::from_bits(fp16::from_float(d));
            for (std::size_t j = 0; j < block_values; ++j) {
                const float q = detail::round_half_away(src[j] * id);
                dst[b].qs[j] = std::fabs(q) <= 127.0f ? static_cast<std::int8_t>(q) : std::int8_t{0};
            }
        }
#endif
    }
#if defined(__AVX2__)
    static void encode_block_avx2(const float* src, q8_0& dst) {
        const __m256 sign = _mm256_set1_ps(-0.0f), zero = _mm256_setzero_ps();
        __m256 v[4];
        const float d = detail::load_block32_max_abs(src, v) / 127.0f;
        const __m256 id = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
        dst.d = fp16::from_bits(fp16::from_float(d));
        __m256i q32[4];
        for (int i = 0; i < 4; ++i) {
            // round_half_away: floor(|x|) + floor(2 * (|x| - floor(|x|))), with x's sign
            const __m256 x = _mm256_mul_ps(v[i], id);
            const __m256 a = _mm256_andnot_ps(sign, x);
            const __m256 whole = _mm256_floor_ps(a);
            const __m256 r = _mm256_add_ps(whole, _mm256_floor_ps(_mm256_mul_ps(_mm256_set1_ps(2.0f), _mm256_sub_ps(a, whole))));
            const __m256 q = _mm256_blendv_ps(r, _mm256_xor_ps(r, sign), _mm256_cmp_ps(x, zero, _CMP_LT_OQ));
            // |q| <= 127 or 0 (false for NaN): so every lane converts and packs exactly
            const __m256 fits = _mm256_cmp_ps(_mm256_andnot_ps(sign, q), _mm256_set1_ps(127.0f), _CMP_LE_OQ);
            q32[i] = _mm256_cvttps_epi32(_mm256_and_ps(q, fits));
        }
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst.qs), detail::pack_block32_int8(q32));
    }
#endif
    static void decode(const q8_0* src, float* dst, std::size_t n) {
        for (std::size_t b = 0; b < n / block_values; ++b, dst += block_values) {
            const float d = fp16::to_float(src[b].d.bits);
            for (std::size_t j = 0; j < block_values; ++j) dst[j] = static_cast<float>(src[b].qs[j]) * d;
        }
    }
};

/// Quantisation exactly as gguf-py's Q4_0.quantize_blocks: m = the value of largest magnitude (the first, on
/// ties), d = m / -8, q = min(15, trunc(x * (1 / d) + 8.5)); d stored as fp16. Non-finite inputs: as q8_0.
template <>
struct ElementTraits<q4_0> {
    static constexpr std::string_view name = "q4_0";
    static constexpr std::size_t block_values = q4_0::kValues;
    static constexpr std::uint32_t file_code = 5;
    static std::uint8_t nibble(float x, float id) {
        const float q = std::trunc(detail::rounded(x * id) + 8.5f);
        return q >= 0.0f && q <= 15.0f ? static_cast<std::uint8_t>(q) : (q > 15.0f ? std::uint8_t{15} : std::uint8_t{0});
    }
    static void encode(const float* src, q4_0* dst, std::size_t n) {
        constexpr std::size_t half = block_values / 2;
        for (std::size_t b = 0; b < n / block_values; ++b, src += block_values) {
            float amax = std::fabs(src[0]), m = src[0];
            for (std::size_t j = 1; j < block_values; ++j) {
                if (std::fabs(src[j]) > amax) {
                    amax = std::fabs(src[j]);
                    m = src[j];
                }
            }
            const float d = m / -8.0f;
            const float id = d != 0.0f ? 1.0f / d : 0.0f;
            dst[b].d = fp16::from_bits(fp16::from_float(d));
            for (std::size_t j = 0; j < half; ++j) {
                dst[b].qs[j] = static_cast<std::uint8_t>(nibble(src[j], id) | (nibble(src[j + half], id) << 4));
            }
        }
    }
    static void decode(const q4_0* src, float* dst, std::size_t n) {
        constexpr std::size_t half = block_values / 2;
        for (std::size_t b = 0; b < n / block_values; ++b, dst += block_values) {
            const float d = fp16::to_float(src[b].d.bits);
            for (std::size_t j = 0; j < half; ++j) {
                dst[j] = static_cast<float>(static_cast<int>(src[b].qs[j] & 0x0f) - 8) * d;
                dst[j + half] = static_cast<float>(static_cast<int>(src[b].qs[j] >> 4) - 8) * d;
            }
        }
    }
};

static_assert(sizeof(fp16) == 2 && sizeof(bf16) == 2, "16-bit storage types must be 2 bytes");
static_assert(StorageElement<float> && StorageElement<fp16> && StorageElement<bf16> && StorageElement<q8_0> &&
              StorageElement<q4_0>);

}  // namespace kvcache

#include "kvcache/rotated_q4_0.hpp"
