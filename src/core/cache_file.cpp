// Cache files: the byte layout (docs/cache-file-format.md), the atomic writer and the mapping reader.
#include "kvcache/persist/cache_file.hpp"

#include "kvcache/detail/checked.hpp"
#include "kvcache/detail/mapped_file.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <limits>
#include <optional>
#include <system_error>
#include <tuple>
#include <utility>

// xxHash is used header-only (inlined into this file), so the library has no link-time dependency on it.
#define XXH_INLINE_ALL
#if defined(__AVX512F__) && defined(__AVX2__)
// GCC 12's AVX-512 intrinsics trip -Wmaybe-uninitialized (a false positive in avx512fintrin.h) once inlined;
// the AVX2 path hashes faster than memory delivers anyway.
#define XXH_VECTOR XXH_AVX2
#endif
#include <xxhash.h>

namespace kvcache {
namespace {

namespace fs = std::filesystem;

// ---- the format (docs/cache-file-format.md) ----
constexpr std::array<unsigned char, 8> kMagic = {'K', 'V', 'C', 'A', 'C', 'H', 'E', 0x1a};
// Version 1 names one element type for keys and values; version 2 (issue 14) names each. A file whose keys and
// values share a type is still written as version 1, byte for byte what earlier writers wrote, so every reader
// that could read it still can; only a file that needs two types is version 2.
constexpr std::uint32_t kVersion = 2;
constexpr std::uint32_t kMixedElementsVersion = 2;
constexpr std::uint64_t kHeaderBytes = 64;
constexpr std::uint64_t kEntryBytes = 32;
constexpr std::uint64_t kSectionAlignment = 64;

enum SectionKind : std::uint32_t {
    kModelFingerprint = 1,
    kCacheFingerprint = 2,
    kLayerShapes = 3,
    kTokens = 4,
    kKeys = 5,
    kValues = 6,
};
constexpr std::uint32_t kMetadataSections = 4;  // model, cache, shapes, tokens: then keys/values per layer

struct Header {
    std::uint32_t version = 0;
    std::uint32_t header_bytes = 0;
    std::uint64_t file_bytes = 0;
    std::uint64_t num_tokens = 0;
    // Version 1: u32 code at 32 and u32 bytes at 36, for keys and values alike. Version 2: u16 key code and
    // u16 value code at 32, u16 key bytes and u16 value bytes at 36.
    std::uint32_t key_code = 0, value_code = 0;
    std::uint32_t key_bytes = 0, value_bytes = 0;
    std::uint32_t num_layers = 0;
    std::uint32_t num_sections = 0;
    std::uint64_t table_checksum = 0;
    std::uint64_t header_checksum = 0;
};

struct Section {
    std::uint32_t kind = 0;
    std::uint32_t layer = 0;
    std::uint64_t offset = 0;
    std::uint64_t bytes = 0;
    std::uint64_t checksum = 0;
};

// Little-endian fields, read and written byte by byte so the code is the documentation of the layout.
void put_u16(std::byte* p, std::uint32_t v) {
    for (int i = 0; i < 2; ++i) p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xffu);
}
void put_u32(std::byte* p, std::uint32_t v) {
    for (int i = 0; i < 4; ++i) p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xffu);
}
void put_u64(std::byte* p, std::uint64_t v) {
    for (int i = 0; i < 8; ++i) p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xffu);
}
std::uint32_t get_u16(const std::byte* p) {
    return static_cast<std::uint32_t>(p[0]) | (static_cast<std::uint32_t>(p[1]) << 8);
}
std::uint32_t get_u32(const std::byte* p) {
    std::uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<std::uint32_t>(p[i]);
    return v;
}
std::uint64_t get_u64(const std::byte* p) {
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<std::uint64_t>(p[i]);
    return v;
}

std::uint64_t checksum(const void* data, std::size_t bytes) { return XXH3_64bits(data, bytes); }

void encode_header(const Header& h, std::byte* out) {
    std::memcpy(out, kMagic.data(), kMagic.size());
    put_u32(out + 8, h.version);
    put_u32(out + 12, h.header_bytes);
    put_u64(out + 16, h.file_bytes);
    put_u64(out + 24, h.num_tokens);
    if (h.version == 1) {
        put_u32(out + 32, h.key_code);
        put_u32(out + 36, h.key_bytes);
    } else {
        put_u16(out + 32, h.key_code);
        put_u16(out + 34, h.value_code);
        put_u16(out + 36, h.key_bytes);
        put_u16(out + 38, h.value_bytes);
    }
    put_u32(out + 40, h.num_layers);
    put_u32(out + 44, h.num_sections);
    put_u64(out + 48, h.table_checksum);
    put_u64(out + 56, checksum(out, 56));
}

