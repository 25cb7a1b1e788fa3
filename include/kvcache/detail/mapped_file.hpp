// A read-only memory mapping of a whole file: what the GGUF, safetensors and cache-file readers share.
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>
#include <string_view>

namespace kvcache::detail {

/// Owns a private read-only mapping of a regular file (an empty file maps to an empty span). Move-only.
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
