// attention_reference: the textbook softmax(q·Kᵀ·scale)·V over a cache, in double precision.
// Slow on purpose and easy to check by eye; the fast kernel is tested against it. Quantised rows are decoded
// with the element type's own decode, so both see the same values.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <vector>

#include "kvcache/attention/attention_options.hpp"
#include "kvcache/cache/concept.hpp"

namespace kvcache {

/// q and out are [n_tokens][n_q_heads][head_dim]. Query head h reads kv head h / (n_q_heads / kv_heads).
template <KVCacheReadable C>
void attention_reference(const C& cache, std::size_t layer, std::size_t row, std::span<const float> q,
                         std::size_t n_tokens, std::size_t n_q_heads, std::span<float> out,
                         const AttentionOptions& opts = {}) {
    const auto s = detail::check_attention(cache, layer, row, q, n_tokens, n_q_heads, out, opts);
    const std::size_t d = s.head_dim;
    std::vector<double> scores;
    std::vector<double> acc(d);
    std::vector<float> row_values(d);  // one stored row, decoded (a block type decodes whole blocks)
    for (std::size_t t = 0; t < n_tokens; ++t) {
        std::size_t lo = 0, hi = 0;
        s.visible(opts, t, lo, hi);
        for (std::size_t h = 0; h < n_q_heads; ++h) {
            const float* qh = q.data() + (t * n_q_heads + h) * d;
            const std::size_t kv_head = h / s.group;
            // scores of the visible positions, in order
            scores.assign(hi - lo, 0.0);
            for (const auto& chunk : cache.chunks(layer, row, kv_head)) {
                const std::size_t stride = chunk.key_row_stride(d);
                for (std::size_t i = 0; i < chunk.length; ++i) {
                    const std::size_t pos = chunk.start + i;
                    if (pos < lo || pos >= hi) continue;
                    convert_to_float(chunk.keys + i * stride, row_values.data(), d);
                    double dotp = 0.0;
                    for (std::size_t k = 0; k < d; ++k) dotp += double(qh[k]) * double(row_values[k]);
                    scores[pos - lo] = dotp * s.scale;
                }
            }
            const double max_score = *std::max_element(scores.begin(), scores.end());
            double total = 0.0;
            for (double& sc : scores) {
                sc = std::exp(sc - max_score);
                total += sc;
            }
            std::fill(acc.begin(), acc.end(), 0.0);
            for (const auto& chunk : cache.chunks(layer, row, kv_head)) {
                const std::size_t stride = chunk.value_row_stride(d);
                for (std::size_t i = 0; i < chunk.length; ++i) {
                    const std::size_t pos = chunk.start + i;
                    if (pos < lo || pos >= hi) continue;
                    convert_to_float(chunk.values + i * stride, row_values.data(), d);
                    const double w = scores[pos - lo] / total;
                    for (std::size_t k = 0; k < d; ++k) acc[k] += w * double(row_values[k]);
                }
            }
            float* oh = out.data() + (t * n_q_heads + h) * d;
            for (std::size_t k = 0; k < d; ++k) oh[k] = static_cast<float>(acc[k]);
        }
    }
}

}  // namespace kvcache