void encode_section(const Section& s, std::byte* out) {
    put_u32(out, s.kind);
    put_u32(out + 4, s.layer);
    put_u64(out + 8, s.offset);
    put_u64(out + 16, s.bytes);
    put_u64(out + 24, s.checksum);
}

Section decode_section(const std::byte* p) {
    return Section{get_u32(p), get_u32(p + 4), get_u64(p + 8), get_u64(p + 16), get_u64(p + 24)};
}

std::uint64_t align_up(std::uint64_t x) { return (x + kSectionAlignment - 1) / kSectionAlignment * kSectionAlignment; }

std::string_view element_name_of(std::uint32_t code) {
    switch (code) {
        case 1: return "f32";
        case 2: return "f16";
        case 3: return "bf16";
        case 4: return "q8_0";  // issue 14: GGUF blocks of 32 values (h14)
        case 5: return "q4_0";
        // 6 was the first q4_0h (32-value rotations with sign flips): retired, refused by name below
        case 7: return "q4_0h";  // two q4_0 blocks of a 64-value Hadamard rotation (rotated_q4_0.hpp)
        default: return {};
    }
}
std::uint32_t element_bytes_of(std::uint32_t code) {
    switch (code) {
        case 1: return 4;
        case 4: return 34;  // one block: fp16 scale + 32 int8
        case 5: return 18;  // one block: fp16 scale + 16 bytes of nibbles
        case 7: return 36;  // two q4_0 blocks
        default: return 2;
    }
}
/// Values one stored element holds along the head dimension: a q8_0/q4_0 block holds 32, a q4_0h element 64.
std::uint64_t block_values_of(std::uint32_t code) { return code == 7 ? 64 : (code == 4 || code == 5 ? 32 : 1); }

/// Element code 6, the first q4_0h (32-value rotations): no longer read, with a message that says so.
constexpr std::uint32_t kRetiredQ4_0hCode = 6;

/// How errors and CacheFileInfo::element name a file's storage: "q8_0", or "k=q8_0 v=q4_0" when keys and
/// values differ (the form cache_fingerprint uses).
std::string elements_name(std::uint32_t key_code, std::uint32_t value_code) {
    if (key_code == value_code) return std::string(element_name_of(key_code));
    return fmt::format("k={} v={}", element_name_of(key_code), element_name_of(value_code));
}

std::string_view kind_name(std::uint32_t kind) {
    switch (kind) {
        case kModelFingerprint: return "model fingerprint";
        case kCacheFingerprint: return "cache fingerprint";
        case kLayerShapes: return "layer shapes";
        case kTokens: return "tokens";
        case kKeys: return "keys";
        case kValues: return "values";
        default: return "extension";
    }
}

std::string section_label(const Section& s) {
    if (s.kind == kKeys || s.kind == kValues) return fmt::format("{} of layer {}", kind_name(s.kind), s.layer);
    return std::string(kind_name(s.kind));
}

[[noreturn]] void throw_errno(std::string_view what, const fs::path& path) {
    const int err = errno;
    throw IoError(fmt::format("{} {}: {}", what, path.string(), std::generic_category().message(err)));
}

void check_little_endian() {
    if constexpr (std::endian::native != std::endian::little) {
        throw FormatError("cache files are read and written on little-endian machines only");
    }
}

/// The sections of a file in order and where each starts: the one layout both writer and reader use.
std::vector<Section> plan_sections(std::uint64_t model_bytes, std::uint64_t cache_bytes,
                                   const std::vector<LayerShape>& layers, std::uint64_t num_tokens,
                                   const detail::FileElement& keys, const detail::FileElement& values) {
    std::vector<Section> sections;
    sections.push_back({kModelFingerprint, 0, 0, model_bytes, 0});
    sections.push_back({kCacheFingerprint, 0, 0, cache_bytes, 0});
    sections.push_back({kLayerShapes, 0, 0, 8 * static_cast<std::uint64_t>(layers.size()), 0});
    sections.push_back({kTokens, 0, 0, 4 * num_tokens, 0});
    for (std::size_t l = 0; l < layers.size(); ++l) {
        // A cache type reports its own shapes (a user's type may report anything): checked, never wrapped.
        // q8_0/q4_0 elements are blocks of 32 values along head_dim (issue 14); keys and values may differ.
        for (const auto& [kind, element] : {std::pair{kKeys, &keys}, std::pair{kValues, &values}}) {
            const std::uint64_t bytes = detail::checked_product(
                "save_cache_file: layer payload bytes", num_tokens, layers[l].kv_heads,
                layers[l].head_dim / block_values_of(element->code), element->bytes);
            sections.push_back({kind, static_cast<std::uint32_t>(l), 0, bytes, 0});
        }
    }
    std::uint64_t at = kHeaderBytes + kEntryBytes * sections.size();
    for (auto& s : sections) {
        (void)detail::checked_add(at, kSectionAlignment - 1, "save_cache_file: section offset");  // align_up's sum
        s.offset = align_up(at);
        at = detail::checked_add(s.offset, s.bytes, "save_cache_file: file size");
    }
    return sections;
}

}  // namespace

