// The few vector primitives the attention and matmul kernels are built from: load-as-float, dot, axpy, exp,
// and the integer codes of quantised weight blocks as floats.
//
// Each has an AVX2+FMA path and a portable path (Simd<W> also an AVX-512 one). Within one build a primitive
// always sums in the same order for the same length, which is what makes the kernels' results independent
// of batching. (Different builds — say AVX2 against AVX-512 — may differ in the last bits.)
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kvcache/element_types.hpp"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define KVCACHE_HAVE_AVX2 1
#else
#define KVCACHE_HAVE_AVX2 0
#endif
#if KVCACHE_HAVE_AVX2 && defined(__AVX512F__)
#define KVCACHE_HAVE_AVX512 1
#else
#define KVCACHE_HAVE_AVX512 0
#endif
// AVX-512 VNNI with AVX512BW: integer q·k over q8_0 keys (attention/int8_scores.hpp).
#if KVCACHE_HAVE_AVX512 && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define KVCACHE_HAVE_AVX512_VNNI 1
#else
#define KVCACHE_HAVE_AVX512_VNNI 0
#endif

// The kernels are compiled with the includer's flags. On x86-64 without AVX2+FMA they quietly take the scalar
// path, several times slower — so say so at build time. The package's targets (CMake kvcache::kvcache,
// pkg-config kvcache) carry the flags the library was built with; a build that wants the portable path on
// purpose defines KVCACHE_ALLOW_SCALAR. (#pragma message, not #warning: it informs, and -Werror builds go on.)
#if (defined(__x86_64__) || defined(_M_X64)) && !KVCACHE_HAVE_AVX2 && !defined(KVCACHE_ALLOW_SCALAR)
#pragma message("kvcache: compiled without AVX2/FMA, so attention and matmul use the scalar path (several times " \
                "slower). Compile with -mavx2 -mfma -mf16c or -march=native (the kvcache::kvcache target and " \
                "`pkg-config --cflags kvcache` carry the library's flags), or define KVCACHE_ALLOW_SCALAR to keep " \
                "the portable path without this message.")
#endif

// Keeps a function out of GCC's loop vectoriser. GCC 12 turns byte dot products whose operands are both signed
// ((u8 - 128) * s8, or s8 * s8) into vpdpbusd when AVX-512 VNNI is enabled, and vpdpbusd reads its first
// operand as unsigned bytes: a code of -1 counts as 255 (found on an AMD Zen 4: matmul_int8_test and
// int8_scores_test failed). The portable integer kernels are the definitions the vector ones are checked
// against, so they must stay the plain arithmetic.
#if !defined(KVCACHE_NO_VECTORIZE)
#if defined(__GNUC__) && !defined(__clang__)
#define KVCACHE_NO_VECTORIZE __attribute__((optimize("no-tree-vectorize")))
#else
#define KVCACHE_NO_VECTORIZE
#endif
#endif

namespace kvcache::detail {

#if KVCACHE_HAVE_AVX512_VNNI
/// acc + vpdpbusd(u, the four signed bytes at p in every lane): u's unsigned bytes times p's, four products per
/// 32-bit lane. The four bytes are the instruction's broadcast memory operand ({1to16}); GCC 12 compiles a
/// _mm512_set1_epi32 of memory into a vpbroadcastd of its own (and of a register, a move and a shift too).
inline __m512i dpbusd_broadcast(__m512i acc, __m512i u, const std::int8_t* p) {
    asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(u), "m"(*reinterpret_cast<const std::int32_t*>(p)));
    return acc;
}
#endif

/// The constants of exp8, exp16 and exp1 (one set, so that the three compute the same function): the clamp
/// bounds, the two-part ln 2 of the range reduction, the degree-6 polynomial for e^r on [-ln2/2, ln2/2].
inline constexpr float kExpMaxX = 88.3762626647949f, kExpMinX = -87.3365447504019f;
inline constexpr float kExpLog2e = 1.44269504088896341f, kExpLn2Hi = 0.693359375f, kExpLn2Lo = -2.12194440e-4f;
inline constexpr float kExpP0 = 1.9875691500e-4f, kExpP1 = 1.3981999507e-3f, kExpP2 = 8.3334519073e-3f,
                       kExpP3 = 4.1665795894e-2f, kExpP4 = 1.6666665459e-1f, kExpP5 = 5.0000001201e-1f;

