// Generation that reuses caches from disk by prompt: before prefilling, the cache directory is asked for the
// saved cache sharing the longest prefix with the prompt; that many positions are loaded instead of computed,
// and afterwards the sequence's cache is saved for the next prompt that starts the same way.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string_view>

#include "kvcache/kb/cache_directory.hpp"
#include "kvcache/model/generate.hpp"

namespace kvcache {

class Decoder;
class Tokenizer;

struct DiskCachedGeneration {
    GenerationResult generation;
    std::size_t reused_tokens = 0;      ///< prompt positions loaded from a file
    std::filesystem::path loaded_from;  ///< that file (empty if none)
    std::filesystem::path saved_to;     ///< the file written for this sequence (empty if not saved)
};

struct DiskPromptCacheOptions {
    /// Save the sequence (prompt + answer) afterwards. Files hold at least min_saved_tokens positions.
    bool save = true;
    std::size_t min_saved_tokens = 16;
};

/// generate_with_cache's loop with prompt-keyed reuse from `directory`. model_fingerprint identifies the
/// decoder's model (model_fingerprint()); only files for it and for the decoder's float cache are used. The
/// tokens are the same as generate_with_cache's for the same options (a loaded prefix holds the bits a
/// prefill would have computed). Errors as generate_with_cache; a damaged file is skipped. CapacityError (after
/// generating) if the file to save is larger than the directory's whole quota.
DiskCachedGeneration generate_with_disk_cache(Decoder& decoder, const Tokenizer& tokenizer,
                                              std::span<const std::int32_t> prompt, const GenerateOptions& options,
                                              const CacheDirectory& directory, std::string_view model_fingerprint,
                                              DiskPromptCacheOptions disk = {});

}  // namespace kvcache
