// Prompt-keyed disk reuse: load the longest saved prefix, generate, save.
#include "kvcache/kb/disk_prompt_cache.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "kvcache/model/decoder.hpp"
#include "kvcache/model/tokenizer.hpp"

namespace kvcache {

DiskCachedGeneration generate_with_disk_cache(Decoder& decoder, const Tokenizer& tokenizer,
                                              std::span<const std::int32_t> prompt, const GenerateOptions& options,
                                              const CacheDirectory& directory, std::string_view model_fingerprint,
                                              DiskPromptCacheOptions disk) {
    if (prompt.empty()) throw ConfigError("generate: the prompt has no tokens");
    const std::size_t capacity = prompt.size() + options.max_new_tokens;
    if (options.cache_capacity && *options.cache_capacity < capacity) {
        throw CapacityError(fmt::format("generate: cache capacity {} is below prompt ({} tokens) + max_new_tokens ({})",
                                        *options.cache_capacity, prompt.size(), options.max_new_tokens));
    }
    const CacheFingerprint fingerprint = make_fingerprint(std::string(model_fingerprint), decoder.make_cache(1));
    const auto found = directory.longest_prefix(prompt, fingerprint);
    // A file holds whole sequences, which may be longer than this one: the cache must take all of it before
    // it is cut back to the shared prefix.
    std::size_t positions = options.cache_capacity.value_or(capacity);
    if (found) positions = std::max(positions, found->info.tokens.size());
    MultiLayerKVCache<float> cache = decoder.make_cache(positions);

    DiskCachedGeneration out;
    if (found) {
        try {
            load_cache_file(found->path, cache, 0, fingerprint);
            // Keep what the prompt shares, and never the last prompt token: its logits are wanted.
            cache.truncate(std::min(found->common_tokens, prompt.size() - 1));
            out.reused_tokens = cache.seq_len(0, 0);
            out.loaded_from = found->path;
            directory.touch(found->path);
        } catch (const FormatError&) {
            cache.truncate(0);  // damaged since it was listed: compute everything
        }
    }
    std::vector<std::int32_t> fed(prompt.begin(), prompt.begin() + static_cast<std::ptrdiff_t>(out.reused_tokens));
    out.generation = generate_with_step(decoder, tokenizer, prompt, options,
                                        [&](std::span<const std::int32_t> sequence, std::span<float> logits) {
                                            decoder.forward(sequence.subspan(fed.size()), cache, 0, logits,
                                                            ForwardOptions{.threads = options.threads});
                                            fed.assign(sequence.begin(), sequence.end());
                                        });
    out.generation.reused_prompt_tokens = out.reused_tokens;
    out.generation.cache_bytes = cache.bytes_allocated();
    const bool already_saved = found && found->info.tokens == fed;  // the same prompt gave the same answer
    if (disk.save && !already_saved && fed.size() >= disk.min_saved_tokens && fed.size() > out.reused_tokens) {
        out.saved_to = directory.save(cache_key("prompt", fed, fingerprint), cache, 0, fed, fingerprint);
    }
    return out;
}

}  // namespace kvcache
