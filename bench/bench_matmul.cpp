// bench_matmul: the int8 weight product (MatmulPrecision::int8) against the machine's own int8 peak, to show how
// close the kernel comes to what the cores can do.
//
//   bench_matmul [--quick] [google-benchmark flags, e.g. --benchmark_format=json]
//
// --quick: 0.2 s per case instead of 1 s (~10 s in all on 2 cores instead of ~50 s). The threads:2 cases need
// two idle cores: every product ends at a barrier, so a core taken by another process halves them.
//
// Names:
//   BM_MatmulInt8/<q4_1|q8_0>/tokens:<n>/threads:<t>/<hot|cold>  matmul of a 1536 x 576 matrix (SmolLM2-135M's
//                           MLP shape) with n = 1, 8, 16 token rows on t threads. hot: the same matrix every
//                           iteration (it stays in cache: compute bound). cold: round-robin over copies that add
//                           up to more than 64 MiB, so every product streams its weights from DRAM, like a decode
//                           step. Counters: GMACps (rows * cols * n multiply-adds per second, in 1e9),
//                           GBps (weight bytes read per second), peak_fraction (GMACps / BM_VnniPeak's
//                           best_GMACps for t threads; only on builds with AVX-512 VNNI).
//   BM_VnniPeak/threads:<t> the int8 multiply-add peak of t cores: a loop of 512-bit vpdpbusd (64 MACs each) on
//                           12 independent accumulators held in registers, on t threads started together.
//                           Counters: GMACps (the sum over the threads), best_GMACps (the fastest iteration:
//                           what peak_fraction divides by). Only on builds with AVX-512 VNNI.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kvcache/element_types.hpp"
#include "kvcache/model/matmul.hpp"

#if defined(__AVX512VNNI__) && defined(__AVX512F__)
#include <immintrin.h>
#define BENCH_HAVE_VNNI 1
#else
#define BENCH_HAVE_VNNI 0
#endif

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t kRows = 1536, kCols = 576, kBlocks = kRows * kCols / 32;
constexpr std::size_t kColdBytes = std::size_t{64} << 20;  // twice a Zen 4 CCD's 32 MiB L3
bool g_quick = false;

/// A matrix's blocks: fixed finite scales (d = 0.01, Q4_1's m = -0.05) and code bytes from a fixed seed.
std::vector<std::byte> random_blocks(kvcache::WeightFormat format) {
    const bool q4_1 = format == kvcache::WeightFormat::Q4_1;
    const std::size_t block = q4_1 ? 20 : 34;
    std::vector<std::byte> bytes(kBlocks * block);
    std::mt19937 rng(42);
    for (auto& b : bytes) b = static_cast<std::byte>(rng());
    const std::uint16_t d = kvcache::fp16::from_float(0.01f), m = kvcache::fp16::from_float(-0.05f);
    for (std::size_t i = 0; i < kBlocks; ++i) {
        std::memcpy(&bytes[i * block], &d, 2);
        if (q4_1) std::memcpy(&bytes[i * block + 2], &m, 2);
    }
    return bytes;
}

/// Enough copies of one matrix (each its own allocation) to exceed kColdBytes. The first int8 product of each
/// builds the interleaved copy the kernel actually reads (the same size: 1536 rows are whole groups), so it is
/// done here, outside any timing.
const std::vector<kvcache::WeightMatrix>& copies(kvcache::WeightFormat format) {
    static std::vector<kvcache::WeightMatrix> q4_1, q8_0;
    auto& set = format == kvcache::WeightFormat::Q4_1 ? q4_1 : q8_0;
    if (set.empty()) {
        const auto bytes = random_blocks(format);
        std::vector<float> x(kCols, 0.5f), y(kRows);
        do {
            set.push_back(kvcache::WeightMatrix::from_blocks(format, kRows, kCols, bytes));
            kvcache::matmul(set.back(), x.data(), 1, y.data(), 1, kvcache::MatmulPrecision::int8);
        } while (set.size() * set.back().bytes() <= kColdBytes);
    }
    return set;
}

#if BENCH_HAVE_VNNI
constexpr std::int64_t kPeakLoops = std::int64_t{1} << 20;  // x 12 instructions: ~4 ms per thread at 1/cycle
constexpr double kMacsPerLoop = 12.0 * 64.0;                 // 16 lanes x 4 byte products per vpdpbusd

/// kPeakLoops rounds of 12 vpdpbusd. Named variables and inline asm pin each accumulator to a zmm register: an
/// array of __m512i tends to go through the stack, and then the loop measures store forwarding (~90 GMAC/s a
/// core on Zen 4) instead of the multiply-adds (~220). Twelve chains hide the instruction's latency.
__attribute__((noinline)) std::int32_t vnni_loop(std::int64_t loops, std::int32_t seed) {
    const __m512i a = _mm512_set1_epi32(seed), b = _mm512_set1_epi32(seed + 1);
    __m512i c0 = a, c1 = a, c2 = a, c3 = a, c4 = a, c5 = a, c6 = a, c7 = a, c8 = a, c9 = a, c10 = a, c11 = a;
    for (std::int64_t i = 0; i < loops; ++i) {
#define BENCH_DP(acc) asm("vpdpbusd %1, %2, %0" : "+v"(acc) : "v"(a), "v"(b))
        BENCH_DP(c0); BENCH_DP(c1); BENCH_DP(c2); BENCH_DP(c3); BENCH_DP(c4); BENCH_DP(c5);
        BENCH_DP(c6); BENCH_DP(c7); BENCH_DP(c8); BENCH_DP(c9); BENCH_DP(c10); BENCH_DP(c11);
#undef BENCH_DP
    }
    // Use every accumulator, so none of the chains is dead code.
    const __m512i s = _mm512_add_epi32(
        _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c0, c1), _mm512_add_epi32(c2, c3)),
                         _mm512_add_epi32(_mm512_add_epi32(c4, c5), _mm512_add_epi32(c6, c7))),
        _mm512_add_epi32(_mm512_add_epi32(c8, c9), _mm512_add_epi32(c10, c11)));
    alignas(64) std::int32_t lanes[16];
    _mm512_store_si512(lanes, s);
    return lanes[0];
}

