// bench_append: appending K/V to a cache — one token (a decode step) and a 512-token chunk (a prefill piece).
//
// Shape: one layer of 3 kv heads of size 64 (the decode-attention benchmark's), batch 1, fp32, fp16, q8_0, q4_0
// and q4_0h (the quantised types encode as they append: q4_0h's least-squares search is the costly one), for
// KVCache<1, 3, 64, T> (dims at compile time) and MultiLayerKVCache<T> (dims at run time). The input is K and V
// as [n_tokens][3 * 64] floats; append converts it to T and scatters it into the [head][position][dim] layout.
// Counter GB (shown as GB=x/s) = cache bytes written per second of CPU time (2 * 3 * 64 values per token times
// the type's bytes per value, 1e9 bytes); tokens = tokens appended per second; bytes_per_second is the same as
// GB in binary units. The cache holds kCapacity positions and is cleared (a metadata operation) whenever the
// next append would not fit.
//
// Run: bench_append [--benchmark_format=json]
#include <benchmark/benchmark.h>

#include <cstddef>
#include <string>
#include <vector>

#include "kvcache/cache/kv_cache.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/element_types.hpp"
#include "kvcache/testing/random.hpp"

namespace {

using namespace kvcache;

constexpr std::size_t kKVHeads = 3;
constexpr std::size_t kHeadDim = 64;
constexpr std::size_t kCapacity = 16384;

template <class T>
std::string type_name() {
    if constexpr (std::is_same_v<T, float>) return "fp32";
    else if constexpr (std::is_same_v<T, fp16>) return "fp16";
    else return std::string(element_name<T>());
}

template <class Cache>
void BM_Append(benchmark::State& state, Cache& cache) {
    using T = typename Cache::element_type;
    const auto n = static_cast<std::size_t>(state.range(0));
    const std::size_t width = kKVHeads * kHeadDim;
    const auto k = testing::random_normal(n * width, 21), v = testing::random_normal(n * width, 22);
    for (auto _ : state) {
        if (cache.seq_len(0, 0) + n > kCapacity) cache.clear();
        cache.append(0, 0, k, v, n);
        benchmark::ClobberMemory();
    }
    const double bytes = double(state.iterations()) * double(n * 2 * width / block_values_v<T> * sizeof(T));
    state.SetBytesProcessed(static_cast<std::int64_t>(bytes));
    // rate counters: shown as "GB=x/s"; Google Benchmark divides them by CPU time (steady on a busy machine)
    state.counters["GB"] = benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsRate);
    state.counters["tokens"] = benchmark::Counter(double(state.iterations() * n), benchmark::Counter::kIsRate);
}

template <class T>
void register_type() {
    const std::string t = type_name<T>();
    benchmark::RegisterBenchmark(("BM_Append/KVCache/" + t).c_str(), [](benchmark::State& s) {
        KVCache<1, kKVHeads, kHeadDim, T> cache(1, kCapacity);
        BM_Append(s, cache);
    })->ArgName("tokens")->Arg(1)->Arg(512);
    benchmark::RegisterBenchmark(("BM_Append/MultiLayerKVCache/" + t).c_str(), [](benchmark::State& s) {
        MultiLayerKVCache<T> cache(CacheShape{1, kKVHeads, kHeadDim}, 1, kCapacity);
        BM_Append(s, cache);
    })->ArgName("tokens")->Arg(1)->Arg(512);
}

}  // namespace

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    register_type<float>();
    register_type<fp16>();
    register_type<q8_0>();
    register_type<q4_0>();
    register_type<q4_0h>();
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
