// Cache files: one sequence of a KV cache, with its token ids and fingerprint, saved to disk and loaded back.
// The byte layout, checksums and versioning are documented in docs/cache-file-format.md.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <fmt/format.h>

#include "kvcache/cache/concept.hpp"
#include "kvcache/cache/layer_shape.hpp"
#include "kvcache/detail/format.hpp"
#include "kvcache/element_types.hpp"
#include "kvcache/error.hpp"

namespace kvcache {

/// What a cache's keys and values were computed with. A file only loads into a cache whose fingerprint is
/// equal, because K/V computed by another model (or stored another way) would silently give wrong output.
struct CacheFingerprint {
    /// The caller's identity of the model and of everything else that changes K/V for the same tokens
    /// (weights, RoPE settings, ...): e.g. fingerprint_digest() of the model file's metadata.
    std::string model;
    /// The cache configuration: element type and per-layer shapes, as cache_fingerprint(cache) builds it.
    std::string cache;
    friend bool operator==(const CacheFingerprint&, const CacheFingerprint&) = default;
};

/// The cache-configuration part of a fingerprint: element type, layer count and per-layer shapes, e.g.
/// "f16 layers=30 kv_heads x head_dim=3x64" (or a list "=3x64,3x64,4x128" when layers differ).
template <KVCacheReadable C>
std::string cache_fingerprint(const C& cache) {
    const std::size_t layers = cache.num_layers();
    bool uniform = true;
    for (std::size_t l = 1; l < layers; ++l) {
        uniform = uniform && cache.num_kv_heads(l) == cache.num_kv_heads(0) && cache.head_dim(l) == cache.head_dim(0);
    }
    using K = key_element_t<C>;
    using V = value_element_t<C>;
    std::string elements(element_name<K>());
    if constexpr (!std::same_as<K, V>) elements = fmt::format("k={} v={}", element_name<K>(), element_name<V>());
    std::string out = fmt::format("{} layers={} kv_heads x head_dim=", elements, layers);
    for (std::size_t l = 0; l < (uniform ? std::min<std::size_t>(layers, 1) : layers); ++l) {
        out += fmt::format("{}{}x{}", l ? "," : "", cache.num_kv_heads(l), cache.head_dim(l));
    }
    return out;
}

/// A model fingerprint plus the configuration of `cache`.
template <KVCacheReadable C>
CacheFingerprint make_fingerprint(std::string model, const C& cache) {
    return CacheFingerprint{std::move(model), cache_fingerprint(cache)};
}

/// A short digest of any bytes (model metadata, a config file) for CacheFingerprint::model:
/// "xxh3-64:" followed by 16 hex digits.
std::string fingerprint_digest(std::span<const std::byte> bytes);
std::string fingerprint_digest(std::string_view text);

/// The checksum of the format: XXH3-64 with seed 0 (what `xxhsum -H3` prints), over a section's bytes.
std::uint64_t cache_file_checksum(std::span<const std::byte> bytes);

/// A file whose fingerprint is not the one expected: for another model, or another cache configuration.
class FingerprintMismatch : public FormatError {
public:
    using FormatError::FormatError;
};

/// What a cache file holds besides the keys and values.
struct CacheFileInfo {
    std::uint32_t version = 0;
    std::string element;              ///< "f32", "f16", "bf16", "q8_0", "q4_0" or "q4_0h"; "k=q8_0 v=q4_0" when they differ
    std::string key_element;          ///< the keys' element type ("q8_0")
    std::string value_element;        ///< the values' element type (the same as key_element in a version-1 file)
    std::vector<LayerShape> layers;   ///< kv heads and head size of each layer
    std::vector<std::int32_t> tokens; ///< the sequence's token ids; one cached position per token
    CacheFingerprint fingerprint;
    std::uint64_t file_bytes = 0;
};

struct SaveOptions {
    /// fsync the file and its directory before returning, so the file survives a crash or power loss.
    /// Off only for scratch files (it is what bounds save speed on a disk).
    bool durable = true;
    /// Permission bits of a file that did not exist before, less the process umask (as open(2) applies it).
    /// Private by default: a cache file holds a conversation's token ids. A file that exists keeps its own
    /// permission bits when it is replaced (not its owner: the new file belongs to the saving process).
    std::uint32_t new_file_mode = 0600;
};

namespace detail {

template <StorageElement T>
constexpr std::uint32_t element_code() {
    return ElementTraits<T>::file_code;
}

/// An element type as a file's header records it: its code and the bytes of one storage object.
struct FileElement {
    std::uint32_t code = 0;
    std::size_t bytes = 0;
};

template <StorageElement T>
constexpr FileElement file_element() {
    return FileElement{element_code<T>(), sizeof(T)};
}

/// The storage types of a cache that a file can hold: keys and values each of a type with a cache-file code
/// (they may differ: a version-2 file records both). ConfigError naming the type otherwise.
template <class C>
void check_file_elements(std::string_view what) {
    using K = key_element_t<C>;
    using V = value_element_t<C>;
    if (ElementTraits<K>::file_code == 0 || ElementTraits<V>::file_code == 0) {
        const bool keys = ElementTraits<K>::file_code == 0;
        throw ConfigError(fmt::format("{}: element type {} of the {} has no cache-file code (ElementTraits::file_code "
                                      "is 0)",
                                      what, keys ? element_name<K>() : element_name<V>(), keys ? "keys" : "values"));
    }
}

/// Writes a cache file to a temporary file next to the target and renames it into place on commit(), so a
/// reader sees either the old file or the complete new one. The destructor removes an uncommitted temp file.
/// Payload sections come in file order: layer 0 keys, layer 0 values, layer 1 keys, ...
class CacheFileWriter {
public:
    /// Writes a version-1 file when keys and values share an element type, else version 2.
    CacheFileWriter(std::filesystem::path path, FileElement keys, FileElement values, std::vector<LayerShape> layers, std::span<const std::int32_t> tokens,
                    const CacheFingerprint& fingerprint, SaveOptions options);
    ~CacheFileWriter();
    CacheFileWriter(const CacheFileWriter&) = delete;
    CacheFileWriter& operator=(const CacheFileWriter&) = delete;