std::uint64_t cache_file_checksum(std::span<const std::byte> bytes) { return checksum(bytes.data(), bytes.size()); }

std::string fingerprint_digest(std::span<const std::byte> bytes) {
    return fmt::format("xxh3-64:{:016x}", checksum(bytes.data(), bytes.size()));
}
std::string fingerprint_digest(std::string_view text) { return fingerprint_digest(std::as_bytes(std::span(text))); }

namespace {

// ---- where a save may write, and the temporary files next to it ----

/// The mode bits of the regular file at `path` if there is one, nothing if there is none. Throws IoError for a
/// symbolic link (never followed nor replaced: see save_cache_file) and for anything not a regular file (a
/// directory, FIFO or device is refused before anything is written, and without opening it).
std::optional<mode_t> check_save_target(const fs::path& path) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) {
        if (errno == ENOENT) return std::nullopt;
        throw_errno("cannot inspect the save target", path);
    }
    if (S_ISLNK(st.st_mode)) {
        throw IoError(fmt::format("save_cache_file: {} is a symbolic link; it is neither followed nor replaced "
                                  "(save to the file it names instead)",
                                  path.string()));
    }
    if (!S_ISREG(st.st_mode)) {
        throw IoError(fmt::format("save_cache_file: {} exists and is not a regular file (a directory, FIFO or "
                                  "device); refusing to replace it",
                                  path.string()));
    }
    return st.st_mode & 07777;
}

// Temp files are named "<file>.tmp.<pid>.<unique>" so that a later save can tell an orphan (its process is
// gone: killed mid-save) from the live temp file of a concurrent save, which it must not touch.
constexpr std::string_view kTempInfix = ".tmp.";

std::string temp_prefix(const fs::path& path) { return path.filename().string() + std::string(kTempInfix); }

int create_temp_file(const fs::path& path, fs::path& temp_out, mode_t mode) {
    static std::atomic<std::uint64_t> counter{0};
    const auto pid = static_cast<long>(::getpid());
    for (int attempt = 0;; ++attempt) {
        const std::uint64_t n = counter.fetch_add(1);
        const auto now = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
        const std::uint64_t unique = XXH3_64bits_withSeed(&n, sizeof n, now);
        fs::path temp = path;
        temp.replace_filename(fmt::format("{}{}.{:016x}", temp_prefix(path), pid, unique));
        // open applies the umask to `mode`, as for any new file.
        const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
        if (fd >= 0) {
            temp_out = std::move(temp);
            return fd;
        }
        if (errno != EEXIST || attempt >= 100) throw_errno("cannot create a temporary file for", path);
    }
}

/// Removes "<file>.tmp.<pid>.*" files left by saves whose process no longer exists (kill -9, power loss), and
/// the "<file>.tmp.XXXXXX" files of the earlier naming once they are an hour old. Best effort: a file that
/// cannot be inspected or removed is left alone.
void remove_orphaned_temp_files(const fs::path& path) {
    const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
    const std::string prefix = temp_prefix(path);
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return;
    std::vector<std::string> orphans;
    while (const dirent* entry = ::readdir(d)) {
        const std::string_view name = entry->d_name;
        if (!name.starts_with(prefix)) continue;
        const std::string_view rest = name.substr(prefix.size());
        const std::size_t dot = rest.find('.');
        if (dot != std::string_view::npos && dot > 0 && rest.find_first_not_of("0123456789") == dot) {
            long pid = 0;
            for (const char c : rest.substr(0, dot)) pid = pid * 10 + (c - '0');
            if (pid > 0 && pid != static_cast<long>(::getpid()) && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH)
                orphans.emplace_back(name);
        } else if (rest.size() == 6 && rest.find('.') == std::string_view::npos) {  // mkstemp's XXXXXX
            struct stat st {};
            const fs::path file = dir / std::string(name);
            if (::lstat(file.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::time(nullptr) - st.st_mtime > 3600)
                orphans.emplace_back(name);
        }
    }
    ::closedir(d);
    for (const auto& name : orphans) ::unlink((dir / name).c_str());
}

}  // namespace