/// W values of a row of a storage type without a kernel of its own (a user's ElementTraits type), from value
/// i on: the objects holding them are decoded into a small buffer on the stack.
template <StorageElement T, std::size_t W>
inline void decode_lanes(const T* row, std::size_t i, float* out) {
    constexpr std::size_t B = block_values_v<T>;
    const std::size_t first = i / B, last = (i + W - 1) / B;
    float buf[(W + B - 1) / B * B + B];
    ElementTraits<T>::decode(row + first, buf, (last - first + 1) * B);
    for (std::size_t k = 0; k < W; ++k) out[k] = buf[i - first * B + k];
}

/// Value i of a row stored as T.
template <StorageElement T>
inline float row_value(const T* row, std::size_t i) {
    if constexpr (ScalarElement<T>) {
        return to_float(row[i]);
    } else if constexpr (std::is_same_v<T, q8_0>) {
        const q8_0& b = row[i / q8_0::kValues];
        return static_cast<float>(b.qs[i % q8_0::kValues]) * fp16::to_float(b.d.bits);
    } else if constexpr (std::is_same_v<T, q4_0>) {
        const q4_0& b = row[i / q4_0::kValues];
        const std::size_t o = i % q4_0::kValues;
        const int q = o < 16 ? (b.qs[o] & 0x0f) : (b.qs[o - 16] >> 4);
        return static_cast<float>(q - 8) * fp16::to_float(b.d.bits);
    } else {
        float v;
        decode_lanes<T, 1>(row, i, &v);
        return v;
    }
}

#if KVCACHE_HAVE_AVX2
/// 8 consecutive float, fp16 or bf16 elements as floats.
template <ScalarElement T>
    requires(std::is_same_v<T, float> || std::is_same_v<T, fp16> || std::is_same_v<T, bf16>)
inline __m256 load8(const T* p) {
    if constexpr (std::is_same_v<T, float>) {
        return _mm256_loadu_ps(p);
    } else if constexpr (std::is_same_v<T, fp16>) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    } else {
        const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
    }
}

/// Values i..i+7 of a row stored as a quantised block type, dequantised in registers: the integers converted
/// to float times the block's scale (i is a multiple of 8, so all eight lie in one block).
template <class T>
inline __m256 load8_block(const T* row, std::size_t i) {
    const T& b = row[i / T::kValues];
    const std::size_t o = i % T::kValues;
    const __m256 d = _mm256_cvtph_ps(_mm_set1_epi16(static_cast<short>(b.d.bits)));
    if constexpr (std::is_same_v<T, q8_0>) {
        const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b.qs + o));
        return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d);
    } else {
        // element j < 16: low nibble of byte j; j >= 16: high nibble of byte j - 16
        const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b.qs + (o & 15)));
        const __m256i wide = _mm256_srl_epi32(_mm256_cvtepu8_epi32(bytes), _mm_cvtsi32_si128(o >= 16 ? 4 : 0));
        const __m256i q = _mm256_sub_epi32(_mm256_and_si256(wide, _mm256_set1_epi32(0x0f)), _mm256_set1_epi32(8));
        return _mm256_mul_ps(_mm256_cvtepi32_ps(q), d);
    }
}

/// Values i..i+7 of a row stored as T, as floats.
template <StorageElement T>
inline __m256 load8_row(const T* row, std::size_t i) {
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, fp16> || std::is_same_v<T, bf16>) {
        return load8(row + i);
    } else if constexpr (std::is_same_v<T, q8_0> || std::is_same_v<T, q4_0>) {
        return load8_block(row, i);
    } else {
        float v[8];
        decode_lanes<T, 8>(row, i, v);
        return _mm256_loadu_ps(v);
    }
}

inline float hsum(__m256 v) {
    const __m128 lo = _mm256_castps256_ps128(v);
    const __m128 hi = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(lo, hi);
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/// e^x for 8 floats: range reduction x = n ln2 + r, a degree-6 polynomial for e^r, scaled by 2^n.
/// Relative error below 2e-7 over the float range; e^x for x < -87.3 is 0 (what softmax wants).
inline __m256 exp8(__m256 x) {
    const __m256 max_x = _mm256_set1_ps(kExpMaxX);
    const __m256 min_x = _mm256_set1_ps(kExpMinX);
    const __m256 underflow = _mm256_cmp_ps(x, min_x, _CMP_LT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, min_x), max_x);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kExpLog2e)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // r = x - n*ln2 in two parts so r stays accurate
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kExpLn2Hi), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kExpLn2Lo), r);
    __m256 p = _mm256_set1_ps(kExpP0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP5));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    const __m256 result = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    return _mm256_andnot_ps(underflow, result);
}
#endif

