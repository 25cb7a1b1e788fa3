// LayerShape and Growth: the run-time description of a cache layer and of what a full cache does.
#pragma once

#include <cstddef>

namespace kvcache {

/// The shape of one layer's cache: how many kv heads and how large each is.
struct LayerShape {
    std::size_t kv_heads = 0;
    std::size_t head_dim = 0;
    std::size_t token_width() const { return kv_heads * head_dim; }
    friend bool operator==(const LayerShape&, const LayerShape&) = default;
};

/// What happens when an append does not fit.
enum class Growth {
    Fixed,  ///< throw CapacityError: memory is allocated once, at construction
    Grow,   ///< reallocate to at least twice the capacity (amortised O(1) per token; views are invalidated)
};

}  // namespace kvcache
