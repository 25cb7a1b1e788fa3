// KVChunk: a run of consecutive positions of one kv head, the unit attention reads a cache in.
#pragma once

#include <cstddef>

#include "kvcache/element_types.hpp"

namespace kvcache {

/// Keys (stored as K) and values (stored as V) of positions [start, start + length) of one kv head. Row i
/// (position start + i) begins i * stride values after `keys` (and after `values`); stride == 0 means rows are
/// packed, i.e. the stride is the head size. Strides count values, not storage objects: a row of a block type
/// (q8_0: 32 values per object) is key_row_stride objects long. Contiguous caches give one chunk per head; a
/// paged cache gives one per block.
template <class K, class V = K>
struct KVChunk {
    const K* keys = nullptr;
    const V* values = nullptr;
    std::size_t start = 0;
    std::size_t length = 0;
    std::size_t stride = 0;

    /// Storage objects from one key row to the next.
    std::size_t key_row_stride(std::size_t head_dim) const { return storage_units<K>(stride ? stride : head_dim); }
    /// Storage objects from one value row to the next.
    std::size_t value_row_stride(std::size_t head_dim) const { return storage_units<V>(stride ? stride : head_dim); }
    /// The row stride of a chunk whose keys and values have the same type.
    std::size_t row_stride(std::size_t head_dim) const
        requires std::same_as<K, V>
    {
        return key_row_stride(head_dim);
    }
};

}  // namespace kvcache