/// The loop on `threads` std::threads released together; returns when all are done.
void run_peak(int threads) {
    std::atomic<int> ready{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            ready.fetch_add(1);
            while (ready.load() < threads) {}  // spin: a sleeping thread would start late
            benchmark::DoNotOptimize(vnni_loop(kPeakLoops, t));
        });
    }
    for (auto& th : pool) th.join();
}

double g_peak[3] = {0, 0, 0};  // GMAC/s of 1 and 2 threads, from BM_VnniPeak (or measured on demand)

double peak_gmacps(int threads) {
    if (g_peak[threads] == 0) {  // BM_VnniPeak was filtered out: a short measurement of our own (best of 20)
        for (int i = 0; i < 20; ++i) {
            const auto t0 = Clock::now();
            run_peak(threads);
            const double s = std::chrono::duration<double>(Clock::now() - t0).count();
            g_peak[threads] = std::max(g_peak[threads], threads * kPeakLoops * kMacsPerLoop / s / 1e9);
        }
    }
    return g_peak[threads];
}

/// peak_fraction divides by the fastest iteration (best_GMACps), not the mean: the limit is what the cores can do,
/// and on a shared machine another process only ever slows some iterations down.
void BM_VnniPeak(benchmark::State& state, int threads) {
    const double macs_per_iteration = threads * double(kPeakLoops) * kMacsPerLoop;
    double best = 0;
    for (auto _ : state) {
        const auto t0 = Clock::now();
        run_peak(threads);
        best = std::max(best, macs_per_iteration / std::chrono::duration<double>(Clock::now() - t0).count() / 1e9);
    }
    g_peak[threads] = best;
    state.counters["GMACps"] =
        benchmark::Counter(double(state.iterations()) * macs_per_iteration / 1e9, benchmark::Counter::kIsRate);
    state.counters["best_GMACps"] = best;
}
#endif

void BM_MatmulInt8(benchmark::State& state, kvcache::WeightFormat format, std::size_t n, int threads, bool cold) {
    const auto& set = copies(format);
    const std::size_t count = cold ? set.size() : 1;
    std::vector<float> x(n * kCols), y(n * kRows);
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    for (auto& v : x) v = dist(rng);
    std::size_t next = 0;
    const auto t0 = Clock::now();
    for (auto _ : state) {
        kvcache::matmul(set[next], x.data(), n, y.data(), threads, kvcache::MatmulPrecision::int8);
        benchmark::DoNotOptimize(y.data());
        if (++next == count) next = 0;
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    const double iters = double(state.iterations());
    const double macs = iters * double(kRows * kCols * n);
    state.counters["GMACps"] = benchmark::Counter(macs / 1e9, benchmark::Counter::kIsRate);
    state.counters["GBps"] = benchmark::Counter(iters * double(set[0].bytes()) / 1e9, benchmark::Counter::kIsRate);
#if BENCH_HAVE_VNNI
    state.counters["peak_fraction"] = macs / seconds / 1e9 / peak_gmacps(threads);
#else
    (void)seconds;
#endif
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<char*> args;
    for (int i = 0; i < argc; ++i) {
        if (std::string(argv[i]) == "--quick") {
            g_quick = true;
        } else {
            args.push_back(argv[i]);
        }
    }
    const double min_time = g_quick ? 0.2 : 1.0;
    std::vector<benchmark::internal::Benchmark*> all;
#if BENCH_HAVE_VNNI  // first, so that the matmul cases find the peak measured
    for (const int t : {1, 2}) {
        all.push_back(benchmark::RegisterBenchmark(("BM_VnniPeak/threads:" + std::to_string(t)).c_str(),
                                                   BM_VnniPeak, t));
    }
#endif
    for (const auto format : {kvcache::WeightFormat::Q4_1, kvcache::WeightFormat::Q8_0}) {
        const std::string fmt = format == kvcache::WeightFormat::Q4_1 ? "q4_1" : "q8_0";
        for (const std::size_t n : {1, 8, 16}) {
            for (const int t : {1, 2}) {
                for (const bool cold : {false, true}) {
                    const std::string name = "BM_MatmulInt8/" + fmt + "/tokens:" + std::to_string(n) +
                                             "/threads:" + std::to_string(t) + (cold ? "/cold" : "/hot");
                    all.push_back(benchmark::RegisterBenchmark(name.c_str(), BM_MatmulInt8, format, n, t, cold));
                }
            }
        }
    }
    for (auto* b : all) b->Unit(benchmark::kMicrosecond)->MinTime(min_time)->UseRealTime();
    int n = static_cast<int>(args.size());
    benchmark::Initialize(&n, args.data());
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
