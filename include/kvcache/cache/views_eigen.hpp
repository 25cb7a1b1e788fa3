// Zero-copy Eigen maps of one head of a contiguous float cache (read-only; valid until it reallocates).
// Opt-in: not in kvcache.hpp; link kvcache::eigen (kvcache::kvcache + Eigen3::Eigen) to use it.
#pragma once

#include <cstddef>
#include <type_traits>

#include <Eigen/Core>

#include "kvcache/cache/concept.hpp"
#include "kvcache/cache/layout.hpp"
#include "kvcache/detail/format.hpp"

namespace kvcache {

/// Row-major matrix map type of one head: seq_len rows of head_dim floats.
using HeadMap = Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;

/// Keys or values of one head of (layer, row) as an Eigen matrix map [seq_len x head_dim] over the cache's
/// own memory. Float caches only: Eigen has no arithmetic for kvcache's 16-bit storage types (convert with
/// export_shd, or use xtensor_view, which maps any element type).
template <ContiguousKVCache C>
HeadMap eigen_view(const C& cache, std::size_t layer, std::size_t row, std::size_t head, KV kind) {
    static_assert(std::is_same_v<typename C::element_type, float>,
                  "eigen_view maps float caches only; use xtensor_view or export_shd for fp16/bf16");
    const std::size_t d = cache.head_dim(layer), seq = cache.seq_len(layer, row);
    detail::check_index("kv head", head, cache.num_kv_heads(layer));
    const float* base = kind == KV::Keys ? cache.key_data(layer, row) : cache.value_data(layer, row);
    return HeadMap(base + head * cache.capacity() * d, static_cast<Eigen::Index>(seq), static_cast<Eigen::Index>(d));
}

}  // namespace kvcache
