// libFuzzer target for the cache-file reader. The first byte picks (odd) the raw input as a cache file, or
// (even) a valid file written by save_cache_file for a small cache whose shape, tokens and values come from
// the input, with bytes then overwritten at input-chosen offsets (the checksums make raw fuzzing shallow;
// this reaches every check behind them). Each file is read with read_cache_file_info (payload verified) and
// loaded into an empty cache: a kvcache::Error is fine, but a failed load must leave the cache empty, and a
// file that loads must give back exactly what was saved when it was not damaged. Bit 1 of the first byte picks
// the cache: f32 keys and values (a version-1 file) or f32 keys with f16 values (version 2, two element types).
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/error.hpp"
#include "kvcache/persist/cache_file.hpp"

namespace {

constexpr const char* kTarget = "cache_file_fuzz";

// One memfd per process, rewritten for each input; its /proc path is what the reader opens and maps.
struct MemFile {
    int fd = ::memfd_create("cache_file_fuzz", MFD_CLOEXEC);
    std::string path = "/proc/self/fd/" + std::to_string(fd);
    void write(const void* data, std::size_t n) {
        if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, data, n, 0) != static_cast<ssize_t>(n)) std::abort();
    }
    std::vector<char> read() const {
        const off_t n = ::lseek(fd, 0, SEEK_END);
        std::vector<char> out(static_cast<std::size_t>(n));
        if (n > 0 && ::pread(fd, out.data(), out.size(), 0) != n) std::abort();
        return out;
    }
};

template <class Cache>
std::size_t total_positions(const Cache& cache) {
    std::size_t n = 0;
    for (std::size_t l = 0; l < cache.num_layers(); ++l) n += cache.seq_len(l, 0);
    return n;
}

template <class Cache>
int run(kvcache::fuzz::Input& in, std::uint8_t mode, MemFile& file, const std::string& save_dir) {
    using K = kvcache::key_element_t<Cache>;
    using V = kvcache::value_element_t<Cache>;
    const kvcache::CacheFingerprint fingerprint{"fuzz-model", "fuzz-cache"};
    std::vector<kvcache::LayerShape> shapes;
    std::vector<std::int32_t> tokens;
    bool pristine = false;  // the file is exactly what save_cache_file wrote
    std::vector<char> saved_bytes;
    Cache* source = nullptr;
    std::unique_ptr<Cache> source_cache;

    if (mode % 2 == 1) {
        const std::string_view rest = in.rest();
        file.write(rest.data(), rest.size());
        shapes = {{std::size_t{1} + (mode >> 1) % 4, 4}};
    } else {
        const std::size_t layers = 1 + in.byte() % 3, n = in.byte() % 9;
        for (std::size_t l = 0; l < layers; ++l) {
            const std::size_t heads = 1 + in.byte() % 3u, dim = 1 + in.byte() % 8u;
            shapes.push_back({heads, dim});
        }
        source_cache = std::make_unique<Cache>(shapes, 1, 8);
        source = source_cache.get();
        for (std::size_t t = 0; t < n; ++t) tokens.push_back(static_cast<std::int32_t>(in.byte()));
        for (std::size_t l = 0; l < layers; ++l) {
            std::vector<float> k(n * shapes[l].token_width()), v(k.size());
            for (auto& x : k) x = static_cast<float>(in.byte()) - 128.0f;
            for (auto& x : v) x = static_cast<float>(in.byte()) / 7.0f;
            source->append(l, 0, k, v, n);
        }
        const std::string path = save_dir + "/c.kvc";
        kvcache::save_cache_file(path, *source, 0, tokens, fingerprint, kvcache::SaveOptions{.durable = false});
        std::FILE* f = std::fopen(path.c_str(), "rb");
        if (!f) std::abort();
        std::vector<char> bytes;
        char buffer[4096];
        for (std::size_t got; (got = std::fread(buffer, 1, sizeof buffer, f)) > 0;) bytes.insert(bytes.end(), buffer, buffer + got);
        std::fclose(f);
        saved_bytes = bytes;
        pristine = true;
        // Damage: (offset, value) pairs, or a truncation.
        while (in.remaining() >= 3 && !bytes.empty()) {
            const auto offset = in.value<std::uint16_t>() % (bytes.size() + 1);
            const std::uint8_t value = in.byte();
            if (offset == bytes.size()) {
                bytes.resize(value % bytes.size());
            } else {
                bytes[offset] = static_cast<char>(value);
            }
            pristine = pristine && bytes == saved_bytes;
            if (bytes.empty()) break;
        }
        file.write(bytes.data(), bytes.size());
    }

    try {
        (void)kvcache::read_cache_file_info(file.path, kvcache::VerifyPayload::yes);
    } catch (const kvcache::Error&) {
    }
    Cache target(shapes, 1, 8);
    try {
        const auto info = kvcache::load_cache_file(file.path, target, 0, fingerprint);
        if (info.tokens.size() != target.seq_len(0, 0)) kvcache::fuzz::broken(kTarget, "token count vs positions", "");
        if (source && pristine) {
            if (info.tokens != tokens) kvcache::fuzz::broken(kTarget, "tokens changed in a round trip", "");
            for (std::size_t l = 0; l < shapes.size(); ++l) {
                for (std::size_t h = 0; h < shapes[l].kv_heads; ++h) {
                    const auto a = source->keys(l, 0, h), b = target.keys(l, 0, h);
                    const auto c = source->values(l, 0, h), d = target.values(l, 0, h);
                    const std::size_t key_bytes = tokens.size() * shapes[l].head_dim * sizeof(K);
                    const std::size_t value_bytes = tokens.size() * shapes[l].head_dim * sizeof(V);
                    if (std::memcmp(a.data(), b.data(), key_bytes) != 0 || std::memcmp(c.data(), d.data(), value_bytes) != 0)
                        kvcache::fuzz::broken(kTarget, "keys or values changed in a round trip", std::to_string(l));
                }
            }
        }
    } catch (const kvcache::Error&) {
        if (total_positions(target) != 0) kvcache::fuzz::broken(kTarget, "a failed load changed the cache", "");
        if (source && pristine) kvcache::fuzz::broken(kTarget, "a pristine file was refused", "");
    }
    return 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static MemFile file;
    static const std::string save_dir = [] {
        char tmpl[] = "/tmp/cache_file_fuzz.XXXXXX";
        if (::mkdtemp(tmpl) == nullptr) std::abort();
        return std::string(tmpl);
    }();
    kvcache::fuzz::Input in(data, size);
    const std::uint8_t mode = in.byte();
    if ((mode >> 1) & 1) return run<kvcache::MultiLayerKVCache<float, kvcache::fp16>>(in, mode, file, save_dir);
    return run<kvcache::MultiLayerKVCache<float>>(in, mode, file, save_dir);
}