    /// Appends bytes to the current payload section (moving to the next one when it is full).
    void write(const void* data, std::size_t bytes);
    /// Writes the section table and header, makes the file durable (if asked) and renames it into place.
    void commit();

private:
    struct State;
    std::unique_ptr<State> state_;
};

/// A validated, memory-mapped cache file. The constructor checks everything but the payload (magic, version,
/// header and table checksums, sizes, offsets, the metadata sections' checksums); verify_payload() checks the
/// rest. Throws FormatError (truncated, corrupted, not a cache file) or IoError.
class CacheFileReader {
public:
    explicit CacheFileReader(std::filesystem::path path);
    ~CacheFileReader();
    CacheFileReader(const CacheFileReader&) = delete;
    CacheFileReader& operator=(const CacheFileReader&) = delete;

    const CacheFileInfo& info() const;
    std::uint32_t key_element_code() const;
    std::uint32_t value_element_code() const;
    /// Throws FingerprintMismatch naming both sides unless the file's fingerprint equals `expected`.
    void check_fingerprint(const CacheFingerprint& expected) const;
    /// Checks the checksum of every payload section and that the padding between sections is zero.
    void verify_payload() const;
    /// Start of a layer's keys or values: [tokens][kv_heads * head_dim] elements, 64-byte aligned.
    const std::byte* payload(std::size_t layer, KV kind) const;
    const std::filesystem::path& path() const;
    /// FormatError if the file changed while mapped (see detail::MappedFile::check_unchanged); call it after
    /// copying out of payload().
    void check_unchanged() const;

private:
    struct State;
    std::unique_ptr<State> state_;
};

/// The storage type of a cache's keys (kind Keys) or values (kind Values).
template <class C, KV kind>
using kv_element_t = std::conditional_t<kind == KV::Keys, key_element_t<C>, value_element_t<C>>;

/// Copies positions [t0, t1) of one (layer, row) of the keys or values out of the cache's chunks into
/// `out` as [t1 - t0][heads][row] storage objects (row = storage_units<T>(dim)); throws if the chunks do not
/// cover every position exactly once.
template <KV kind, KVCacheReadable C>
void gather_positions(const C& cache, std::size_t layer, std::size_t row, std::size_t t0, std::size_t t1,
                      kv_element_t<C, kind>* out) {
    using T = kv_element_t<C, kind>;
    const std::size_t heads = cache.num_kv_heads(layer), dim = cache.head_dim(layer);
    const std::size_t units = storage_units<T>(dim);
    for (std::size_t h = 0; h < heads; ++h) {
        std::size_t covered = 0;
        for (const auto& chunk : cache.chunks(layer, row, h)) {
            const std::size_t from = std::max(chunk.start, t0), to = std::min(chunk.start + chunk.length, t1);
            std::size_t stride = 0;
            const T* base = nullptr;
            if constexpr (kind == KV::Keys) {
                stride = chunk.key_row_stride(dim);
                base = chunk.keys;
            } else {
                stride = chunk.value_row_stride(dim);
                base = chunk.values;
            }
            for (std::size_t p = from; p < to; ++p) {
                std::copy_n(base + (p - chunk.start) * stride, units, out + ((p - t0) * heads + h) * units);
            }
            covered += from < to ? to - from : 0;
        }
        if (covered != t1 - t0) {
            throw ShapeError(fmt::format("cache chunks of layer {} row {} head {} cover {} of positions [{}, {})",
                                         layer, row, h, covered, t0, t1));
        }
    }
}

}  // namespace detail

namespace detail {
/// Writes positions [0, n) of one (layer, row) half — keys or values — through a staging block of ~256 KiB
/// (it stays in cache between gathering, hashing and writing).
template <KV kind, KVCacheReadable C>
void write_layer_half(CacheFileWriter& writer, const C& cache, std::size_t layer, std::size_t row, std::size_t n,
                      std::vector<kv_element_t<C, kind>>& staging) {
    using T = kv_element_t<C, kind>;
    const std::size_t width = cache.num_kv_heads(layer) * storage_units<T>(cache.head_dim(layer));  // objects
    const std::size_t block_tokens = std::max<std::size_t>(1, (256u << 10) / (width * sizeof(T)));
    staging.resize(std::max(staging.size(), std::min(block_tokens, std::max<std::size_t>(n, 1)) * width));
    for (std::size_t t0 = 0; t0 < n; t0 += block_tokens) {
        const std::size_t t1 = std::min(n, t0 + block_tokens);
        gather_positions<kind>(cache, layer, row, t0, t1, staging.data());
        writer.write(staging.data(), (t1 - t0) * width * sizeof(T));
    }
}
}  // namespace detail

/// Saves batch row `row` of `cache` — every layer's keys and values for the positions of `tokens` — with the
/// token ids and fingerprint to `path`, atomically (a temporary file in the same directory, fsync, rename):
/// an existing file is replaced only by a complete new one. Every layer of the row must hold exactly
/// tokens.size() positions (ShapeError otherwise, and no file is written). Keys and values may have different
/// element types (a version-2 file records both; one type gives a version-1 file), each with a cache-file code
/// (ConfigError otherwise).
/// The path: a symbolic link there is refused (IoError), neither followed nor replaced by a regular file; so is
/// anything else that is not a regular file (directory, FIFO, device), before anything is written. Permissions:
/// see SaveOptions::new_file_mode. Temporary files are named "<file>.tmp.<pid>.<hex>"; those of a save whose
/// process has died (kill -9 mid-save) are removed by the next save to the same path, while the temp file of
/// a concurrent save in a live process is left alone. On failure (full disk, I/O error) the temp file and its
/// descriptor are released and the old file is untouched.
template <KVCacheReadable C>
void save_cache_file(const std::filesystem::path& path, const C& cache, std::size_t row,
                     std::span<const std::int32_t> tokens, const CacheFingerprint& fingerprint,
                     SaveOptions options = {}) {
    using K = key_element_t<C>;
    using V = value_element_t<C>;
    detail::check_file_elements<C>("save_cache_file");
    detail::check_index("batch row", row, cache.batch_size());
    const std::size_t layers = cache.num_layers(), n = tokens.size();
    std::vector<LayerShape> shapes(layers);
    for (std::size_t l = 0; l < layers; ++l) {
        if (cache.seq_len(l, row) != n) {
            throw ShapeError(fmt::format("save_cache_file: layer {} row {} holds {} positions but {} token ids were given",
                                         l, row, cache.seq_len(l, row), n));
        }
        shapes[l] = LayerShape{cache.num_kv_heads(l), cache.head_dim(l)};
    }
    detail::CacheFileWriter writer(path, detail::file_element<K>(), detail::file_element<V>(), shapes, tokens,
                                   fingerprint, options);
    std::vector<K> key_staging;
    std::vector<V> value_staging;
    for (std::size_t l = 0; l < layers; ++l) {  // file order: layer 0 keys, layer 0 values, layer 1 keys, ...
        detail::write_layer_half<KV::Keys>(writer, cache, l, row, n, key_staging);
        detail::write_layer_half<KV::Values>(writer, cache, l, row, n, value_staging);
    }
    writer.commit();
}

/// Whether read_cache_file_info also checks the payload's checksums (reading every byte of it).
enum class VerifyPayload : bool { no = false, yes = true };

/// Reads a cache file's header, fingerprint and token ids, checking everything but the payload's
/// checksums (or those too, with VerifyPayload::yes). Nothing is loaded.
CacheFileInfo read_cache_file_info(const std::filesystem::path& path, VerifyPayload verify = VerifyPayload::no);

/// Loads a file written by save_cache_file into batch row `row` of `cache`, which must be empty in every
/// layer, and returns what the file holds (its token ids above all). The file is memory-mapped and all of it
/// is validated before the cache is touched: a file that is not a cache file, truncated or corrupted
/// (FormatError), for another model or cache configuration — element types of keys or values, layer count
/// or shapes (FingerprintMismatch) —, or larger than the cache's capacity (CapacityError) leaves the cache
/// unchanged. Copies storage elements bit for bit through the cache's append_elements when it has one, else
/// converts through append(floats).
template <KVCacheLike C>
CacheFileInfo load_cache_file(const std::filesystem::path& path, C& cache, std::size_t row,
                              const CacheFingerprint& expected) {
    using K = key_element_t<C>;
    using V = value_element_t<C>;
    detail::check_file_elements<C>("load_cache_file");
    detail::CacheFileReader file(path);
    const CacheFileInfo& info = file.info();
    file.check_fingerprint(expected);
    // The caller's fingerprint says which configuration to expect; the target cache must have it too. The
    // element types are compared by code, not through the fingerprint text, which is the caller's to choose.
    if (file.key_element_code() != detail::element_code<K>() || file.value_element_code() != detail::element_code<V>()) {
        throw FingerprintMismatch(fmt::format("{}: file is for another cache configuration: it stores keys as {} and "
                                              "values as {}, the cache stores keys as {} and values as {}",
                                              path.string(), info.key_element, info.value_element, element_name<K>(),
                                              element_name<V>()));
    }
    const std::size_t layers = cache.num_layers(), n = info.tokens.size();
    bool same_shape = info.layers.size() == layers;
    for (std::size_t l = 0; same_shape && l < layers; ++l) {
        same_shape = info.layers[l] == LayerShape{cache.num_kv_heads(l), cache.head_dim(l)};
    }
    if (!same_shape) {
        throw FingerprintMismatch(fmt::format("{}: file is for another cache configuration: file has \"{}\", cache is \"{}\"",
                                              path.string(), info.fingerprint.cache, cache_fingerprint(cache)));
    }
    detail::check_index("batch row", row, cache.batch_size());
    for (std::size_t l = 0; l < layers; ++l) {
        if (cache.seq_len(l, row) != 0) {
            throw ConfigError(fmt::format("load_cache_file: layer {} row {} already holds {} positions; load into an "
                                          "empty row",
                                          l, row, cache.seq_len(l, row)));
        }
    }
    // Fail before the (long) payload check when the cache visibly cannot take the file.
    if constexpr (BoundedKVCache<C>) {
        if (!can_append(cache, 0, row, n)) {
            throw CapacityError(fmt::format("{}: {} cached positions do not fit a cache of capacity {}", path.string(),
                                            n, static_cast<std::size_t>(cache.capacity())));
        }
    }
    file.verify_payload();
    if constexpr (GrowableKVCache<C>) {
        if (cache.growth() == Growth::Grow) cache.reserve(n);  // allocates once, before anything is written
    }
    try {
        std::vector<float> keys, values;  // only for caches without append_elements
        for (std::size_t l = 0; l < layers; ++l) {
            const K* k = reinterpret_cast<const K*>(file.payload(l, KV::Keys));
            const V* v = reinterpret_cast<const V*>(file.payload(l, KV::Values));
            if constexpr (ElementAppendableKVCache<C>) {
                cache.append_elements(l, row, k, v, n);
            } else {
                const std::size_t count = n * info.layers[l].token_width();
                keys.resize(count);
                values.resize(count);
                convert_to_float(k, keys.data(), count);
                convert_to_float(v, values.data(), count);
                cache.append(l, row, std::span<const float>(keys), std::span<const float>(values), n);
            }
        }
        file.check_unchanged();  // a file truncated during the copy read as zeros: undo the load below
    } catch (...) {
        // Only a cache whose appends can fail after the checks above gets here (out of pool blocks, say):
        // undo the layers already written where the cache lets us (truncate_row, or truncate of a
        // single-row cache).
        if constexpr (RowTruncatableKVCache<C>) {
            cache.truncate_row(row, 0);
        } else if constexpr (TruncatableKVCache<C>) {
            if (cache.batch_size() == 1) cache.truncate(0);  // a one-sequence view (e.g. PagedSequence)
        }
        throw;
    }
    return info;
}

}  // namespace kvcache
