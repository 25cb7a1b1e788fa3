// Generation over a cache chosen with CacheOptions: quantised keys/values, and a cache that never fills up
// (context shift, or attention sinks + a rolling window). generate_with_cache routes here for such options.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "kvcache/model/cache_options.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/model/generate.hpp"

namespace kvcache {

class Tokenizer;

/// generate_with_cache with options.cache applied. The cache holds options.cache_capacity positions (default
/// prompt + max_new_tokens), or sinks + window for a sink cache. Without a context shift or window, a capacity
/// below prompt + max_new_tokens is a CapacityError (as generate_with_cache); with one, generation goes on past
/// it, the prompt fed in pieces that fit. ConfigError for contradicting options (validate) or an unsupported mix
/// of key and value types.
GenerationResult generate_with_cache_options(Decoder& model, const Tokenizer& tokenizer,
                                             std::span<const std::int32_t> prompt_tokens,
                                             const GenerateOptions& options);

/// Bytes of the cache generate_with_cache_options allocates for this prompt length and these options.
std::size_t cache_options_bytes(const Decoder& model, std::size_t prompt_tokens, const GenerateOptions& options);

}  // namespace kvcache