/// a * b + c, fused where the target has FMA and then always. Left to the compiler (-ffp-contract=fast is
/// GCC's default), `a * b + c` is fused in some inlined copies and not in others, and the same sum could
/// differ between two instantiations of a kernel. Scalar multiply-adds in the kernels go through this.
inline float fused_multiply_add(float a, float b, float c) {
#if defined(__FMA__)
    return std::fma(a, b, c);
#else
    return a * b + c;  // no FMA instruction, so nothing can be fused
#endif
}

/// exp8 for one float: the same clamp, reduction, polynomial and scaling, one IEEE operation for each of exp8's
/// lanes, so a value gets the same bits from exp1, exp8 and exp16 (and in a build without AVX2). Elementwise
/// code that runs its full vectors through exp8 and its tail through exp1 then gives every element the same
/// result wherever it falls — which batching needs (a token's row may be a tail alone and a middle in a batch).
inline float exp1(float x) {
    const bool underflow = x < kExpMinX;  // NaN: false, as _CMP_LT_OQ
    // _mm256_max_ps(x, lo) returns lo when x is NaN, and min likewise: the NaN becomes lo here too.
    x = x > kExpMinX ? x : kExpMinX;
    x = x < kExpMaxX ? x : kExpMaxX;
    const float n = std::nearbyint(x * kExpLog2e);
    float r = std::fma(-n, kExpLn2Hi, x);
    r = std::fma(-n, kExpLn2Lo, r);
    float p = kExpP0;
    p = std::fma(p, r, kExpP1);
    p = std::fma(p, r, kExpP2);
    p = std::fma(p, r, kExpP3);
    p = std::fma(p, r, kExpP4);
    p = std::fma(p, r, kExpP5);
    const float r2 = r * r, r1 = r + 1.0f;
    p = std::fma(p, r2, r1);
    const auto bits = static_cast<std::uint32_t>(static_cast<std::int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return underflow ? 0.0f : p * scale;
}

#if KVCACHE_HAVE_AVX512
/// exp8 for 16 floats (the same reduction and polynomial).
inline __m512 exp16(__m512 x) {
    const __m512 max_x = _mm512_set1_ps(kExpMaxX);
    const __m512 min_x = _mm512_set1_ps(kExpMinX);
    const __mmask16 underflow = _mm512_cmp_ps_mask(x, min_x, _CMP_LT_OQ);
    x = _mm512_maskz_min_ps(0xFFFF, _mm512_maskz_max_ps(0xFFFF, x, min_x), max_x);  // (maskz: see Simd<16>::load)
    const __m512 n = _mm512_maskz_roundscale_ps(0xFFFF, _mm512_mul_ps(x, _mm512_set1_ps(kExpLog2e)),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kExpLn2Hi), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kExpLn2Lo), r);
    __m512 p = _mm512_set1_ps(kExpP0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP5));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __m512i e = _mm512_add_epi32(_mm512_maskz_cvtps_epi32(0xFFFF, n), _mm512_set1_epi32(127));
    const __m512 result = _mm512_mul_ps(p, _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, e, 23)));
    return _mm512_maskz_mov_ps(static_cast<__mmask16>(~underflow), result);
}
#endif

/// Simd<W>: W float lanes and the handful of operations the attention tile kernels need, for W = 16 (AVX-512),
/// 8 (AVX2+FMA) and 1 (portable scalar). The kernels are written once against this interface.
///
/// reduce4 sums the lanes of four vectors with one fixed tree per vector — halves folded onto each other
/// down to 4 lanes, then (x0 + x1) + (x2 + x3) — and each vector's sum depends only on that vector, so a
/// dot product comes out bit for bit the same whichever three other rows it is reduced alongside.
template <std::size_t W>
struct Simd;

