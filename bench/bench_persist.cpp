// bench_persist: how fast a cache file saves and loads, against this machine's memcpy bandwidth measured in
// the same run. The cache is 2048 tokens of the default model's shape (SmolLM2-135M: 30 layers, 3 kv heads
// of size 64) in a MultiLayerKVCache, fp32 and fp16.
//
// Each figure is the best (minimum time) of --runs runs, in GB/s = 1e9 file bytes per second:
//   memcpy            one memcpy of a buffer the size of the cache's K/V (page-touched source and target)
//   write()(+fsync)   the file's bytes written plainly to a new file (1 MiB writes): the ceiling for save
//   save              save_cache_file, durable: temp file, write, fsync, rename, fsync of the directory
//   save (no fsync)   the same with SaveOptions::durable = false: serialising and the page cache only
//   save, replacing   durable, over an existing file (the rename then also frees the old file's pages)
//   map               open + mmap(MAP_POPULATE) + header/table/metadata checks, no payload touched
//   verify            read_cache_file_info(path, VerifyPayload::yes): map + every checksum, nothing copied
//   load warm         load_cache_file with the file in the page cache (map, verify, copy into the cache)
//   load cold         the same after posix_fadvise(DONTNEED) dropped the file from the page cache, so the
//                     mapping reads the disk (a virtual disk may still be cached by its host)
// Run: bench_persist [--runs N] [--tokens N] [--dir DIR]   (DIR default: the system temp directory)
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/detail/aligned_buffer.hpp"
#include "kvcache/persist/cache_file.hpp"
#include "kvcache/testing/random.hpp"

namespace {

using namespace kvcache;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kLayers = 30, kKvHeads = 3, kHeadDim = 64;

double best_seconds(int runs, const std::function<void()>& prepare, const std::function<void()>& body) {
    double best = 1e300;
    for (int r = 0; r < runs; ++r) {
        prepare();
        const auto t0 = Clock::now();
        body();
        best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
    }
    return best;
}

// Drops the file's pages from the page cache (they are clean after an fsync), so the next read hits the disk.
bool drop_from_page_cache(const fs::path& path) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) return false;
    ::fdatasync(fd);
    const bool ok = ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0;
    ::close(fd);
    return ok;
}

// What the file system gives for the same bytes written plainly: the ceiling for save.
double plain_write_seconds(const fs::path& path, const std::vector<unsigned char>& bytes, bool durable, int runs) {
    return best_seconds(runs, [&] { fs::remove(path); }, [&] {
        const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        for (std::size_t at = 0; fd >= 0 && at < bytes.size();) {
            const ssize_t n = ::write(fd, bytes.data() + at, std::min<std::size_t>(bytes.size() - at, 1 << 20));
            if (n <= 0) break;
            at += std::size_t(n);
        }
        if (durable) ::fsync(fd);
        ::close(fd);
    });
}

double memcpy_gbps(std::size_t bytes, int runs) {
    detail::AlignedBuffer<unsigned char> src(bytes), dst(bytes);
    std::memset(src.data(), 1, bytes);
    std::memset(dst.data(), 2, bytes);
    const double s = best_seconds(runs, [] {}, [&] { std::memcpy(dst.data(), src.data(), bytes); });
    return double(bytes) / s / 1e9;
}

