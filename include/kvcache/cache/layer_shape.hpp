// LayerShape, CacheShape and Growth: the run-time description of a cache layer, of a cache whose layers are
// alike, and of what a full cache does.
#pragma once

#include <cstddef>
#include <vector>

namespace kvcache {

/// The shape of one layer's cache: how many kv heads and how large each is.
struct LayerShape {
    std::size_t kv_heads = 0;
    std::size_t head_dim = 0;
    std::size_t token_width() const { return kv_heads * head_dim; }
    friend bool operator==(const LayerShape&, const LayerShape&) = default;
};

/// The shape of a cache whose layers are all alike — named fields rather than three adjacent sizes, so that
/// `MultiLayerKVCache<float>(CacheShape{.layers = 30, .kv_heads = 3, .head_dim = 64}, batch, capacity)` cannot
/// swap a head count for a layer count unnoticed.
struct CacheShape {
    std::size_t layers = 0;
    std::size_t kv_heads = 0;
    std::size_t head_dim = 0;
    /// One LayerShape per layer: what the per-layer constructors take.
    std::vector<LayerShape> per_layer() const {
        return std::vector<LayerShape>(layers, LayerShape{kv_heads, head_dim});
    }
    friend bool operator==(const CacheShape&, const CacheShape&) = default;
};

/// What happens when an append does not fit.
enum class Growth {
    Fixed,  ///< throw CapacityError: memory is allocated once, at construction
    Grow,   ///< reallocate to at least twice the capacity (amortised O(1) per token; views are invalidated)
};

}  // namespace kvcache