namespace detail {

// ================================ writer ================================

struct CacheFileWriter::State {
    fs::path path, temp;
    int fd = -1;
    bool durable = true;
    Header header;
    std::vector<Section> sections;
    std::size_t current = kMetadataSections;  // the payload section being written
    std::uint64_t written = 0;                // bytes of it so far
    XXH3_state_t* hash = nullptr;

    State() = default;
    State(const State&) = delete;
    State& operator=(const State&) = delete;
    // Owns the descriptor, the temp file and the hash state from the moment each exists, so that a failure
    // anywhere (even the constructor's first write, on a full disk) releases all three: the destructor of a
    // CacheFileWriter whose constructor threw never runs, but this one does.
    ~State() {
        if (hash) XXH3_freeState(hash);
        if (fd >= 0) {
            ::close(fd);
            ::unlink(temp.c_str());  // not committed: leave nothing behind
        }
    }

    void write_all(const void* data, std::size_t bytes) {
        const char* p = static_cast<const char*>(data);
        while (bytes > 0) {
            const ssize_t n = ::write(fd, p, std::min<std::size_t>(bytes, 1u << 30));
            if (n < 0) {
                if (errno == EINTR) continue;
                throw_errno("cannot write", temp);
            }
            p += n;
            bytes -= static_cast<std::size_t>(n);
        }
    }
    void pwrite_all(const void* data, std::size_t bytes, std::uint64_t offset) {
        const char* p = static_cast<const char*>(data);
        while (bytes > 0) {
            const ssize_t n = ::pwrite(fd, p, bytes, static_cast<off_t>(offset));
            if (n < 0) {
                if (errno == EINTR) continue;
                throw_errno("cannot write", temp);
            }
            p += n;
            bytes -= static_cast<std::size_t>(n);
            offset += static_cast<std::uint64_t>(n);
        }
    }
    // Zero padding up to the start of `section` (the file position is the end of the previous one).
    void pad_to(const Section& section, std::uint64_t end_of_previous) {
        static constexpr std::array<std::byte, kSectionAlignment> zeros{};
        write_all(zeros.data(), section.offset - end_of_previous);
    }
    void start_payload_section() {
        const Section& prev = sections[current - 1];
        pad_to(sections[current], prev.offset + prev.bytes);
        XXH3_64bits_reset(hash);
        written = 0;
    }
    void finish_payload_section() {
        sections[current].checksum = XXH3_64bits_digest(hash);
        ++current;
        if (current < sections.size()) start_payload_section();
    }
};

CacheFileWriter::CacheFileWriter(fs::path path, FileElement keys, FileElement values, std::vector<LayerShape> layers, std::span<const std::int32_t> tokens,
                                 const CacheFingerprint& fingerprint, SaveOptions options)
    : state_(std::make_unique<State>()) {
    check_little_endian();
    State& s = *state_;
    s.path = std::move(path);
    s.durable = options.durable;
    if (layers.empty() || layers.size() > std::numeric_limits<std::uint32_t>::max()) {
        throw ConfigError(fmt::format("save_cache_file: {} layers; a cache file holds 1 to 2^32-1", layers.size()));
    }
    for (const FileElement& element : {keys, values}) {
        // The code is the element's own trait; a code this reader does not know would make an unreadable file.
        if (element_name_of(element.code).empty() || element_bytes_of(element.code) != element.bytes) {
            throw ConfigError(fmt::format("save_cache_file: element code {} of {} bytes is not one the cache-file "
                                          "format defines",
                                          element.code, element.bytes));
        }
        for (const LayerShape& shape : layers) {
            if (shape.head_dim % block_values_of(element.code) != 0) {
                throw ConfigError(fmt::format("save_cache_file: head size {} is not a multiple of {}'s {}-value blocks",
                                              shape.head_dim, element_name_of(element.code),
                                              block_values_of(element.code)));
            }
        }
    }
    s.sections = plan_sections(fingerprint.model.size(), fingerprint.cache.size(), layers, tokens.size(), keys, values);
    s.header.version = keys.code == values.code ? 1 : kMixedElementsVersion;
    s.header.header_bytes = kHeaderBytes;
    s.header.file_bytes = s.sections.back().offset + s.sections.back().bytes;
    s.header.num_tokens = tokens.size();
    s.header.key_code = keys.code;
    s.header.value_code = values.code;
    s.header.key_bytes = static_cast<std::uint32_t>(keys.bytes);
    s.header.value_bytes = static_cast<std::uint32_t>(values.bytes);
    s.header.num_layers = static_cast<std::uint32_t>(layers.size());
    s.header.num_sections = static_cast<std::uint32_t>(s.sections.size());

    // Header, table (both rewritten by commit) and the metadata sections, assembled in memory.
    std::vector<std::byte> prefix(s.sections[kMetadataSections - 1].offset + s.sections[kMetadataSections - 1].bytes);
    auto fill = [&](std::size_t index, const void* data, std::size_t bytes) {
        Section& section = s.sections[index];
        if (bytes) std::memcpy(prefix.data() + section.offset, data, bytes);
        section.checksum = checksum(prefix.data() + section.offset, bytes);
    };
    fill(0, fingerprint.model.data(), fingerprint.model.size());
    fill(1, fingerprint.cache.data(), fingerprint.cache.size());
    std::vector<std::byte> shapes(8 * layers.size());
    for (std::size_t l = 0; l < layers.size(); ++l) {
        if (layers[l].kv_heads > std::numeric_limits<std::uint32_t>::max() ||
            layers[l].head_dim > std::numeric_limits<std::uint32_t>::max()) {
            throw ConfigError(fmt::format("save_cache_file: layer {} shape {}x{} does not fit 32-bit fields", l,
                                          layers[l].kv_heads, layers[l].head_dim));
        }
        put_u32(shapes.data() + 8 * l, static_cast<std::uint32_t>(layers[l].kv_heads));
        put_u32(shapes.data() + 8 * l + 4, static_cast<std::uint32_t>(layers[l].head_dim));
    }
    fill(2, shapes.data(), shapes.size());
    std::vector<std::byte> ids(4 * tokens.size());
    for (std::size_t i = 0; i < tokens.size(); ++i) put_u32(ids.data() + 4 * i, static_cast<std::uint32_t>(tokens[i]));
    fill(3, ids.data(), ids.size());

    // The temp file goes in the target's directory: rename is atomic only within one file system.
    const std::optional<mode_t> existing_mode = check_save_target(s.path);
    remove_orphaned_temp_files(s.path);
    s.fd = create_temp_file(s.path, s.temp, static_cast<mode_t>(options.new_file_mode & 07777));
    // Keep the permissions of the file being replaced; a new file gets new_file_mode less the umask.
    if (existing_mode && ::fchmod(s.fd, *existing_mode) != 0) throw_errno("cannot set the permissions of", s.temp);
    s.hash = XXH3_createState();
    if (s.hash == nullptr) throw CapacityError("cannot allocate a checksum state");
    s.write_all(prefix.data(), prefix.size());
    s.start_payload_section();
    while (s.current < s.sections.size() && s.sections[s.current].bytes == 0) s.finish_payload_section();
}

CacheFileWriter::~CacheFileWriter() = default;  // State releases the temp file if not committed

void CacheFileWriter::write(const void* data, std::size_t bytes) {
    State& s = *state_;
    const auto* p = static_cast<const std::byte*>(data);
    while (bytes > 0) {
        if (s.current >= s.sections.size()) {
            throw ShapeError(fmt::format("cache file writer: {} bytes more than the layout holds", bytes));
        }
        const std::uint64_t room = s.sections[s.current].bytes - s.written;
        const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(room, bytes));
        XXH3_64bits_update(s.hash, p, n);
        s.write_all(p, n);
        s.written += n;
        p += n;
        bytes -= n;
        while (s.current < s.sections.size() && s.written == s.sections[s.current].bytes) s.finish_payload_section();
    }
}

