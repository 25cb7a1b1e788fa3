// The per-token operations of the reference models besides the matrix products: norms, RoPE, activations.
//
// Each works on [n_tokens][...] rows and treats every token on its own, in one fixed order, so a token's
// result never depends on how many tokens share the call (see matmul.hpp for why that matters).
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvcache {

/// The feed-forward activation of an nn.Transformer layer.
enum class Activation {
    ReLU,  ///< max(x, 0)
    GELU,  ///< x * Phi(x) in the exact erf form (PyTorch's "gelu", not the tanh approximation)
};

/// How RoPE pairs up the dimensions of a head. Interleaved: (x[2i], x[2i+1]) — llama.cpp's "NORM", what
/// llama/mistral GGUFs expect (the converter permutes Q/K for it). Neox: (x[i], x[i + rope_dim/2]) — qwen2.
enum class RopeStyle { Interleaved, Neox };

/// out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight, for t < n_tokens; rows of `dim`. out may alias x.
void rms_norm(const float* x, const float* weight, std::size_t n_tokens, std::size_t dim, float eps, float* out);

/// out[t] = (x[t] - mean(x[t])) / sqrt(var(x[t]) + eps) * weight + bias, for t < n_tokens; rows of `dim`.
/// The variance is the biased one, as nn.LayerNorm's. out may alias x.
void layer_norm(const float* x, const float* weight, const float* bias, std::size_t n_tokens, std::size_t dim,
                float eps, float* out);

/// cos and sin of RoPE's angles (position × inv_freq[i], in double, then rounded to float) for n_tokens
/// positions from first_position, into [n_tokens][rope_dim / 2] each: computed once per forward and used by
/// every layer's apply_rope.
void rope_table(std::size_t n_tokens, std::size_t rope_dim, std::size_t first_position, const double* inv_freq,
                float* cos_out, float* sin_out);

/// apply_rope with the angles' cos and sin from rope_table (the same bits as the overload below).
void apply_rope(float* x, std::size_t n_tokens, std::size_t n_heads, std::size_t head_dim, std::size_t rope_dim,
                const float* cos, const float* sin, RopeStyle style);

/// Rotates the first rope_dim dimensions of every head of x ([n_tokens][n_heads][head_dim]) in place;
/// token t is at position first_position + t. inv_freq has rope_dim / 2 entries: base^(-2i / rope_dim).
void apply_rope(float* x, std::size_t n_tokens, std::size_t n_heads, std::size_t head_dim, std::size_t rope_dim,
                std::size_t first_position, const double* inv_freq, RopeStyle style);

/// gate[i] = silu(gate[i]) * up[i] for i < count.
void swiglu(float* gate, const float* up, std::size_t count);

/// x[i] = activation(x[i]) for i < count.
void activate(Activation activation, float* x, std::size_t count);

/// acc[i] += x[i] for i < count.
void add_into(float* acc, const float* x, std::size_t count);

/// acc[t][i] += bias[i] for each of n_tokens rows of width dim.
void add_bias(float* acc, const float* bias, std::size_t n_tokens, std::size_t dim);

}  // namespace kvcache
