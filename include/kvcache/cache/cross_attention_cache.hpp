// CrossAttentionCache<T>: encoder K/V written once per source and read at every decoder step; and the
// self + cross pair an encoder-decoder model keeps per request.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include <fmt/format.h>

#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/error.hpp"

namespace kvcache {

/// Cross-attention keys and values, one set per decoder layer and batch row, computed once from the
/// encoder output. Writing twice to the same (layer, row) without reset() is an error: it would mean the
/// projections ran again, which is exactly the work this cache exists to avoid.
template <StorageElement T = float>
class CrossAttentionCache {
public:
    using element_type = T;

    CrossAttentionCache(std::vector<LayerShape> layers, std::size_t batch, std::size_t max_source_len)
        : storage_(std::move(layers), batch, max_source_len, Growth::Fixed),
          written_(storage_.num_layers() * batch, false) {}
    /// Every layer the same shape.
    CrossAttentionCache(const CacheShape& shape, std::size_t batch, std::size_t max_source_len)
        : CrossAttentionCache(shape.per_layer(), batch, max_source_len) {}

    CrossAttentionCache copy() const {
        CrossAttentionCache out(storage_.copy());
        out.written_ = written_;
        return out;
    }

    /// Stores the source's K and V for (layer, row): [n_source][kv_heads * head_dim] floats each.
    void write(std::size_t layer, std::size_t row, std::span<const float> keys, std::span<const float> values,
               std::size_t n_source) {
        if (is_written(layer, row)) {
            throw Error(fmt::format("CrossAttentionCache layer {} row {} is already written; reset() it first",
                                    layer, row));
        }
        storage_.append(layer, row, keys, values, n_source);
        written_[layer * storage_.batch_size() + row] = true;
    }
    bool is_written(std::size_t layer, std::size_t row) const {
        storage_.seq_len(layer, row);  // validates the indices
        return written_[layer * storage_.batch_size() + row];
    }
    /// True once every layer of the row holds its source.
    bool is_complete(std::size_t row) const {
        for (std::size_t l = 0; l < num_layers(); ++l) {
            if (!is_written(l, row)) return false;
        }
        return true;
    }
    /// Forgets every source (for a new request); memory stays allocated.
    void reset() {
        storage_.clear();
        std::fill(written_.begin(), written_.end(), false);
    }

    std::size_t num_layers() const { return storage_.num_layers(); }
    std::size_t batch_size() const { return storage_.batch_size(); }
    std::size_t num_kv_heads(std::size_t layer) const { return storage_.num_kv_heads(layer); }
    std::size_t head_dim(std::size_t layer) const { return storage_.head_dim(layer); }
    std::size_t capacity() const { return storage_.capacity(); }
    std::size_t seq_len(std::size_t layer, std::size_t row) const { return storage_.seq_len(layer, row); }
    auto chunks(std::size_t layer, std::size_t row, std::size_t head) const { return storage_.chunks(layer, row, head); }
    std::span<const T> keys(std::size_t layer, std::size_t row, std::size_t head) const {
        return storage_.keys(layer, row, head);
    }
    std::span<const T> values(std::size_t layer, std::size_t row, std::size_t head) const {
        return storage_.values(layer, row, head);
    }
    std::size_t bytes_used() const { return storage_.bytes_used(); }
    std::size_t bytes_allocated() const { return storage_.bytes_allocated(); }

private:
    explicit CrossAttentionCache(MultiLayerKVCache<T> storage)
        : storage_(std::move(storage)), written_(storage_.num_layers() * storage_.batch_size(), false) {}

    MultiLayerKVCache<T> storage_;
    std::vector<bool> written_;  // (layer, row)
};

/// What an encoder-decoder request keeps: decoder self-attention K/V that grow by one position per
/// generated token, and cross-attention K/V of the source, written once.
template <StorageElement T = float>
struct EncoderDecoderCache {
    MultiLayerKVCache<T> self;
    CrossAttentionCache<T> cross;

    EncoderDecoderCache copy() const { return {self.copy(), cross.copy()}; }
    std::size_t bytes_used() const { return self.bytes_used() + cross.bytes_used(); }
    std::size_t bytes_allocated() const { return self.bytes_allocated() + cross.bytes_allocated(); }
};

}  // namespace kvcache
