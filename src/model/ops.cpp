// Norms, RoPE, activations: out-of-line so every caller runs the same machine code (one order per token).
#include "kvcache/model/ops.hpp"

#include <algorithm>
#include <cmath>

namespace kvcache {

void rms_norm(const float* x, const float* weight, std::size_t n_tokens, std::size_t dim, float eps, float* out) {
    for (std::size_t t = 0; t < n_tokens; ++t) {
        const float* xt = x + t * dim;
        float* ot = out + t * dim;
        double ss = 0;  // double: the sum of 500-5000 squares, once per token, costs nothing
        for (std::size_t i = 0; i < dim; ++i) ss += double(xt[i]) * double(xt[i]);
        const float inv = static_cast<float>(1.0 / std::sqrt(ss / double(dim) + double(eps)));
        for (std::size_t i = 0; i < dim; ++i) ot[i] = xt[i] * inv * weight[i];
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

void apply_rope(float* x, std::size_t n_tokens, std::size_t n_heads, std::size_t head_dim, std::size_t rope_dim,
                std::size_t first_position, const double* inv_freq, RopeStyle style) {
    const std::size_t half = rope_dim / 2;
    for (std::size_t t = 0; t < n_tokens; ++t) {
        const double pos = static_cast<double>(first_position + t);
        for (std::size_t i = 0; i < half; ++i) {
            const double angle = pos * inv_freq[i];
            const float c = static_cast<float>(std::cos(angle));
            const float s = static_cast<float>(std::sin(angle));
            for (std::size_t h = 0; h < n_heads; ++h) {
                float* v = x + (t * n_heads + h) * head_dim;
                const std::size_t a = style == RopeStyle::Interleaved ? 2 * i : i;
                const std::size_t b = style == RopeStyle::Interleaved ? 2 * i + 1 : i + half;
                const float x0 = v[a], x1 = v[b];
                v[a] = std::fma(x0, c, -x1 * s);
                v[b] = std::fma(x0, s, x1 * c);
            }
        }
    }
}

void swiglu(float* gate, const float* up, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) {
        const float g = gate[i];
        gate[i] = g / (1.0f + std::exp(-g)) * up[i];
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
