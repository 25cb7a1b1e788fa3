// bench_bandwidth: this machine's memory bandwidth, the ceiling for every memory-bound kernel here.
//
// BM_ReadBandwidth/threads:N — a STREAM-like sum over a 1 GiB float array (vectorised, 8 accumulators, so it
//   is limited by memory, not by adds) on N threads, each summing a contiguous part.
// BM_CopyBandwidth/threads:N — memcpy of 512 MiB into another 512 MiB (1 GiB touched), for reference;
//   counted STREAM's way as bytes read + bytes written.
// Each case runs kPasses timed passes after one warm-up; counters give the best and median pass in GB/s
// (1e9 bytes/s). The read passes are timed in 8 MiB blocks: best_block_GB/s is the fastest block, the figure
// that survives other processes taking the core away now and then during a 40 ms pass. Run: bench_bandwidth [--benchmark_format=json]
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstddef>
#include <vector>

#include "read_bandwidth.hpp"

namespace {

using namespace kvcache_bench;

constexpr std::size_t kArrayBytes = std::size_t(1) << 30;
constexpr int kPasses = 9;

void report(benchmark::State& state, const std::vector<double>& seconds, double bytes_per_pass) {
    std::vector<double> rates;
    for (double s : seconds) rates.push_back(bytes_per_pass / s / 1e9);
    const Bandwidth bw = summarise_rates(rates);
    state.counters["best_GB/s"] = bw.best_gbps;
    state.counters["median_GB/s"] = bw.median_gbps;
    state.counters["threads"] = double(state.range(0));
    state.counters["MiB"] = bytes_per_pass / double(1 << 20);
}

void BM_ReadBandwidth(benchmark::State& state) {
    const int threads = int(state.range(0));
    const std::size_t n = kArrayBytes / sizeof(float);
    const auto a = make_array(n, threads);
    float sink = 0.0f;
    double fastest_block = 1e30;
    timed_sum_pass(a.data(), n, threads, sink, fastest_block);  // warm-up: threads started, TLB and pages settled
    fastest_block = 1e30;
    std::vector<double> seconds;
    for (auto _ : state) {
        const double s = timed_sum_pass(a.data(), n, threads, sink, fastest_block);
        state.SetIterationTime(s);
        seconds.push_back(s);
    }
    benchmark::DoNotOptimize(sink);
    report(state, seconds, double(kArrayBytes));
    state.counters["best_block_GB/s"] = double(kBlockBytes) / fastest_block / 1e9;
}

void BM_CopyBandwidth(benchmark::State& state) {
    const int threads = int(state.range(0));
    const std::size_t n = kArrayBytes / 2 / sizeof(float);
    const auto src = make_array(n, threads);
    auto dst = make_array(n, threads);
    timed_copy_pass(src.data(), dst.data(), n, threads);
    std::vector<double> seconds;
    for (auto _ : state) {
        const double s = timed_copy_pass(src.data(), dst.data(), n, threads);
        state.SetIterationTime(s);
        seconds.push_back(s);
        benchmark::ClobberMemory();
    }
    benchmark::DoNotOptimize(dst.data());
    report(state, seconds, 2.0 * double(n * sizeof(float)));  // read + written
}

void thread_counts(benchmark::internal::Benchmark* b) {
    b->ArgName("threads")->Arg(1);
    if (available_threads() >= 2) b->Arg(2);
    b->Iterations(kPasses)->UseManualTime()->Unit(benchmark::kMillisecond);
}

BENCHMARK(BM_ReadBandwidth)->Apply(thread_counts);
BENCHMARK(BM_CopyBandwidth)->Apply(thread_counts);

}  // namespace

BENCHMARK_MAIN();
