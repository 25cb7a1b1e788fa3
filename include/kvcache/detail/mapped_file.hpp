// A read-only memory mapping of a whole file: what the GGUF, safetensors and cache-file readers share.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

namespace kvcache::detail {

struct GuardedRange;  // src/core/sigbus_guard.hpp

/// Owns a private read-only mapping of a regular file (an empty file maps to an empty span). Move-only.
///
/// Anything else (a directory, FIFO, socket or device such as /dev/zero) is refused without blocking.
///
/// A file that changes under its mapping is an error, not a signal. Reading a page that a truncation by another
/// process left past the file's end would raise SIGBUS and end the process; instead, a process-wide handler
/// (installed on the first open, chaining to any earlier SIGBUS handler for addresses that are not in a
/// MappedFile) maps a page of zeros there and marks the mapping, so the read returns zeros. check_unchanged()
/// then throws a FormatError naming the file; the readers call it after they read (the GGUF and safetensors
/// parsers, the decoder and encoder-decoder weight loaders, model_fingerprint, the cache-file reader). It also
/// catches size changes that raise no signal (the file grew, or shrank within pages not yet read). A rewrite in
/// place that keeps the size is not detected (the modification time is no evidence: CacheDirectory::touch sets
/// it on files others may be reading; cache files have checksums for their bytes). Replacing the file by
/// rename, as save_cache_file does, is not a change: the mapping keeps the old file.
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

    /// Throws FormatError "<who>: '<path>' changed while mapped (now N bytes, was M)" if a page of the mapping
    /// was past the file's end when read (it read as zeros), or the file's size is no longer what it was at open.
    /// Call it after reading what the mapping holds; before, a truncation may still come.
    void check_unchanged() const;

private:
    void release() noexcept;

    void* address_ = nullptr;
    std::size_t size_ = 0;
    int fd_ = -1;                      // kept open to fstat the mapped file (not its path, which may be replaced)
    GuardedRange* guard_ = nullptr;    // this mapping in the SIGBUS handler's registry
    std::string who_;
    std::string path_;
};

}  // namespace kvcache::detail
