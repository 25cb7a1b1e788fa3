// Choosing the reference model's KV cache at run time: element types for keys and values (f32, f16, bf16,
// q8_0, q4_0, q4_0h), and what a full cache does (an error, a context shift, or attention sinks + a rolling window).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include <fmt/format.h>

#include "kvcache/element_types.hpp"
#include "kvcache/error.hpp"

namespace kvcache {

/// The storage types a cache can be chosen with at run time.
enum class CacheElement { F32, F16, BF16, Q8_0, Q4_0, Q4_0H };

/// "f32", "f16", "bf16", "q8_0", "q4_0" or "q4_0h" (also "fp32", "fp16"); ConfigError naming the accepted names otherwise.
CacheElement parse_cache_element(std::string_view name);
std::string_view cache_element_name(CacheElement element);
/// Bytes one value takes (4, 2, 2, 34/32, 18/32, 18/32).
double cache_element_bytes_per_value(CacheElement element);

/// The cache of a generation.
struct CacheOptions {
    CacheElement keys = CacheElement::F32;
    CacheElement values = CacheElement::F32;
    /// When the cache (GenerateOptions::cache_capacity positions) is full: keep the first n_keep positions, drop
    /// the next n_discard (0: half of those after n_keep, as llama.cpp does) and re-rotate the rest, then go on.
    bool context_shift = false;
    std::size_t n_keep = 0;
    std::size_t n_discard = 0;
    /// window > 0: a SinkWindowCache keeping the first `sinks` and the last `window` positions (StreamingLLM);
    /// the cache then holds sinks + window positions whatever cache_capacity says.
    std::size_t sinks = 0;
    std::size_t window = 0;
    /// Positions a SinkWindowCache drops at once when full (must not exceed the window).
    std::size_t evict_block = 32;

    /// f32 keys and values and no shifting: the plain cache generate_with_cache always had.
    bool is_plain() const {
        return keys == CacheElement::F32 && values == CacheElement::F32 && !context_shift && window == 0 && sinks == 0;
    }
};

/// ConfigError for options that contradict each other or the capacity: a context shift together with a window,
/// sinks without a window, n_keep >= capacity, n_keep + n_discard > capacity.
void validate(const CacheOptions& options, std::size_t capacity);

/// Calls f(std::type_identity<K>{}, std::type_identity<V>{}) with the storage types that `keys` and `values`
/// name and returns its result. Supported: the same type for both, keys f16 or q8_0 with values q8_0 or q4_0,
/// and keys q4_0h with values q4_0; other mixes are a ConfigError (each pair is one more instantiation of the whole decoder).
template <class F>
decltype(auto) with_cache_elements(CacheElement keys, CacheElement values, F&& f) {
    using E = CacheElement;
    auto call = [&]<class K, class V>() -> decltype(auto) { return f(std::type_identity<K>{}, std::type_identity<V>{}); };
    if (keys == values) {
        switch (keys) {
            case E::F32: return call.template operator()<float, float>();
            case E::F16: return call.template operator()<fp16, fp16>();
            case E::BF16: return call.template operator()<bf16, bf16>();
            case E::Q8_0: return call.template operator()<q8_0, q8_0>();
            case E::Q4_0: return call.template operator()<q4_0, q4_0>();
            case E::Q4_0H: return call.template operator()<q4_0h, q4_0h>();
        }
    }
    if (keys == E::F16 && values == E::Q8_0) return call.template operator()<fp16, q8_0>();
    if (keys == E::F16 && values == E::Q4_0) return call.template operator()<fp16, q4_0>();
    if (keys == E::Q8_0 && values == E::Q4_0) return call.template operator()<q8_0, q4_0>();
    if (keys == E::Q4_0H && values == E::Q4_0) return call.template operator()<q4_0h, q4_0>();
    throw ConfigError(fmt::format("cache: keys {} with values {} is not a supported combination (use one type for "
                                  "both, keys f16/q8_0 with values q8_0/q4_0, or keys q4_0h with values q4_0)",
                                  cache_element_name(keys), cache_element_name(values)));
}

}  // namespace kvcache