template <>
struct Simd<1> {
    using V = float;
    static V zero() { return 0.0f; }
    static V set1(float x) { return x; }
    static V loadf(const float* p) { return *p; }
    /// Value i of a row stored as T (rows of block types hold several values per object).
    template <StorageElement T>
    static V load(const T* row, std::size_t i) { return row_value(row, i); }
    static void store(float* p, V v) { *p = v; }
    static V fmadd(V a, V b, V c) { return fused_multiply_add(a, b, c); }
    static V add(V a, V b) { return a + b; }
    static void reduce4(V a0, V a1, V a2, V a3, float* out) {
        out[0] = a0;
        out[1] = a1;
        out[2] = a2;
        out[3] = a3;
    }
};

#if KVCACHE_HAVE_AVX2
template <>
struct Simd<8> {
    using V = __m256;
    static V zero() { return _mm256_setzero_ps(); }
    static V set1(float x) { return _mm256_set1_ps(x); }
    static V loadf(const float* p) { return _mm256_loadu_ps(p); }
    /// Values i..i+7 of a row stored as T (i a multiple of 8).
    template <StorageElement T>
    static V load(const T* row, std::size_t i) { return load8_row(row, i); }
    static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
    static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
    static V add(V a, V b) { return _mm256_add_ps(a, b); }
    static void reduce4(V a0, V a1, V a2, V a3, float* out) {
        // fold 8 -> 4 lanes: [a0 folded | a1 folded], [a2 folded | a3 folded]
        const V s01 = _mm256_add_ps(_mm256_permute2f128_ps(a0, a1, 0x20), _mm256_permute2f128_ps(a0, a1, 0x31));
        const V s23 = _mm256_add_ps(_mm256_permute2f128_ps(a2, a3, 0x20), _mm256_permute2f128_ps(a2, a3, 0x31));
        // (x0 + x1), (x2 + x3), then their sum: lanes [a0 a2 a0 a2 | a1 a3 a1 a3]
        const V h = _mm256_hadd_ps(s01, s23);
        const V t = _mm256_hadd_ps(h, h);
        _mm_storeu_ps(out, _mm_unpacklo_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
    }
};
#endif

#if KVCACHE_HAVE_AVX512
template <>
struct Simd<16> {
    using V = __m512;
    static V zero() { return _mm512_setzero_ps(); }
    static V set1(float x) { return _mm512_set1_ps(x); }
    static V loadf(const float* p) { return _mm512_loadu_ps(p); }
    // Conversions use the zero-masked forms with every lane selected (the same instructions): GCC 12 warns
    // that the plain AVX-512 intrinsics read an uninitialised register.
    /// Values i..i+15 of a row stored as T (i a multiple of 16); quantised blocks are dequantised in registers.
    template <StorageElement T>
    static V load(const T* row, std::size_t i) {
        if constexpr (std::is_same_v<T, float>) {
            return _mm512_loadu_ps(row + i);
        } else if constexpr (std::is_same_v<T, fp16>) {
            return _mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + i)));
        } else if constexpr (std::is_same_v<T, bf16>) {
            const __m512i wide =
                _mm512_maskz_cvtepu16_epi32(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + i)));
            return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, wide, 16));
        } else if constexpr (std::is_same_v<T, q8_0> || std::is_same_v<T, q4_0>) {
            const T& b = row[i / T::kValues];
            const std::size_t o = i % T::kValues;
            const __m512 d = _mm512_set1_ps(fp16::to_float(b.d.bits));
            __m512i q;
            if constexpr (std::is_same_v<T, q8_0>) {
                q = _mm512_maskz_cvtepi8_epi32(0xFFFF, _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs + o)));
            } else {  // o is 0 (low nibbles of the 16 bytes) or 16 (high nibbles)
                const __m512i wide = _mm512_maskz_cvtepu8_epi32(0xFFFF, _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs)));
                q = _mm512_sub_epi32(_mm512_and_si512(_mm512_maskz_srl_epi32(0xFFFF, wide, _mm_cvtsi32_si128(o ? 4 : 0)),
                                                      _mm512_set1_epi32(0x0f)),
                                     _mm512_set1_epi32(8));
            }
            return _mm512_mul_ps(_mm512_maskz_cvtepi32_ps(0xFFFF, q), d);
        } else {
            float v[16];
            decode_lanes<T, 16>(row, i, v);
            return _mm512_loadu_ps(v);
        }
    }
    /// Values i..i+31 of a row of q8_0 or q4_0 blocks (i a multiple of 32: one whole block) as two vectors, with
    /// the block's scale converted once: the bits of load(row, i) and load(row, i + 16).
    template <StorageElement T>
    static void load_block(const T* row, std::size_t i, V& lo, V& hi) {
        static_assert(std::is_same_v<T, q8_0> || std::is_same_v<T, q4_0>, "a 32-value block type");
        const T& b = row[i / T::kValues];
        const __m512 d = _mm512_set1_ps(fp16::to_float(b.d.bits));
        __m512i q0, q1;
        if constexpr (std::is_same_v<T, q8_0>) {
            q0 = _mm512_maskz_cvtepi8_epi32(0xFFFF, _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs)));
            q1 = _mm512_maskz_cvtepi8_epi32(0xFFFF, _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs + 16)));
        } else {
            const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs));
            const __m512i wide = _mm512_maskz_cvtepu8_epi32(0xFFFF, bytes);
            const __m512i eight = _mm512_set1_epi32(8), nibble = _mm512_set1_epi32(0x0f);
            q0 = _mm512_sub_epi32(_mm512_and_si512(wide, nibble), eight);
            q1 = _mm512_sub_epi32(_mm512_and_si512(_mm512_maskz_srli_epi32(0xFFFF, wide, 4), nibble), eight);
        }
        lo = _mm512_mul_ps(_mm512_maskz_cvtepi32_ps(0xFFFF, q0), d);
        hi = _mm512_mul_ps(_mm512_maskz_cvtepi32_ps(0xFFFF, q1), d);
    }
    static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
    static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
    static V add(V a, V b) { return _mm512_add_ps(a, b); }
    /// 128-bit quarters [a.q(i0), a.q(i1), b.q(i2), b.q(i3)] for imm = _MM_SHUFFLE(i3, i2, i1, i0).
    template <int imm>
    static V shuffle128(V a, V b) { return _mm512_mask_shuffle_f32x4(a, 0xFFFF, a, b, imm); }
    static void reduce4(V a0, V a1, V a2, V a3, float* out) {
        // (masked forms with every lane selected, for the reason given at load)
        // fold 16 -> 8 lanes: [a0 folded | a1 folded], [a2 folded | a3 folded] (256-bit halves)
        const V s01 = _mm512_add_ps(shuffle128<_MM_SHUFFLE(1, 0, 1, 0)>(a0, a1), shuffle128<_MM_SHUFFLE(3, 2, 3, 2)>(a0, a1));
        const V s23 = _mm512_add_ps(shuffle128<_MM_SHUFFLE(1, 0, 1, 0)>(a2, a3), shuffle128<_MM_SHUFFLE(3, 2, 3, 2)>(a2, a3));
        // fold 8 -> 4: quarters [a0 a1 a2 a3]
        const V q = _mm512_add_ps(shuffle128<_MM_SHUFFLE(2, 0, 2, 0)>(s01, s23), shuffle128<_MM_SHUFFLE(3, 1, 3, 1)>(s01, s23));
        // within each quarter: (x0 + x1) + (x2 + x3) in every lane (adds commute exactly)
        const V p = _mm512_add_ps(q, _mm512_mask_permute_ps(q, 0xFFFF, q, _MM_SHUFFLE(2, 3, 0, 1)));
        const V r = _mm512_add_ps(p, _mm512_mask_permute_ps(p, 0xFFFF, p, _MM_SHUFFLE(1, 0, 3, 2)));
        const __m512i lane0_of_each_quarter = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
        _mm_storeu_ps(out, _mm512_maskz_extractf32x4_ps(0xF, _mm512_mask_permutexvar_ps(r, 0xFFFF, lane0_of_each_quarter, r), 0));
    }
};
#endif

