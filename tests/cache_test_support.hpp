// Helpers shared by the cache tests: a plain model of what a (layer, row) should hold, and checks that
// read a cache through every accessor (keys/values spans, key_data/value_data, chunks) against it.
#pragma once

#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "kvcache/cache/concept.hpp"
#include "kvcache/element_types.hpp"
#include "kvcache/testing/random.hpp"

namespace cache_test {

/// What storing x as T and reading it back gives (the cache rounds on append, never later).
template <kvcache::StorageElement T>
std::vector<float> stored(const std::vector<float>& x) {
    std::vector<float> out(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) out[i] = kvcache::to_float(kvcache::from_float<T>(x[i]));
    return out;
}

/// The tokens appended to one (layer, row), in the projection layout [token][head][dim], as floats
/// after rounding to T: the expected contents.
struct RowModel {
    std::vector<float> keys, values;
    std::size_t width = 0;  // heads * dim
    std::size_t length() const { return width ? keys.size() / width : 0; }
    void truncate(std::size_t n) {
        if (n < length()) {
            keys.resize(n * width);
            values.resize(n * width);
        }
    }
};

/// Appends n random tokens to (layer, row) of cache and records them in model.
template <class Cache>
void append_random(Cache& cache, RowModel& model, std::size_t layer, std::size_t row, std::size_t n,
                   std::uint64_t seed) {
    using T = typename Cache::element_type;
    const std::size_t width = cache.num_kv_heads(layer) * cache.head_dim(layer);
    const auto k = kvcache::testing::random_uniform(n * width, seed, -4.0f, 4.0f);
    const auto v = kvcache::testing::random_uniform(n * width, seed + 1000003, -4.0f, 4.0f);
    cache.append(layer, row, k, v, n);
    model.width = width;
    const auto ks = stored<T>(k), vs = stored<T>(v);
    model.keys.insert(model.keys.end(), ks.begin(), ks.end());
    model.values.insert(model.values.end(), vs.begin(), vs.end());
}

/// Counts elements where the cache disagrees with the model, reading (layer, row) through keys()/values(),
/// key_data()/value_data() with the documented [head][capacity][dim] block layout, and chunks().
template <class Cache>
std::size_t mismatches(const Cache& cache, std::size_t layer, std::size_t row, const RowModel& model) {
    const std::size_t heads = cache.num_kv_heads(layer), d = cache.head_dim(layer);
    const std::size_t n = model.length();
    std::size_t bad = 0;
    if (cache.seq_len(layer, row) != n) return n + 1000000;
    for (std::size_t h = 0; h < heads; ++h) {
        const auto ks = cache.keys(layer, row, h), vs = cache.values(layer, row, h);
        if (ks.size() != n * d || vs.size() != n * d) return n + 2000000;
        const auto chunks = cache.chunks(layer, row, h);
        std::size_t chunk_count = 0;
        for (const auto& chunk : chunks) {
            ++chunk_count;
            bad += chunk.keys != ks.data() || chunk.values != vs.data() || chunk.start != 0 || chunk.length != n ||
                   chunk.row_stride(d) != d;
        }
        bad += chunk_count != 1;
        for (std::size_t p = 0; p < n; ++p) {
            for (std::size_t i = 0; i < d; ++i) {
                const float ek = model.keys[(p * heads + h) * d + i], ev = model.values[(p * heads + h) * d + i];
                const std::size_t at = (h * cache.capacity() + p) * d + i;
                bad += kvcache::to_float(ks[p * d + i]) != ek;
                bad += kvcache::to_float(vs[p * d + i]) != ev;
                bad += kvcache::to_float(cache.key_data(layer, row)[at]) != ek;
                bad += kvcache::to_float(cache.value_data(layer, row)[at]) != ev;
            }
        }
    }
    return bad;
}

/// A byte copy of (layer, row)'s whole K and V blocks (all capacity, not just the length), to prove that
/// a failed call wrote nothing anywhere.
template <class Cache>
std::vector<unsigned char> block_bytes(const Cache& cache, std::size_t layer, std::size_t row) {
    using T = typename Cache::element_type;
    const std::size_t bytes = cache.num_kv_heads(layer) * cache.capacity() * cache.head_dim(layer) * sizeof(T);
    std::vector<unsigned char> out(2 * bytes);
    std::memcpy(out.data(), cache.key_data(layer, row), bytes);
    std::memcpy(out.data() + bytes, cache.value_data(layer, row), bytes);
    return out;
}

}  // namespace cache_test
