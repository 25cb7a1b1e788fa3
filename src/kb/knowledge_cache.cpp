// The knowledge cache: prefill, save, load.
#include "kvcache/kb/knowledge_cache.hpp"

#include <algorithm>
#include <chrono>

#include <fmt/format.h>

#include "kvcache/model/decoder.hpp"

namespace kvcache {

namespace {

using Clock = std::chrono::steady_clock;

void check_room(std::size_t tokens, std::size_t capacity) {
    if (tokens == 0) throw ConfigError("KnowledgeCache: the knowledge has no tokens");
    if (tokens >= capacity) {
        throw CapacityError(fmt::format("KnowledgeCache: knowledge of {} tokens leaves no room in a cache of {} positions",
                                        tokens, capacity));
    }
}

}  // namespace

std::string knowledge_digest(std::span<const std::int32_t> knowledge_tokens) {
    return fingerprint_digest(std::span<const std::byte>(reinterpret_cast<const std::byte*>(knowledge_tokens.data()),
                                                         knowledge_tokens.size_bytes()));
}

CacheFingerprint knowledge_fingerprint(const Decoder& decoder, std::string_view model_fingerprint,
                                       std::span<const std::int32_t> knowledge_tokens) {
    const MultiLayerKVCache<float> probe = decoder.make_cache(1);
    return make_fingerprint(fmt::format("{} knowledge={} ({} tokens)", model_fingerprint,
                                        knowledge_digest(knowledge_tokens), knowledge_tokens.size()),
                            probe);
}

KnowledgeCache KnowledgeCache::prefill(Decoder& decoder, std::vector<std::int32_t> knowledge_tokens,
                                       std::size_t capacity, std::size_t chunk, int threads) {
    check_room(knowledge_tokens.size(), capacity);
    if (chunk == 0) throw ConfigError("KnowledgeCache::prefill: chunk is 0 tokens");
    const auto t0 = Clock::now();
    KnowledgeCache kc(decoder.make_cache(capacity), std::move(knowledge_tokens));
    std::vector<float> logits(decoder.config().vocab_size);
    const std::span<const std::int32_t> all(kc.tokens_);
    for (std::size_t at = 0; at < all.size(); at += chunk) {
        decoder.forward(all.subspan(at, std::min(chunk, all.size() - at)), kc.cache_, 0, logits,
                        ForwardOptions{.threads = threads});
    }
    kc.build_seconds_ = std::chrono::duration<double>(Clock::now() - t0).count();
    return kc;
}

KnowledgeCache KnowledgeCache::load(const std::filesystem::path& path, const Decoder& decoder,
                                    std::vector<std::int32_t> knowledge_tokens, std::size_t capacity,
                                    const CacheFingerprint& fingerprint) {
    check_room(knowledge_tokens.size(), capacity);
    const auto t0 = Clock::now();
    // The header first: a file for other knowledge is refused before its payload is read.
    const CacheFileInfo info = read_cache_file_info(path);
    if (!(info.fingerprint == fingerprint) || info.tokens != knowledge_tokens) {
        throw FingerprintMismatch(fmt::format("{}: a knowledge cache for \"{}\" ({} tokens), expected \"{}\" ({} tokens)",
                                              path.string(), info.fingerprint.model, info.tokens.size(),
                                              fingerprint.model, knowledge_tokens.size()));
    }
    KnowledgeCache kc(decoder.make_cache(capacity), std::move(knowledge_tokens));
    load_cache_file(path, kc.cache_, 0, fingerprint);
    kc.build_seconds_ = std::chrono::duration<double>(Clock::now() - t0).count();
    kc.loaded_ = true;
    return kc;
}

void KnowledgeCache::save(const std::filesystem::path& path, const CacheFingerprint& fingerprint, SaveOptions options) {
    reset();
    save_cache_file(path, cache_, 0, tokens_, fingerprint, options);
}

}  // namespace kvcache
