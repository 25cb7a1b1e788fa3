// ReferenceAttentionLayer: a complete multi-head (GQA) self-attention layer with random weights, built on
// the library's attention — the model for users' own layers and the subject of the test kit's self-test.
#pragma once

#include <cstddef>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "kvcache/attention/attention.hpp"
#include "kvcache/attention/dense.hpp"
#include "kvcache/cache/concept.hpp"
#include "kvcache/detail/format.hpp"
#include "kvcache/testing/random.hpp"

namespace kvcache::testing {

/// y = Wo · attention(Wq x, Wk x, Wv x): model_dim = q_heads * head_dim, kv heads shared GQA-style.
/// No positional encoding, so causality alone distinguishes positions. Uses layer `layer_index` of the cache.
class ReferenceAttentionLayer {
public:
    ReferenceAttentionLayer(std::size_t q_heads, std::size_t kv_heads, std::size_t head_dim, std::uint64_t seed,
                            AttentionOptions options = {}, std::size_t layer_index = 0)
        : q_heads_(q_heads), kv_heads_(kv_heads), head_dim_(head_dim), layer_(layer_index), options_(options) {
        const std::size_t dim = model_dim(), kv = kv_heads * head_dim;
        const float s = 1.0f / std::sqrt(static_cast<float>(dim));
        wq_ = random_normal(dim * dim, seed, s);
        wk_ = random_normal(kv * dim, seed + 1, s);
        wv_ = random_normal(kv * dim, seed + 2, s);
        wo_ = random_normal(dim * dim, seed + 3, s);
    }

    std::size_t model_dim() const { return q_heads_ * head_dim_; }
    std::size_t kv_width() const { return kv_heads_ * head_dim_; }

    /// All n tokens at once, no cache: K/V of the whole sequence are computed and attended directly.
    void forward(std::span<const float> x, std::size_t n, std::span<float> out) const {
        std::vector<float> q, k, v, attended(n * model_dim());
        project(x, n, q, k, v);
        attention_dense(q, n, q_heads_, k, v, n, kv_heads_, head_dim_, attended, options_);
        output(attended, n, out);
    }

    /// n new tokens: append their K/V, then attend over everything the cache holds.
    template <KVCacheLike Cache>
    void forward_cached(std::span<const float> x, std::size_t n, Cache& cache, std::span<float> out) const {
        std::vector<float> q, k, v, attended(n * model_dim());
        project(x, n, q, k, v);
        cache.append(layer_, 0, k, v, n);
        attention(cache, layer_, 0, q, n, q_heads_, attended, options_);
        output(attended, n, out);
    }

    /// out[t][r] = Σ_c w[r][c] x[t][c] for a [rows x cols] weight.
    static void matmul(const std::vector<float>& w, std::span<const float> x, std::size_t n, std::size_t rows,
                       std::size_t cols, std::span<float> out) {
        detail::check_size("matmul input", x.size(), n * cols);
        detail::check_size("matmul output", out.size(), n * rows);
        for (std::size_t t = 0; t < n; ++t) {
            for (std::size_t r = 0; r < rows; ++r) {
                float acc = 0.0f;
                for (std::size_t c = 0; c < cols; ++c) acc += w[r * cols + c] * x[t * cols + c];
                out[t * rows + r] = acc;
            }
        }
    }

    /// The output projection of attended [n][model_dim] values.
    void output(std::span<const float> attended, std::size_t n, std::span<float> out) const {
        matmul(wo_, attended, n, model_dim(), model_dim(), out);
    }

    /// The q, k, v projections of x [n][model_dim]: q [n][q_heads*head_dim], k and v [n][kv_heads*head_dim].
    void project(std::span<const float> x, std::size_t n, std::vector<float>& q, std::vector<float>& k,
                 std::vector<float>& v) const {
        q.resize(n * model_dim());
        k.resize(n * kv_width());
        v.resize(n * kv_width());
        matmul(wq_, x, n, model_dim(), model_dim(), q);
        matmul(wk_, x, n, kv_width(), model_dim(), k);
        matmul(wv_, x, n, kv_width(), model_dim(), v);
    }

private:
    std::size_t q_heads_, kv_heads_, head_dim_, layer_;
    AttentionOptions options_;
    std::vector<float> wq_, wk_, wv_, wo_;  // [out][in] row-major
};

}  // namespace kvcache::testing