void CacheFileWriter::commit() {
    State& s = *state_;
    if (s.current != s.sections.size()) {
        throw ShapeError(fmt::format("cache file writer: committed with {} of {} sections written", s.current,
                                     s.sections.size()));
    }
    std::vector<std::byte> table(kEntryBytes * s.sections.size());
    for (std::size_t i = 0; i < s.sections.size(); ++i) encode_section(s.sections[i], table.data() + kEntryBytes * i);
    s.header.table_checksum = checksum(table.data(), table.size());
    std::array<std::byte, kHeaderBytes> header{};
    encode_header(s.header, header.data());
    s.pwrite_all(table.data(), table.size(), kHeaderBytes);
    s.pwrite_all(header.data(), header.size(), 0);
    if (s.durable && ::fsync(s.fd) != 0) throw_errno("cannot fsync", s.temp);
    if (::close(s.fd) != 0) {
        s.fd = -1;
        ::unlink(s.temp.c_str());
        throw_errno("cannot close", s.temp);
    }
    s.fd = -1;
    if (::rename(s.temp.c_str(), s.path.c_str()) != 0) {
        const int err = errno;
        ::unlink(s.temp.c_str());
        errno = err;
        throw_errno("cannot rename the temporary file onto", s.path);
    }
    if (s.durable) {  // the rename itself is durable only once the directory is
        const fs::path dir = s.path.has_parent_path() ? s.path.parent_path() : fs::path(".");
        const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            const int rc = ::fsync(dfd);
            ::close(dfd);
            if (rc != 0) throw_errno("cannot fsync directory", dir);
        }
    }
}