/// The widest lane count this build has a Simd<W> for that divides head_dim (1 always does).
inline std::size_t simd_lanes_for(std::size_t head_dim) {
#if KVCACHE_HAVE_AVX512
    if (head_dim % 16 == 0) return 16;
#endif
#if KVCACHE_HAVE_AVX2
    if (head_dim % 8 == 0) return 8;
#endif
    (void)head_dim;
    return 1;
}

/// Σ a[i] * b[i] over n elements, b in storage type T (float, fp16 or bf16).
template <ScalarElement T>
    requires(std::is_same_v<T, float> || std::is_same_v<T, fp16> || std::is_same_v<T, bf16>)
inline float dot(const float* a, const T* b, std::size_t n) {
    std::size_t i = 0;
    float sum = 0.0f;
#if KVCACHE_HAVE_AVX2
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), load8(b + i + 8), acc1);
    }
    if (i + 8 <= n) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8(b + i), acc0);
        i += 8;
    }
    sum = hsum(_mm256_add_ps(acc0, acc1));
#endif
    for (; i < n; ++i) sum += a[i] * to_float(b[i]);
    return sum;
}

/// acc[i] += alpha * x[i] over n elements, x in storage type T (float, fp16 or bf16).
template <ScalarElement T>
    requires(std::is_same_v<T, float> || std::is_same_v<T, fp16> || std::is_same_v<T, bf16>)
