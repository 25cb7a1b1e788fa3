// Explicit conversions between a cache and the layouts other engines use: [batch, heads, seq, dim]
// (PyTorch / Hugging Face past_key_values) and [seq, heads, dim] (one sequence, projection order).
// These copy; nothing converts implicitly.
#pragma once

#include <algorithm>
#include <cstddef>
#include <span>
#include <vector>

#include <fmt/format.h>

#include "kvcache/cache/concept.hpp"
#include "kvcache/cache/kv_chunk.hpp"
#include "kvcache/cache/layer_shape.hpp"
#include "kvcache/detail/format.hpp"
#include "kvcache/element_types.hpp"

namespace kvcache {

namespace detail {
/// Row i of a chunk's keys or values as head_dim floats.
template <class K, class V>
void chunk_row_to_float(const KVChunk<K, V>& chunk, KV kind, std::size_t i, std::size_t head_dim, float* out) {
    if (kind == KV::Keys) convert_to_float(chunk.keys + i * chunk.key_row_stride(head_dim), out, head_dim);
    else convert_to_float(chunk.values + i * chunk.value_row_stride(head_dim), out, head_dim);
}
}  // namespace detail

/// Copies one layer's keys or values into out as [batch][kv_heads][seq][head_dim] floats. Rows shorter
/// than seq are padded with zeros; seq must be at least the longest row.
template <KVCacheReadable C>
void export_bhsd(const C& cache, std::size_t layer, KV kind, std::size_t seq, std::span<float> out) {
    detail::check_index("layer", layer, cache.num_layers());
    const std::size_t batch = cache.batch_size(), heads = cache.num_kv_heads(layer), d = cache.head_dim(layer);
    detail::check_size("export_bhsd output", out.size(), batch * heads * seq * d);
    std::fill(out.begin(), out.end(), 0.0f);
    for (std::size_t b = 0; b < batch; ++b) {
        if (cache.seq_len(layer, b) > seq) {
            throw ShapeError(fmt::format("export_bhsd: row {} holds {} positions, more than seq {}", b,
                                         cache.seq_len(layer, b), seq));
        }
        for (std::size_t h = 0; h < heads; ++h) {
            float* dst = out.data() + (b * heads + h) * seq * d;
            for (const auto& chunk : cache.chunks(layer, b, h)) {
                for (std::size_t i = 0; i < chunk.length; ++i) detail::chunk_row_to_float(chunk, kind, i, d, dst + (chunk.start + i) * d);
            }
        }
    }
}

/// The same, allocating: seq is the longest row's length.
template <KVCacheReadable C>
std::vector<float> export_bhsd(const C& cache, std::size_t layer, KV kind) {
    std::size_t seq = 0;
    for (std::size_t b = 0; b < cache.batch_size(); ++b) seq = std::max<std::size_t>(seq, cache.seq_len(layer, b));
    std::vector<float> out(cache.batch_size() * cache.num_kv_heads(layer) * seq * cache.head_dim(layer));
    export_bhsd(cache, layer, kind, seq, out);
    return out;
}

/// Appends seq positions to every row of one layer from [batch][kv_heads][seq][head_dim] keys and values.
template <KVCacheLike C>
void import_bhsd(C& cache, std::size_t layer, std::span<const float> keys, std::span<const float> values,
                 std::size_t seq) {
    detail::check_index("layer", layer, cache.num_layers());
    const std::size_t batch = cache.batch_size(), heads = cache.num_kv_heads(layer), d = cache.head_dim(layer);
    detail::check_size("import_bhsd keys", keys.size(), batch * heads * seq * d);
    detail::check_size("import_bhsd values", values.size(), batch * heads * seq * d);
    std::vector<float> k(seq * heads * d), v(seq * heads * d);  // one row in projection order
    for (std::size_t b = 0; b < batch; ++b) {
        for (std::size_t h = 0; h < heads; ++h) {
            for (std::size_t t = 0; t < seq; ++t) {
                const std::size_t src = ((b * heads + h) * seq + t) * d, dst = (t * heads + h) * d;
                std::copy_n(keys.data() + src, d, k.data() + dst);
                std::copy_n(values.data() + src, d, v.data() + dst);
            }
        }
        cache.append(layer, b, k, v, seq);
    }
}

/// Copies one row of one layer out as [seq][kv_heads][head_dim] floats (seq = the row's length).
template <KVCacheReadable C>
std::vector<float> export_shd(const C& cache, std::size_t layer, std::size_t row, KV kind) {
    detail::check_index("layer", layer, cache.num_layers());
    detail::check_index("batch row", row, cache.batch_size());
    const std::size_t heads = cache.num_kv_heads(layer), d = cache.head_dim(layer), seq = cache.seq_len(layer, row);
    std::vector<float> out(seq * heads * d);
    for (std::size_t h = 0; h < heads; ++h) {
        for (const auto& chunk : cache.chunks(layer, row, h)) {
            for (std::size_t i = 0; i < chunk.length; ++i) {
                detail::chunk_row_to_float(chunk, kind, i, d, out.data() + ((chunk.start + i) * heads + h) * d);
            }
        }
    }
    return out;
}

/// Appends [seq][kv_heads][head_dim] keys and values to one row: [seq, heads, dim] is append's own
/// input layout, so this is append under the name a reader of other engines looks for.
template <KVCacheLike C>
void import_shd(C& cache, std::size_t layer, std::size_t row, std::span<const float> keys,
                std::span<const float> values, std::size_t seq) {
    cache.append(layer, row, keys, values, seq);
}

/// Appends to several rows at once: keys/values hold each row's new tokens one row after another,
/// tokens_per_row[b] tokens for row b (rows may differ; 0 leaves a row alone).
template <KVCacheLike C>
void append_rows(C& cache, std::size_t layer, std::span<const float> keys, std::span<const float> values,
                 std::span<const std::size_t> tokens_per_row) {
    detail::check_index("layer", layer, cache.num_layers());
    detail::check_size("append_rows tokens_per_row", tokens_per_row.size(), cache.batch_size());
    const std::size_t width = cache.num_kv_heads(layer) * cache.head_dim(layer);
    std::size_t total = 0;
    for (std::size_t n : tokens_per_row) total += n;
    detail::check_size("append_rows keys", keys.size(), total * width);
    detail::check_size("append_rows values", values.size(), total * width);
    if constexpr (BoundedKVCache<C>) {  // capacity first, so a failure writes nothing
        // A growing cache makes room itself; a fixed one must have it for every row before any is written.
        for (std::size_t b = 0; b < tokens_per_row.size(); ++b) {
            if (!can_append(cache, layer, b, tokens_per_row[b])) {
                throw CapacityError(fmt::format("append_rows layer {} row {}: {} + {} tokens exceed capacity {}", layer,
                                                b, cache.seq_len(layer, b), tokens_per_row[b],
                                                static_cast<std::size_t>(cache.capacity())));
            }
        }
    }
    std::size_t offset = 0;
    for (std::size_t b = 0; b < tokens_per_row.size(); ++b) {
        const std::size_t n = tokens_per_row[b] * width;
        if (n) cache.append(layer, b, keys.subspan(offset, n), values.subspan(offset, n), tokens_per_row[b]);
        offset += n;
    }
}

}  // namespace kvcache
