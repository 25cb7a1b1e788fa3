// KnowledgeCache: the KV cache of a knowledge prompt, computed once (or loaded from a cache file) and reset
// to the end of the knowledge before each question, so the knowledge is never recomputed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/persist/cache_file.hpp"

namespace kvcache {

class Decoder;

/// "xxh3-64:<hex>" of a knowledge's token ids.
std::string knowledge_digest(std::span<const std::int32_t> knowledge_tokens);

/// What a knowledge cache file must match: the model (its fingerprint) and the knowledge (its digest), and
/// the float cache configuration of the decoder.
CacheFingerprint knowledge_fingerprint(const Decoder& decoder, std::string_view model_fingerprint,
                                       std::span<const std::int32_t> knowledge_tokens);

class KnowledgeCache {
public:
    /// Runs the knowledge through the decoder, `chunk` tokens per forward pass (the result does not depend on
    /// it), into a cache of `capacity` positions, with `threads` threads (0: the decoder's default).
    /// CapacityError if the knowledge leaves no room in it, ConfigError for no tokens or chunk 0.
    static KnowledgeCache prefill(Decoder& decoder, std::vector<std::int32_t> knowledge_tokens, std::size_t capacity,
                                  std::size_t chunk = 512, int threads = 0);
    /// Loads a file saved by save() into a cache of `capacity` positions. FingerprintMismatch if the file is for
    /// another model, another knowledge or another cache configuration (or its token ids differ from
    /// knowledge_tokens); FormatError if damaged; CapacityError if it does not fit.
    static KnowledgeCache load(const std::filesystem::path& path, const Decoder& decoder,
                               std::vector<std::int32_t> knowledge_tokens, std::size_t capacity,
                               const CacheFingerprint& fingerprint);

    /// Writes the knowledge positions to a cache file (resetting first).
    void save(const std::filesystem::path& path, const CacheFingerprint& fingerprint, SaveOptions options = {});

    /// Drops everything after the knowledge (a metadata operation: the knowledge's K/V stay in place).
    void reset() { cache_.truncate(tokens_.size()); }

    MultiLayerKVCache<float>& cache() { return cache_; }
    const MultiLayerKVCache<float>& cache() const { return cache_; }
    std::span<const std::int32_t> tokens() const { return tokens_; }
    std::size_t size() const { return tokens_.size(); }
    std::size_t capacity() const { return cache_.capacity(); }
    /// Seconds the prefill or the load took.
    double build_seconds() const { return build_seconds_; }
    bool loaded_from_file() const { return loaded_; }

private:
    KnowledgeCache(MultiLayerKVCache<float> cache, std::vector<std::int32_t> tokens)
        : cache_(std::move(cache)), tokens_(std::move(tokens)) {}

    MultiLayerKVCache<float> cache_;
    std::vector<std::int32_t> tokens_;
    double build_seconds_ = 0;
    bool loaded_ = false;
};

}  // namespace kvcache
