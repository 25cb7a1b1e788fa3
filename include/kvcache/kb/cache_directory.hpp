// CacheDirectory: a directory of cache files under a size quota, least recently used files deleted first,
// and looked up by key (a knowledge cache) or by the longest saved prefix of a prompt.
//
// "Used" is the file's modification time: saving or touching a file sets it to now (never earlier than the
// newest file, so two uses in the same clock tick still order). Only files ending in .kvc are managed.
// Thread/process safety: files are written atomically (save_cache_file), so a reader sees a whole file or
// none; two processes enforcing the quota at once may both delete a file (harmless).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "kvcache/error.hpp"
#include "kvcache/persist/cache_file.hpp"

namespace kvcache {

/// A saved cache that shares a prefix with a prompt.
struct PrefixCacheFile {
    std::filesystem::path path;
    std::size_t common_tokens = 0;  ///< leading tokens the file and the prompt share
    CacheFileInfo info;
};

class CacheDirectory {
public:
    /// Creates the directory if needed. quota_bytes: the most all .kvc files together may take (> 0, else
    /// ConfigError). IoError if the directory cannot be created.
    CacheDirectory(std::filesystem::path directory, std::uint64_t quota_bytes);

    const std::filesystem::path& directory() const { return directory_; }
    std::uint64_t quota_bytes() const { return quota_; }

    /// The file for a key: <directory>/<key>.kvc. ConfigError unless the key is 1-200 characters of
    /// [A-Za-z0-9._-] (no path separators).
    std::filesystem::path path_for(std::string_view key) const;

    /// The managed files, least recently used first.
    std::vector<std::filesystem::path> files() const;
    std::uint64_t bytes_used() const;

    /// Marks a file used now.
    void touch(const std::filesystem::path& file) const;

    /// Deletes least recently used files until the total is within the quota; `keep` (if given) is never
    /// deleted. Returns the files deleted.
    std::vector<std::filesystem::path> enforce_quota(const std::filesystem::path* keep = nullptr) const;

    /// Saves row `row` of `cache` (positions of `tokens`) under `key`, marks it used and enforces the quota.
    /// A file larger than the whole quota is not kept: CapacityError naming both sizes.
    template <KVCacheReadable C>
    std::filesystem::path save(std::string_view key, const C& cache, std::size_t row,
                               std::span<const std::int32_t> tokens, const CacheFingerprint& fingerprint,
                               SaveOptions options = {.durable = false}) const {
        const std::filesystem::path path = path_for(key);
        save_cache_file(path, cache, row, tokens, fingerprint, options);
        return admit(path);
    }

    /// Among the files whose fingerprint equals `fingerprint`, the one sharing the most leading tokens with
    /// `prompt` (at least one); nullopt if none does. Reads only the files' headers and token ids; a file that
    /// is not a valid cache file is skipped.
    std::optional<PrefixCacheFile> longest_prefix(std::span<const std::int32_t> prompt,
                                                  const CacheFingerprint& fingerprint) const;

private:
    std::filesystem::path admit(const std::filesystem::path& path) const;

    std::filesystem::path directory_;
    std::uint64_t quota_;
};

/// A key for a token sequence under a fingerprint: "<prefix>-" + 16 hex digits of a digest of both.
std::string cache_key(std::string_view prefix, std::span<const std::int32_t> tokens, const CacheFingerprint& fingerprint);

}  // namespace kvcache
