// The few vector primitives the attention kernels are built from: load-as-float, dot, axpy, exp.
//
// Each has an AVX2+FMA path and a portable path. Within one build a primitive always sums in the same
// order for the same length, which is what makes the kernels' results independent of batching.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "kvcache/element_types.hpp"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define KVCACHE_HAVE_AVX2 1
#else
#define KVCACHE_HAVE_AVX2 0
#endif

namespace kvcache::detail {

#if KVCACHE_HAVE_AVX2
/// 8 consecutive storage elements as floats.
template <StorageElement T>
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
    const __m256 max_x = _mm256_set1_ps(88.3762626647949f);
    const __m256 min_x = _mm256_set1_ps(-87.3365447504019f);
    const __m256 underflow = _mm256_cmp_ps(x, min_x, _CMP_LT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, min_x), max_x);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // r = x - n*ln2 in two parts so r stays accurate
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    const __m256 result = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    return _mm256_andnot_ps(underflow, result);
}
#endif

#if KVCACHE_HAVE_AVX2
/// Sums the 8 lanes of v as ((0+1)+(2+3)) + ((4+5)+(6+7)): the same order reduce8x8 uses per row.
inline float hsum_tree(__m256 v) {
    __m256 s = _mm256_hadd_ps(v, v);
    s = _mm256_hadd_ps(s, s);
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
}

/// Lane r of the result is hsum_tree(a[r]), bit for bit, for 8 vectors at once.
inline __m256 reduce8x8(const __m256* a) {
    const __m256 h01 = _mm256_hadd_ps(a[0], a[1]);
    const __m256 h23 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 h45 = _mm256_hadd_ps(a[4], a[5]);
    const __m256 h67 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 h0123 = _mm256_hadd_ps(h01, h23);  // lanes: r0 r1 r2 r3 (low halves) | r0 r1 r2 r3 (high halves)
    const __m256 h4567 = _mm256_hadd_ps(h45, h67);
    const __m256 lo = _mm256_permute2f128_ps(h0123, h4567, 0x20);
    const __m256 hi = _mm256_permute2f128_ps(h0123, h4567, 0x31);
    return _mm256_add_ps(lo, hi);
}
#endif

/// The dot product of q (head_dim floats) with one row of keys. Rows are summed with one accumulator
/// per row in index order and reduced by hsum_tree, so dot_row and dot_rows8 agree bit for bit.
template <StorageElement T>
inline float dot_row(const float* q, const T* k, std::size_t d) {
#if KVCACHE_HAVE_AVX2
    if (d % 8 == 0) {
        __m256 acc = _mm256_setzero_ps();
        for (std::size_t i = 0; i < d; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8(k + i), acc);
        return hsum_tree(acc);
    }
#endif
    float sum = 0.0f;
    for (std::size_t i = 0; i < d; ++i) sum += q[i] * to_float(k[i]);
    return sum;
}

/// Eight dot products of q with rows k[0..7] into out[0..7]; equal to eight dot_row calls.
template <StorageElement T>
inline void dot_rows8(const float* q, const T* const* k, std::size_t d, float* out) {
#if KVCACHE_HAVE_AVX2
    if (d % 8 == 0) {
        __m256 acc[8];
        for (int r = 0; r < 8; ++r) acc[r] = _mm256_setzero_ps();
        for (std::size_t i = 0; i < d; i += 8) {
            const __m256 qv = _mm256_loadu_ps(q + i);
            for (int r = 0; r < 8; ++r) acc[r] = _mm256_fmadd_ps(qv, load8(k[r] + i), acc[r]);
        }
        _mm256_storeu_ps(out, reduce8x8(acc));
        return;
    }
#endif
    for (int r = 0; r < 8; ++r) out[r] = dot_row(q, k[r], d);
}

/// acc[0..d) += Σ_r p[r] * v[r][0..d) for r = 0..n-1, summed in order of r (register-blocked over d).
template <StorageElement T>
inline void accumulate_rows(const float* p, const T* const* v, std::size_t n, float* acc, std::size_t d) {
    std::size_t i = 0;
#if KVCACHE_HAVE_AVX2
    for (; i + 32 <= d; i += 32) {
        __m256 a0 = _mm256_loadu_ps(acc + i), a1 = _mm256_loadu_ps(acc + i + 8);
        __m256 a2 = _mm256_loadu_ps(acc + i + 16), a3 = _mm256_loadu_ps(acc + i + 24);
        for (std::size_t r = 0; r < n; ++r) {
            const __m256 w = _mm256_set1_ps(p[r]);
            const T* row = v[r] + i;
            a0 = _mm256_fmadd_ps(w, load8(row), a0);
            a1 = _mm256_fmadd_ps(w, load8(row + 8), a1);
            a2 = _mm256_fmadd_ps(w, load8(row + 16), a2);
            a3 = _mm256_fmadd_ps(w, load8(row + 24), a3);
        }
        _mm256_storeu_ps(acc + i, a0);
        _mm256_storeu_ps(acc + i + 8, a1);
        _mm256_storeu_ps(acc + i + 16, a2);
        _mm256_storeu_ps(acc + i + 24, a3);
    }
    for (; i + 8 <= d; i += 8) {
        __m256 a0 = _mm256_loadu_ps(acc + i);
        for (std::size_t r = 0; r < n; ++r) a0 = _mm256_fmadd_ps(_mm256_set1_ps(p[r]), load8(v[r] + i), a0);
        _mm256_storeu_ps(acc + i, a0);
    }
#endif
    for (; i < d; ++i) {
        float a = acc[i];
        for (std::size_t r = 0; r < n; ++r) a += p[r] * to_float(v[r][i]);
        acc[i] = a;
    }
}

/// Σ a[i] * b[i] over n elements, b in storage type T.
template <StorageElement T>
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

/// acc[i] += alpha * x[i] over n elements, x in storage type T.
template <StorageElement T>
inline void axpy(float alpha, const T* x, float* acc, std::size_t n) {
    std::size_t i = 0;
#if KVCACHE_HAVE_AVX2
    const __m256 a = _mm256_set1_ps(alpha);
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(a, load8(x + i), _mm256_loadu_ps(acc + i)));
#endif
    for (; i < n; ++i) acc[i] += alpha * to_float(x[i]);
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

}  // namespace kvcache::detail