// ================================ reader ================================

struct CacheFileReader::State {
    fs::path path;
    detail::MappedFile mapping;
    const std::byte* data = nullptr;
    std::size_t size = 0;
    Header header;
    std::vector<Section> sections;
    CacheFileInfo info;

    [[noreturn]] void fail(const std::string& what) const {
        mapping.check_unchanged();  // bytes that changed under the mapping: say that, not what they look like
        throw FormatError(fmt::format("{}: {}", path.string(), what));
    }
    void check_section(const Section& s) const {
        if (checksum(data + s.offset, s.bytes) != s.checksum) {
            fail(fmt::format("corrupted: checksum of the {} section ({} bytes at offset {}) does not match",
                             section_label(s), s.bytes, s.offset));
        }
    }
    // Padding between sections must be zero: then every byte of the file is checked by something.
    void check_padding(std::uint64_t from, std::uint64_t to) const {
        for (std::uint64_t i = from; i < to; ++i) {
            if (data[i] != std::byte{0}) fail(fmt::format("corrupted: non-zero padding byte at offset {}", i));
        }
    }
    std::uint64_t end_of_previous(std::size_t index) const {
        return index == 0 ? kHeaderBytes + kEntryBytes * sections.size()
                          : sections[index - 1].offset + sections[index - 1].bytes;
    }
    std::string text(std::size_t index) const {
        return std::string(reinterpret_cast<const char*>(data + sections[index].offset), sections[index].bytes);
    }

