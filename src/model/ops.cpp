// Norms, RoPE, activations: out-of-line so every caller runs the same machine code (one order per token).
#include "kvcache/model/ops.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kvcache/detail/simd.hpp"

namespace kvcache {

void rms_norm(const float* x, const float* weight, std::size_t n_tokens, std::size_t dim, float eps, float* out) {
    for (std::size_t t = 0; t < n_tokens; ++t) {
        const float* xt = x + t * dim;
        float* ot = out + t * dim;
        // The sum of 500-5000 squares in double, once per token. A float times a float is exact in double, so
        // a fused multiply-add rounds only the sum; the vector path keeps four running sums (lane j takes
        // elements j, j + 4, ...) and adds them in one fixed order at the end.
        double ss = 0;
        std::size_t i = 0;
#if KVCACHE_HAVE_AVX2
        __m256d acc = _mm256_setzero_pd();
        for (; i + 4 <= dim; i += 4) {
            const __m256d v = _mm256_cvtps_pd(_mm_loadu_ps(xt + i));
            acc = _mm256_fmadd_pd(v, v, acc);
        }
        alignas(32) double lanes[4];
        _mm256_store_pd(lanes, acc);
        ss = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
#endif
        for (; i < dim; ++i) ss += double(xt[i]) * double(xt[i]);
        const float inv = static_cast<float>(1.0 / std::sqrt(ss / double(dim) + double(eps)));
        for (i = 0; i < dim; ++i) ot[i] = xt[i] * inv * weight[i];
    }
}

void layer_norm(const float* x, const float* weight, const float* bias, std::size_t n_tokens, std::size_t dim,
                float eps, float* out) {
    for (std::size_t t = 0; t < n_tokens; ++t) {
        const float* xt = x + t * dim;
        float* ot = out + t * dim;
        // mean and variance in double (two passes: no cancellation), the normalisation itself in float
        double mean = 0;
        for (std::size_t i = 0; i < dim; ++i) mean += xt[i];
        mean /= static_cast<double>(dim);
        double var = 0;
        for (std::size_t i = 0; i < dim; ++i) var += (xt[i] - mean) * (xt[i] - mean);
        var /= static_cast<double>(dim);
        const float rstd = static_cast<float>(1.0 / std::sqrt(var + eps));
        const float m = static_cast<float>(mean);
        for (std::size_t i = 0; i < dim; ++i) ot[i] = (xt[i] - m) * rstd * weight[i] + bias[i];
    }
}

void rope_table(std::size_t n_tokens, std::size_t rope_dim, std::size_t first_position, const double* inv_freq,
                float* cos_out, float* sin_out) {
    const std::size_t half = rope_dim / 2;
    for (std::size_t t = 0; t < n_tokens; ++t) {
        const double pos = static_cast<double>(first_position + t);
        for (std::size_t i = 0; i < half; ++i) {
            const double angle = pos * inv_freq[i];
            cos_out[t * half + i] = static_cast<float>(std::cos(angle));
            sin_out[t * half + i] = static_cast<float>(std::sin(angle));
        }
    }
}

void apply_rope(float* x, std::size_t n_tokens, std::size_t n_heads, std::size_t head_dim, std::size_t rope_dim,
                const float* cos, const float* sin, RopeStyle style) {
    const std::size_t half = rope_dim / 2;
    for (std::size_t t = 0; t < n_tokens; ++t) {
        const float* ct = cos + t * half;
        const float* st = sin + t * half;
        for (std::size_t h = 0; h < n_heads; ++h) {
            float* v = x + (t * n_heads + h) * head_dim;
            for (std::size_t i = 0; i < half; ++i) {
                const std::size_t a = style == RopeStyle::Interleaved ? 2 * i : i;
                const std::size_t b = style == RopeStyle::Interleaved ? 2 * i + 1 : i + half;
                const float x0 = v[a], x1 = v[b], c = ct[i], s = st[i];
                const float x1s = x1 * s, x1c = x1 * c;  // rounded products, then one fused step each
                v[a] = std::fma(x0, c, -x1s);
                v[b] = std::fma(x0, s, x1c);
            }
        }
    }
}

void apply_rope(float* x, std::size_t n_tokens, std::size_t n_heads, std::size_t head_dim, std::size_t rope_dim,
                std::size_t first_position, const double* inv_freq, RopeStyle style) {
    const std::size_t cells = n_tokens * (rope_dim / 2);
    std::vector<float> cos(cells), sin(cells);
    rope_table(n_tokens, rope_dim, first_position, inv_freq, cos.data(), sin.data());
    apply_rope(x, n_tokens, n_heads, head_dim, rope_dim, cos.data(), sin.data(), style);
}

void swiglu(float* gate, const float* up, std::size_t count) {
    // silu(g) = g / (1 + e^-g) with detail::exp8/exp16 and, for the tail, their one-lane twin exp1: every element
    // gets the same bits whether it falls in a vector or in the tail (a token's row is laid out differently in
    // a batch than alone). std::exp here was 4 % of an eight-sequence decode step, on the calling thread alone.
    std::size_t i = 0;
#if KVCACHE_HAVE_AVX512
    const __m512 one16 = _mm512_set1_ps(1.0f);
    for (; i + 16 <= count; i += 16) {
        const __m512 g = _mm512_loadu_ps(gate + i);
        const __m512 e = detail::exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
        _mm512_storeu_ps(gate + i, _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one16, e)), _mm512_loadu_ps(up + i)));
    }
#endif
#if KVCACHE_HAVE_AVX2
    const __m256 one8 = _mm256_set1_ps(1.0f);
    for (; i + 8 <= count; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 e = detail::exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one8, e)), _mm256_loadu_ps(up + i)));
    }
#endif
    for (; i < count; ++i) {
        const float g = gate[i];
        gate[i] = g / (1.0f + detail::exp1(-g)) * up[i];
    }
}

void activate(Activation activation, float* x, std::size_t count) {
    if (activation == Activation::ReLU) {
        for (std::size_t i = 0; i < count; ++i) x[i] = std::max(x[i], 0.0f);
    } else {
        for (std::size_t i = 0; i < count; ++i) x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.70710678118654752f));
    }
}

void add_into(float* acc, const float* x, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) acc[i] += x[i];
}

void add_bias(float* acc, const float* bias, std::size_t n_tokens, std::size_t dim) {
    for (std::size_t t = 0; t < n_tokens; ++t) add_into(acc + t * dim, bias, dim);
}

}  // namespace kvcache
