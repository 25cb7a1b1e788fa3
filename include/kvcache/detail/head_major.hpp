// Copying tokens between the projection layout [token][kv_head][head_dim] and the cache's head-major
// layout [kv_head][position][head_dim]; shared by every contiguous cache type.
//
// Offsets into a cache block count storage objects of T: a row of head_dim values is storage_units<T>(head_dim)
// objects (head_dim for float/fp16/bf16, head_dim / 32 for q8_0 and q4_0). Offsets into float arrays count values.
#pragma once

#include <cstddef>
#include <cstring>

#include "kvcache/element_types.hpp"

namespace kvcache::detail {

/// Writes n_tokens positions starting at `at` into a head-major block whose heads are `capacity`
/// positions apart, converting floats to the storage type.
template <StorageElement T>
inline void scatter_tokens(const float* src, std::size_t n_tokens, std::size_t kv_heads, std::size_t head_dim,
                           T* block, std::size_t capacity, std::size_t at) {
    const std::size_t row = storage_units<T>(head_dim);
    for (std::size_t t = 0; t < n_tokens; ++t) {
        for (std::size_t h = 0; h < kv_heads; ++h) {
            convert_from_float(src + (t * kv_heads + h) * head_dim, block + (h * capacity + at + t) * row, head_dim);
        }
    }
}

/// Like scatter_tokens, but from rows already in the storage type (a cache file's payload): a plain copy of
/// each head's row, no conversion. src is [n_tokens][kv_heads][row] storage objects.
template <StorageElement T>
inline void scatter_elements(const T* src, std::size_t n_tokens, std::size_t kv_heads, std::size_t head_dim, T* block,
                             std::size_t capacity, std::size_t at) {
    const std::size_t row = storage_units<T>(head_dim);
    const std::size_t row_bytes = row * sizeof(T);
    for (std::size_t t = 0; t < n_tokens; ++t) {
        for (std::size_t h = 0; h < kv_heads; ++h) {
            auto* to = reinterpret_cast<unsigned char*>(block + (h * capacity + at + t) * row);
            const auto* from = reinterpret_cast<const unsigned char*>(src + (t * kv_heads + h) * row);
            // Fixed 32-byte pieces compile to vector moves; a memcpy call per short row costs ~20% (loading a
            // cache file is this loop).
            std::size_t n = row_bytes;
            for (; n >= 32; n -= 32, to += 32, from += 32) std::memcpy(to, from, 32);
            if (n) std::memcpy(to, from, n);
        }
    }
}

/// Reads n_tokens positions starting at `at` out of a head-major block into [token][kv_head][head_dim] floats.
template <StorageElement T>
inline void gather_tokens(const T* block, std::size_t capacity, std::size_t at, std::size_t n_tokens,
                          std::size_t kv_heads, std::size_t head_dim, float* dst) {
    const std::size_t row = storage_units<T>(head_dim);
    for (std::size_t t = 0; t < n_tokens; ++t) {
        for (std::size_t h = 0; h < kv_heads; ++h) {
            convert_to_float(block + (h * capacity + at + t) * row, dst + (t * kv_heads + h) * head_dim, head_dim);
        }
    }
}

/// Copies the first `length` positions of each head from one head-major block to another of a different
/// capacity (used when a growing cache reallocates, and by explicit copies).
template <StorageElement T>
inline void copy_heads(const T* src, std::size_t src_capacity, T* dst, std::size_t dst_capacity,
                       std::size_t kv_heads, std::size_t head_dim, std::size_t length) {
    const std::size_t row = storage_units<T>(head_dim);
    for (std::size_t h = 0; h < kv_heads; ++h) {
        if (length) std::memcpy(dst + h * dst_capacity * row, src + h * src_capacity * row, length * row * sizeof(T));
    }
}

/// Moves positions [from, from + count) of every head of a head-major block down to `to` (< from): what a
/// context shift does to the positions after the discarded ones. Rows move as stored, bit for bit.
template <StorageElement T>
inline void move_positions(T* block, std::size_t capacity, std::size_t kv_heads, std::size_t head_dim,
                           std::size_t from, std::size_t to, std::size_t count) {
    const std::size_t row = storage_units<T>(head_dim);
    for (std::size_t h = 0; h < kv_heads; ++h) {
        if (count) std::memmove(block + (h * capacity + to) * row, block + (h * capacity + from) * row, count * row * sizeof(T));
    }
}

}  // namespace kvcache::detail