    // The checks of the constructor, in file order; each fails with a FormatError naming the file.
    void read_header() {
        if (size > 0 && std::memcmp(data, kMagic.data(), std::min<std::size_t>(size, kMagic.size())) != 0) {
            std::string seen;
            for (std::size_t i = 0; i < std::min<std::size_t>(size, kMagic.size()); ++i) {
                seen += fmt::format("{:02x}", static_cast<unsigned>(data[i]));
            }
            fail(fmt::format("not a kvcache cache file: starts with bytes {}, expected 4b5643414348451a (\"KVCACHE\\x1a\")",
                             seen));
        }
        if (size < kHeaderBytes) fail(fmt::format("truncated: {} bytes, the header alone is {}", size, kHeaderBytes));
        Header& h = header;
        h.version = get_u32(data + 8);
        if (h.version == 0 || h.version > kVersion) {
            fail(fmt::format("format version {} is not one this reader knows (it reads version 1 to {}); a newer "
                             "kvcache wrote it",
                             h.version, kVersion));
        }
        h.header_bytes = get_u32(data + 12);
        h.file_bytes = get_u64(data + 16);
        h.num_tokens = get_u64(data + 24);
        if (h.version == 1) {
            h.key_code = h.value_code = get_u32(data + 32);
            h.key_bytes = h.value_bytes = get_u32(data + 36);
        } else {
            h.key_code = get_u16(data + 32);
            h.value_code = get_u16(data + 34);
            h.key_bytes = get_u16(data + 36);
            h.value_bytes = get_u16(data + 38);
        }
        h.num_layers = get_u32(data + 40);
        h.num_sections = get_u32(data + 44);
        h.table_checksum = get_u64(data + 48);
        h.header_checksum = get_u64(data + 56);
        if (checksum(data, 56) != h.header_checksum) fail("corrupted: header checksum does not match");
        if (h.header_bytes != kHeaderBytes) {
            fail(fmt::format("header size {} (version {} has {})", h.header_bytes, h.version, kHeaderBytes));
        }
        if (size < h.file_bytes) fail(fmt::format("truncated: {} bytes, the header says {}", size, h.file_bytes));
        if (size > h.file_bytes) {
            fail(fmt::format("{} unexpected bytes after the end the header gives ({})", size - h.file_bytes, h.file_bytes));
        }
        for (const auto& [what, code, bytes] : {std::tuple{"keys", h.key_code, h.key_bytes},
                                                 std::tuple{"values", h.value_code, h.value_bytes}}) {
            if (code == kRetiredQ4_0hCode) {
                fail(fmt::format("element type 6 for the {} is the first q4_0h (32-value rotations), which this "
                                 "version no longer reads; its q4_0h is code 7 — recompute the cache",
                                 what));
            }
            if (element_name_of(code).empty() || element_bytes_of(code) != bytes) {
                fail(fmt::format("unknown element type {} of {} bytes for the {}", code, bytes, what));
            }
        }
        if (h.num_layers == 0) fail("0 layers");
        const std::uint64_t required = kMetadataSections + 2 * static_cast<std::uint64_t>(h.num_layers);
        if (h.num_sections < required) {
            fail(fmt::format("{} sections for {} layers, needs at least {}", h.num_sections, h.num_layers, required));
        }
        const std::uint64_t table_end = kHeaderBytes + kEntryBytes * h.num_sections;  // no overflow: 32-bit count
        if (table_end > h.file_bytes) {
            fail(fmt::format("section table of {} entries ends at {}, past the end of the file ({})", h.num_sections,
                             table_end, h.file_bytes));
        }
    }
    void read_section_table() {
        const Header& h = header;
        const std::uint64_t required = kMetadataSections + 2 * static_cast<std::uint64_t>(h.num_layers);
        const std::uint64_t table_end = kHeaderBytes + kEntryBytes * h.num_sections;  // checked by read_header
        if (checksum(data + kHeaderBytes, table_end - kHeaderBytes) != h.table_checksum) {
            fail("corrupted: section table checksum does not match");
        }
        sections.resize(h.num_sections);
        std::uint64_t at = table_end;
        for (std::size_t i = 0; i < sections.size(); ++i) {
            Section& sec = sections[i] = decode_section(data + kHeaderBytes + kEntryBytes * i);
            std::uint32_t expect_kind = 0, expect_layer = 0;
            if (i < kMetadataSections) {
                expect_kind = static_cast<std::uint32_t>(i + 1);
            } else if (i < required) {
                expect_kind = (i - kMetadataSections) % 2 == 0 ? kKeys : kValues;
                expect_layer = static_cast<std::uint32_t>((i - kMetadataSections) / 2);
            } else if (sec.kind >= kModelFingerprint && sec.kind <= kValues) {
                fail(fmt::format("section {} repeats the {} section", i, kind_name(sec.kind)));
            }
            if (expect_kind && (sec.kind != expect_kind || sec.layer != expect_layer)) {
                fail(fmt::format("section {} is kind {} layer {}, expected the {} section", i, sec.kind, sec.layer,
                                 section_label(Section{expect_kind, expect_layer, 0, 0, 0})));
            }
            if (sec.offset != align_up(at) || sec.offset > h.file_bytes || sec.bytes > h.file_bytes - sec.offset) {
                fail(fmt::format("{} section at offset {} ({} bytes) is out of place (expected offset {}, file {} bytes)",
                                 section_label(sec), sec.offset, sec.bytes, align_up(at), h.file_bytes));
            }
            at = sec.offset + sec.bytes;
        }
        if (at != h.file_bytes) fail(fmt::format("sections end at {}, the header says the file ends at {}", at, h.file_bytes));
    }
    void read_metadata() {
        const Header& h = header;
        for (std::size_t i = 0; i < kMetadataSections; ++i) {
            check_padding(end_of_previous(i), sections[i].offset);
            check_section(sections[i]);
        }
        if (sections[2].bytes != 8ull * h.num_layers) {
            fail(fmt::format("layer shapes section has {} bytes, {} layers need {}", sections[2].bytes, h.num_layers,
                             8ull * h.num_layers));
        }
        const auto token_bytes = detail::try_mul<std::uint64_t>(h.num_tokens, 4);
        if (!token_bytes || sections[3].bytes != *token_bytes) {
            fail(fmt::format("tokens section has {} bytes for {} tokens", sections[3].bytes, h.num_tokens));
        }
        info.version = h.version;
        info.element = elements_name(h.key_code, h.value_code);
        info.key_element = element_name_of(h.key_code);
        info.value_element = element_name_of(h.value_code);
        info.file_bytes = h.file_bytes;
        info.fingerprint.model = text(0);
        info.fingerprint.cache = text(1);
        info.layers.resize(h.num_layers);
        for (std::size_t l = 0; l < info.layers.size(); ++l) {
            const std::byte* p = data + sections[2].offset + 8 * l;
            info.layers[l] = LayerShape{get_u32(p), get_u32(p + 4)};
            if (info.layers[l].kv_heads == 0 || info.layers[l].head_dim == 0) {
                fail(fmt::format("layer {} has {} kv heads of size {}", l, info.layers[l].kv_heads, info.layers[l].head_dim));
            }
            for (std::size_t kind = 0; kind < 2; ++kind) {
                const std::uint32_t code = kind == 0 ? h.key_code : h.value_code;
                const std::uint32_t element_bytes = kind == 0 ? h.key_bytes : h.value_bytes;
                if (info.layers[l].head_dim % block_values_of(code) != 0) {
                    fail(fmt::format("layer {} head size {} is not a multiple of {}'s {}-value blocks", l,
                                     info.layers[l].head_dim, element_name_of(code), block_values_of(code)));
                }
                const auto units = detail::try_mul<std::uint64_t>(h.num_tokens, info.layers[l].token_width() / block_values_of(code));
                const auto payload = units ? detail::try_mul<std::uint64_t>(*units, element_bytes) : std::nullopt;
                const Section& sec = sections[kMetadataSections + 2 * l + kind];
                if (!payload || sec.bytes != *payload) {
                    fail(fmt::format("{} section has {} bytes; {} tokens of {}x{} {} need {}", section_label(sec),
                                     sec.bytes, h.num_tokens, info.layers[l].kv_heads, info.layers[l].head_dim,
                                     element_name_of(code),
                                     payload ? fmt::format("{}", *payload) : std::string("more than 2^64")));
                }
            }
        }
        info.tokens.resize(h.num_tokens);
        for (std::size_t i = 0; i < info.tokens.size(); ++i) {
            info.tokens[i] = static_cast<std::int32_t>(get_u32(data + sections[3].offset + 4 * i));
        }
    }
};

