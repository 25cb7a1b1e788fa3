// attention_dense(): attention over plain K/V arrays, for code paths that keep no cache at all.
#pragma once

#include <array>
#include <cstddef>
#include <span>

#include "kvcache/attention/attention.hpp"
#include "kvcache/attention/reference.hpp"
#include "kvcache/cache/kv_chunk.hpp"
#include "kvcache/detail/format.hpp"

namespace kvcache {

/// Read-only view of K and V given as [n_positions][kv_heads][head_dim] floats — the layout a projection
/// produces — seen through the cache contract (one layer, one row). Nothing is copied.
class DenseKVView {
public:
    using element_type = float;

    DenseKVView(std::span<const float> keys, std::span<const float> values, std::size_t n_positions,
                std::size_t kv_heads, std::size_t head_dim)
        : keys_(keys), values_(values), n_(n_positions), kv_heads_(kv_heads), head_dim_(head_dim) {
        if (kv_heads == 0 || head_dim == 0) {
            throw ConfigError(fmt::format("DenseKVView needs kv_heads >= 1 and head_dim >= 1, got {} and {}",
                                          kv_heads, head_dim));
        }
        detail::check_size("DenseKVView keys", keys.size(), n_positions * kv_heads * head_dim);
        detail::check_size("DenseKVView values", values.size(), n_positions * kv_heads * head_dim);
    }

    std::size_t num_layers() const { return 1; }
    std::size_t batch_size() const { return 1; }
    std::size_t num_kv_heads(std::size_t = 0) const { return kv_heads_; }
    std::size_t head_dim(std::size_t = 0) const { return head_dim_; }
    std::size_t seq_len(std::size_t = 0, std::size_t = 0) const { return n_; }
    std::array<KVChunk<float>, 1> chunks(std::size_t, std::size_t, std::size_t head) const {
        detail::check_index("kv head", head, kv_heads_);
        return {KVChunk<float>{keys_.data() + head * head_dim_, values_.data() + head * head_dim_, 0, n_,
                               kv_heads_ * head_dim_}};
    }

private:
    std::span<const float> keys_, values_;
    std::size_t n_, kv_heads_, head_dim_;
};

/// Fast attention of n_tokens queries over n_positions keys/values held in plain arrays
/// ([n][kv_heads][head_dim] floats). With opts.causal the queries are the last n_tokens positions.
inline void attention_dense(std::span<const float> q, std::size_t n_tokens, std::size_t n_q_heads,
                            std::span<const float> keys, std::span<const float> values, std::size_t n_positions,
                            std::size_t kv_heads, std::size_t head_dim, std::span<float> out,
                            const AttentionOptions& opts = {}) {
    attention(DenseKVView(keys, values, n_positions, kv_heads, head_dim), 0, 0, q, n_tokens, n_q_heads, out, opts);
}

}  // namespace kvcache