template <class T>
void run(std::size_t tokens, int runs, const fs::path& dir) {
    MultiLayerKVCache<T> source(CacheShape{kLayers, kKvHeads, kHeadDim}, 1, tokens);
    const auto keys = testing::random_uniform(tokens * kKvHeads * kHeadDim, 1, -3.0f, 3.0f);
    const auto values = testing::random_uniform(tokens * kKvHeads * kHeadDim, 2, -3.0f, 3.0f);
    for (std::size_t l = 0; l < kLayers; ++l) source.append(l, 0, keys, values, tokens);
    std::vector<std::int32_t> ids(tokens);
    for (std::size_t i = 0; i < tokens; ++i) ids[i] = std::int32_t(i % 49152);
    const auto fp = make_fingerprint(fingerprint_digest(std::string_view("SmolLM2-135M-Instruct shape")), source);
    const fs::path path = dir / ("bench_persist_" + std::to_string(::getpid()) + ".kvc");

    const double payload = double(source.bytes_used());
    const double gbps_memcpy = memcpy_gbps(source.bytes_used(), runs);

    // Saved to a new path each run, like the plain writes (replacing a file adds freeing the old one's pages).
    const auto remove = [&] { fs::remove(path); };
    const double save_durable = best_seconds(runs, remove, [&] { save_cache_file(path, source, 0, ids, fp); });
    const double save_replace = best_seconds(runs, [] {}, [&] { save_cache_file(path, source, 0, ids, fp); });
    const double save_fast = best_seconds(runs, remove, [&] {
        save_cache_file(path, source, 0, ids, fp, SaveOptions{.durable = false});
    });
    save_cache_file(path, source, 0, ids, fp);  // durable, so its pages are clean and can be dropped
    const double file = double(fs::file_size(path));

    const std::vector<unsigned char> file_bytes(std::size_t(file), 7);
    const fs::path plain = dir / ("bench_persist_plain_" + std::to_string(::getpid()));
    const double write_durable = plain_write_seconds(plain, file_bytes, true, runs);
    const double write_fast = plain_write_seconds(plain, file_bytes, false, runs);
    fs::remove(plain);

    MultiLayerKVCache<T> target(CacheShape{kLayers, kKvHeads, kHeadDim}, 1, tokens);
    load_cache_file(path, target, 0, fp);  // touch the target once; every timed run then starts from clear()
    if (std::memcmp(target.key_data(29, 0), source.key_data(29, 0), tokens * kHeadDim * sizeof(T)) != 0) {
        std::fprintf(stderr, "load is not bit-exact\n");
        std::exit(1);
    }
    const double map = best_seconds(runs, [] {}, [&] { detail::CacheFileReader reader(path); });
    const double verify = best_seconds(runs, [] {}, [&] { read_cache_file_info(path, VerifyPayload::yes); });
    const double load_warm = best_seconds(runs, [&] { target.clear(); }, [&] { load_cache_file(path, target, 0, fp); });
    bool cold_ok = true;
    const double load_cold = best_seconds(
        runs, [&] {
            target.clear();
            cold_ok = drop_from_page_cache(path) && cold_ok;
        },
        [&] { load_cache_file(path, target, 0, fp); });
    fs::remove(path);

    const char* name = element_name<T>().data();
    std::printf("%s: %zu tokens, K/V %.1f MB, file %.1f MB\n", name, tokens, payload / 1e6, file / 1e6);
    auto line = [&](const char* what, double seconds) {
        std::printf("  %-16s %8.2f ms  %6.2f GB/s  (%3.0f%% of memcpy)\n", what, seconds * 1e3, file / seconds / 1e9,
                    100.0 * file / seconds / 1e9 / gbps_memcpy);
    };
    std::printf("  %-16s %8.2f ms  %6.2f GB/s\n", "memcpy", payload / gbps_memcpy / 1e6, gbps_memcpy);
    line("write()+fsync", write_durable);
    line("write()", write_fast);
    line("save", save_durable);
    line("save (no fsync)", save_fast);
    line("save, replacing", save_replace);
    line("map", map);
    line("verify", verify);
    line("load warm", load_warm);
    if (cold_ok) line("load cold", load_cold);
    else std::printf("  load cold: could not drop the file from the page cache\n");
}

}  // namespace

int main(int argc, char** argv) {
    int runs = 5;
    std::size_t tokens = 2048;
    fs::path dir = fs::temp_directory_path();
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string arg = argv[i];
        if (arg == "--runs") runs = std::max(1, std::atoi(argv[i + 1]));
        else if (arg == "--tokens") tokens = std::size_t(std::max(1, std::atoi(argv[i + 1])));
        else if (arg == "--dir") dir = argv[i + 1];
        else {
            std::fprintf(stderr, "usage: bench_persist [--runs N] [--tokens N] [--dir DIR]\n");
            return 2;
        }
    }
    std::printf("bench_persist: best of %d runs, files in %s\n", runs, dir.c_str());
    run<float>(tokens, runs, dir);
    run<fp16>(tokens, runs, dir);
    return 0;
}
