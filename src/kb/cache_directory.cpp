// The cache directory: quota by least recent use, lookups by key and by prompt prefix.
#include "kvcache/kb/cache_directory.hpp"

#include <algorithm>
#include <cctype>
#include <chrono>

namespace kvcache {

namespace {

struct FileEntry {
    std::filesystem::path path;
    std::filesystem::file_time_type used;
    std::uint64_t bytes = 0;
};

std::vector<FileEntry> list(const std::filesystem::path& dir) {
    std::vector<FileEntry> out;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
        if (!entry.is_regular_file(ec) || entry.path().extension() != ".kvc") continue;
        FileEntry f{entry.path(), entry.last_write_time(ec), entry.file_size(ec)};
        if (!ec) out.push_back(std::move(f));
    }
    std::sort(out.begin(), out.end(), [](const FileEntry& a, const FileEntry& b) {
        return a.used != b.used ? a.used < b.used : a.path < b.path;
    });
    return out;
}

}  // namespace

CacheDirectory::CacheDirectory(std::filesystem::path directory, std::uint64_t quota_bytes)
    : directory_(std::move(directory)), quota_(quota_bytes) {
    if (quota_ == 0) throw ConfigError(fmt::format("CacheDirectory {}: the quota is 0 bytes", directory_.string()));
    std::error_code ec;
    std::filesystem::create_directories(directory_, ec);
    if (ec || !std::filesystem::is_directory(directory_)) {
        throw IoError(fmt::format("CacheDirectory: cannot create {}: {}", directory_.string(), ec.message()));
    }
}

std::filesystem::path CacheDirectory::path_for(std::string_view key) const {
    const bool ok = !key.empty() && key.size() <= 200 && key != "." && key != ".." &&
                    std::all_of(key.begin(), key.end(), [](char c) {
                        return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
                    });
    if (!ok) {
        throw ConfigError(fmt::format("CacheDirectory: key '{}' must be 1-200 characters of A-Z a-z 0-9 . _ -", key));
    }
    return directory_ / (std::string(key) + ".kvc");
}

std::vector<std::filesystem::path> CacheDirectory::files() const {
    std::vector<std::filesystem::path> out;
    for (auto& f : list(directory_)) out.push_back(std::move(f.path));
    return out;
}

std::uint64_t CacheDirectory::bytes_used() const {
    std::uint64_t total = 0;
    for (const auto& f : list(directory_)) total += f.bytes;
    return total;
}

void CacheDirectory::touch(const std::filesystem::path& file) const {
    auto now = std::filesystem::file_time_type::clock::now();
    for (const auto& f : list(directory_)) {
        if (f.path != file && f.used >= now) now = f.used + std::chrono::microseconds(1);
    }
    std::error_code ec;
    std::filesystem::last_write_time(file, now, ec);
    if (ec) throw IoError(fmt::format("CacheDirectory: cannot mark {} used: {}", file.string(), ec.message()));
}

std::vector<std::filesystem::path> CacheDirectory::enforce_quota(const std::filesystem::path* keep) const {
    std::vector<FileEntry> entries = list(directory_);
    std::uint64_t total = 0;
    for (const auto& f : entries) total += f.bytes;
    std::vector<std::filesystem::path> deleted;
    for (const auto& f : entries) {
        if (total <= quota_) break;
        if (keep && f.path == *keep) continue;
        std::error_code ec;
        if (std::filesystem::remove(f.path, ec) || !std::filesystem::exists(f.path)) {
            total -= f.bytes;
            deleted.push_back(f.path);
        }
    }
    return deleted;
}

std::filesystem::path CacheDirectory::admit(const std::filesystem::path& path) const {
    std::error_code ec;
    const std::uint64_t bytes = std::filesystem::file_size(path, ec);
    if (ec) throw IoError(fmt::format("CacheDirectory: cannot read the size of {}: {}", path.string(), ec.message()));
    if (bytes > quota_) {
        std::filesystem::remove(path, ec);
        throw CapacityError(fmt::format("CacheDirectory {}: a cache file of {} bytes does not fit the quota of {} bytes",
                                        directory_.string(), bytes, quota_));
    }
    touch(path);
    enforce_quota(&path);
    return path;
}

std::optional<PrefixCacheFile> CacheDirectory::longest_prefix(std::span<const std::int32_t> prompt,
                                                              const CacheFingerprint& fingerprint) const {
    std::optional<PrefixCacheFile> best;
    for (const auto& f : list(directory_)) {
        CacheFileInfo info;
        try {
            info = read_cache_file_info(f.path);
        } catch (const Error&) {
            continue;  // not a cache file, or damaged: never a match
        }
        if (!(info.fingerprint == fingerprint)) continue;
        const std::size_t n = std::min(info.tokens.size(), prompt.size());
        const auto mismatch = std::mismatch(prompt.begin(), prompt.begin() + static_cast<std::ptrdiff_t>(n),
                                            info.tokens.begin());
        const auto common = static_cast<std::size_t>(mismatch.first - prompt.begin());
        if (common > 0 && (!best || common > best->common_tokens)) {
            best = PrefixCacheFile{f.path, common, std::move(info)};
        }
    }
    return best;
}

std::string cache_key(std::string_view prefix, std::span<const std::int32_t> tokens, const CacheFingerprint& fingerprint) {
    std::string bytes = fingerprint.model + '\n' + fingerprint.cache + '\n';
    bytes.append(reinterpret_cast<const char*>(tokens.data()), tokens.size_bytes());
    const std::string digest = fingerprint_digest(bytes);  // "xxh3-64:<16 hex>"
    return fmt::format("{}-{}", prefix, digest.substr(digest.find(':') + 1));
}

}  // namespace kvcache
