// memory_report: KV-cache memory per token and in total for a model and a length, as the formula gives it,
// as the cache reports it (bytes_allocated()) and as the process's resident memory grows when it is filled.
//
//   memory_report [--model PATH | --random] [--json OUT.json]
// Default model: $KVCACHE_MODEL or models/SmolLM2-135M-Instruct.Q4_1.gguf (only its config is read);
// --random: the 6-layer, 8-head, 512-wide model of the benchmarks. Prints one table for lengths 128..8192
// and fp32/fp16/bf16, and exits 1 if any allocation differs from 2·layers·kv_heads·head_dim·bytes·length.
#include <malloc.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/element_types.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/model/gguf.hpp"

#ifndef KVCACHE_SOURCE_DIR
#define KVCACHE_SOURCE_DIR "."
#endif

namespace {

/// Resident set size of this process, from /proc/self/statm (pages → bytes).
long long rss_bytes() {
    std::ifstream statm("/proc/self/statm");
    long long size = 0, resident = 0;
    statm >> size >> resident;
    return resident * static_cast<long long>(sysconf(_SC_PAGESIZE));
}

struct Row {
    std::string dtype;
    std::size_t length = 0;
    std::size_t bytes_per_token = 0;
    std::size_t computed = 0;
    std::size_t allocated = 0;
    long long rss_growth = 0;
};

template <kvcache::StorageElement T>
Row measure(const kvcache::DecoderConfig& c, std::size_t length, const char* dtype) {
    Row r;
    r.dtype = dtype;
    r.length = length;
    r.bytes_per_token = 2 * c.n_layers * c.n_kv_heads * c.head_dim * sizeof(T);
    r.computed = r.bytes_per_token * length;
    const long long before = rss_bytes();
    {
        kvcache::MultiLayerKVCache<T> cache(kvcache::CacheShape{c.n_layers, c.n_kv_heads, c.head_dim}, 1, length);
        // Fill every position so each page is written (the buffer is also zeroed at allocation).
        const std::vector<float> kv(length * c.kv_dim(), 0.5f);
        for (std::size_t l = 0; l < c.n_layers; ++l) cache.append(l, 0, kv, kv, length);
        r.allocated = cache.bytes_allocated();
        r.rss_growth = rss_bytes() - before - static_cast<long long>(kv.size() * sizeof(float));
    }
    return r;
}

std::string mib(double bytes) { return fmt::format("{:.2f}", bytes / 1048576.0); }

}  // namespace

int main(int argc, char** argv) {
    std::string path = std::getenv("KVCACHE_MODEL") ? std::getenv("KVCACHE_MODEL")
                                                    : std::string(KVCACHE_SOURCE_DIR) +
                                                          "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    bool random = false;
    std::string json_path;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--random") {
            random = true;
        } else if (a == "--model" && i + 1 < argc) {
            path = argv[++i];
        } else if (a == "--json" && i + 1 < argc) {
            json_path = argv[++i];
        } else {
            fmt::print(stderr, "usage: memory_report [--model PATH | --random] [--json OUT.json]\n");
            return 2;
        }
    }
    // Every cache buffer gets its own mmap and goes back to the system when freed, so the RSS growth of
    // one measurement is not hidden by heap memory a previous one left behind.
    mallopt(M_MMAP_THRESHOLD, 16 * 1024);

    kvcache::DecoderConfig c;
    std::string name;
    try {
        if (random) {
            c = kvcache::DecoderConfig::small_test_model();
            name = "random 6x8x512 (benchmark model)";
        } else {
            if (!std::filesystem::exists(path)) {
                fmt::print(stderr, "memory_report: {} not found (run scripts/fetch-model.sh, or pass --random)\n", path);
                return 1;
            }
            c = kvcache::DecoderConfig::from_gguf(kvcache::gguf::File::open(path));
            name = std::filesystem::path(path).filename().string();
        }
    } catch (const kvcache::Error& e) {
        fmt::print(stderr, "memory_report: {}\n", e.what());
        return 1;
    }

    fmt::print("KV-cache memory of {}: {} layers x {} kv heads x head_dim {} (K and V), batch 1\n", name, c.n_layers,
               c.n_kv_heads, c.head_dim);
    fmt::print("formula: 2 * layers * kv_heads * head_dim * bytes_per_element * length\n");
    fmt::print("{:>5} {:>7} {:>10} {:>14} {:>16} {:>5} {:>15} {:>9}\n", "type", "length", "B/token", "computed MiB",
               "allocated MiB", "same", "RSS growth MiB", "RSS/alloc");
    std::vector<Row> rows;
    bool all_match = true;
    for (std::size_t length = 128; length <= 8192; length *= 2) {
        for (int t = 0; t < 3; ++t) {
            Row r = t == 0   ? measure<float>(c, length, "fp32")
                    : t == 1 ? measure<kvcache::fp16>(c, length, "fp16")
                             : measure<kvcache::bf16>(c, length, "bf16");
            const bool same = r.allocated == r.computed;
            all_match = all_match && same;
            fmt::print("{:>5} {:>7} {:>10} {:>14} {:>16} {:>5} {:>15} {:>9.3f}\n", r.dtype, r.length, r.bytes_per_token,
                       mib(double(r.computed)), mib(double(r.allocated)), same ? "yes" : "NO", mib(double(r.rss_growth)),
                       double(r.rss_growth) / double(r.allocated));
            rows.push_back(r);
        }
    }
    fmt::print("allocated == formula for every row: {}\n", all_match ? "yes" : "NO");

    if (!json_path.empty()) {
        std::ofstream out(json_path);
        out << "{\n  \"model\": \"" << name << "\",\n";
        out << fmt::format("  \"n_layers\": {}, \"n_kv_heads\": {}, \"head_dim\": {},\n", c.n_layers, c.n_kv_heads,
                           c.head_dim);
        out << "  \"rows\": [\n";
        for (std::size_t i = 0; i < rows.size(); ++i) {
            const Row& r = rows[i];
            out << fmt::format(
                "    {{\"dtype\": \"{}\", \"length\": {}, \"bytes_per_token\": {}, \"computed\": {}, \"allocated\": {}, "
                "\"rss_growth\": {}}}{}\n",
                r.dtype, r.length, r.bytes_per_token, r.computed, r.allocated, r.rss_growth, i + 1 < rows.size() ? "," : "");
        }
        out << "  ]\n}\n";
        if (!out) {
            fmt::print(stderr, "memory_report: cannot write {}\n", json_path);
            return 1;
        }
    }
    return all_match ? 0 : 1;
}