inline void axpy(float alpha, const T* x, float* acc, std::size_t n) {
    std::size_t i = 0;
#if KVCACHE_HAVE_AVX2
    const __m256 a = _mm256_set1_ps(alpha);
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(a, load8(x + i), _mm256_loadu_ps(acc + i)));
#endif
    for (; i < n; ++i) acc[i] += alpha * to_float(x[i]);
}

/// max(x[0..n)) for n >= 1 (8 lanes at a time: a serial max chain would cost more than the dot products).
inline float max_of(const float* x, std::size_t n) {
    std::size_t i = 0;
    float best = x[0];
#if KVCACHE_HAVE_AVX2
    if (n >= 8) {
        __m256 m = _mm256_loadu_ps(x);
        for (i = 8; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        best = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
    }
#endif
    for (; i < n; ++i) best = std::max(best, x[i]);
    return best;
}

/// x[i] *= alpha over n elements.
inline void scale(float* x, float alpha, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) x[i] *= alpha;
}

/// p[i] = e^(s[i] - shift) for n elements; returns Σ p[i] (summed in a fixed order).
inline float exp_shifted(const float* s, float shift, float* p, std::size_t n) {
    std::size_t i = 0;
    float total = 0.0f;
#if KVCACHE_HAVE_AVX2
    const __m256 sh = _mm256_set1_ps(shift);
    __m256 acc = _mm256_setzero_ps();
#if KVCACHE_HAVE_AVX512
    if (n >= 16) {
        const __m512 sh16 = _mm512_set1_ps(shift);
        __m512 acc16 = _mm512_setzero_ps();
        for (; i + 16 <= n; i += 16) {
            const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + i), sh16));
            _mm512_storeu_ps(p + i, e);
            acc16 = _mm512_add_ps(acc16, e);
        }
        const __m512d halves = _mm512_castps_pd(acc16);
        acc = _mm256_add_ps(_mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, halves, 0)),
                            _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, halves, 1)));
    }
#endif
    for (; i + 8 <= n; i += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), sh));
        _mm256_storeu_ps(p + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    total = hsum(acc);
#endif
    for (; i < n; ++i) {
        p[i] = std::exp(s[i] - shift);
        total += p[i];
    }
    return total;
}

#if KVCACHE_HAVE_AVX2
/// The 32 int8 codes of a Q8_0 weight block (32 bytes at p), as four vectors of 8 floats in order.
inline void q8_codes(const std::byte* p, __m256 q[4]) {
    const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16));
    q[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
    q[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
    q[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
    q[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
}

/// The 32 4-bit codes of a Q4_1 weight block (16 bytes at p: code j is the low nibble of byte j, code j + 16
/// its high nibble), as four vectors of 8 floats in order.
inline void q4_codes(const std::byte* p, __m256 q[4]) {
    const __m128i nibble = _mm_set1_epi8(0x0F);
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i lo = _mm_and_si128(raw, nibble);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), nibble);
    q[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
    q[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
    q[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
    q[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
}

/// The 32 codes of one block against 32 floats at x, lane by lane in one fixed order: q0·x0, then + q1·x1, ...
inline __m256 block32_dot(const __m256 q[4], const float* x) {
    __m256 s = _mm256_mul_ps(q[0], _mm256_loadu_ps(x));
    s = _mm256_fmadd_ps(q[1], _mm256_loadu_ps(x + 8), s);
    s = _mm256_fmadd_ps(q[2], _mm256_loadu_ps(x + 16), s);
    return _mm256_fmadd_ps(q[3], _mm256_loadu_ps(x + 24), s);
}
#endif

}  // namespace kvcache::detail
