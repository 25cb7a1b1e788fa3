// A read-only memory mapping of a whole file: what the GGUF, safetensors and cache-file readers share.
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>
#include <string_view>

namespace kvcache::detail {

/// Owns a private read-only mapping of a regular file (an empty file maps to an empty span). Move-only.
///
/// Anything else (a directory, FIFO, socket or device such as /dev/zero) is refused without blocking.
/// A file truncated by another process while it is mapped makes access past its new end raise SIGBUS; that is
/// not caught. kvcache keeps the window small and never causes it itself: the cache-file reader faults the
/// whole file in at once and copies out what it loads, the GGUF decoder loader copies or dequantises the
/// weights at load, and save_cache_file never truncates a file in place (it renames a new one over it, which
/// leaves an existing mapping of the old file intact). Do not truncate a model or cache file in place while a
/// program may be loading it.
class MappedFile {
public:
    /// Opens and maps `path`. `who` prefixes error messages ("gguf: cannot open '<path>': <reason>").
    /// populate: fault every page in at once (for files that are read in full right away).
    /// Throws IoError if the file cannot be opened, is not a regular file, or cannot be mapped.
    static MappedFile open(const std::filesystem::path& path, std::string_view who, bool populate = false);

    MappedFile() = default;
    MappedFile(MappedFile&& other) noexcept;
    MappedFile& operator=(MappedFile&& other) noexcept;
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;
    ~MappedFile();

    std::span<const std::byte> bytes() const { return {static_cast<const std::byte*>(address_), size_}; }
    std::size_t size() const { return size_; }

private:
    void* address_ = nullptr;
    std::size_t size_ = 0;
};

}  // namespace kvcache::detail
