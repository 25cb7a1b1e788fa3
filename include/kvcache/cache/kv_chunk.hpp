// KVChunk: a run of consecutive positions of one kv head, the unit attention reads a cache in.
#pragma once

#include <cstddef>

namespace kvcache {

/// Keys and values of positions [start, start + length) of one kv head. Row i (position start + i)
/// begins at keys + i * stride (and values + i * stride); stride == 0 means rows are packed, i.e. the
/// stride is the head size. Contiguous caches give one chunk per head; a paged cache gives one per block.
template <class T>
struct KVChunk {
    const T* keys = nullptr;
    const T* values = nullptr;
    std::size_t start = 0;
    std::size_t length = 0;
    std::size_t stride = 0;

    std::size_t row_stride(std::size_t head_dim) const { return stride ? stride : head_dim; }
};

}  // namespace kvcache