CacheFileReader::CacheFileReader(fs::path path) : state_(std::make_unique<State>()) {
    check_little_endian();
    State& s = *state_;
    s.path = std::move(path);

    // Populate: the whole file is read anyway, so fault it in at once rather than page by page.
    s.mapping = detail::MappedFile::open(s.path, "cache file", /*populate=*/true);
    s.data = s.mapping.bytes().data();
    s.size = s.mapping.size();

    s.read_header();
    s.read_section_table();
    s.read_metadata();
    s.mapping.check_unchanged();
}

CacheFileReader::~CacheFileReader() = default;

const CacheFileInfo& CacheFileReader::info() const { return state_->info; }
std::uint32_t CacheFileReader::key_element_code() const { return state_->header.key_code; }
std::uint32_t CacheFileReader::value_element_code() const { return state_->header.value_code; }
const fs::path& CacheFileReader::path() const { return state_->path; }
void CacheFileReader::check_unchanged() const { state_->mapping.check_unchanged(); }

void CacheFileReader::check_fingerprint(const CacheFingerprint& expected) const {
    const CacheFingerprint& have = state_->info.fingerprint;
    if (have.model != expected.model) {
        throw FingerprintMismatch(fmt::format("{}: file is for another model: file has \"{}\", expected \"{}\"",
                                              state_->path.string(), have.model, expected.model));
    }
    if (have.cache != expected.cache) {
        throw FingerprintMismatch(fmt::format("{}: file is for another cache configuration: file has \"{}\", expected \"{}\"",
                                              state_->path.string(), have.cache, expected.cache));
    }
}

void CacheFileReader::verify_payload() const {
    const State& s = *state_;
    for (std::size_t i = kMetadataSections; i < s.sections.size(); ++i) {
        s.check_padding(s.end_of_previous(i), s.sections[i].offset);
        s.check_section(s.sections[i]);
    }
    s.mapping.check_unchanged();  // a checksum over zeros read past a new end is not the file's
}

const std::byte* CacheFileReader::payload(std::size_t layer, KV kind) const {
    const State& s = *state_;
    detail::check_index("layer", layer, s.info.layers.size());
    return s.data + s.sections[kMetadataSections + 2 * layer + (kind == KV::Values ? 1 : 0)].offset;
}

}  // namespace detail

CacheFileInfo read_cache_file_info(const fs::path& path, VerifyPayload verify) {
    detail::CacheFileReader file(path);
    if (verify == VerifyPayload::yes) file.verify_payload();
    return file.info();
}

}  // namespace kvcache
