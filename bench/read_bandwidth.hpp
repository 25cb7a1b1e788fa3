// read_bandwidth.hpp: the machine's memory read bandwidth, measured STREAM-style (a sum over a large array),
// so a memory-bound kernel can be reported as a fraction of what this machine can actually stream.
//
// Shared by bench_bandwidth (which reports it) and bench_attention (which measures it once at start and
// divides by it). Bench-only: not part of the library.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "kvcache/detail/aligned_buffer.hpp"
#include "kvcache/detail/thread_pool.hpp"

namespace kvcache_bench {

/// Best and median of several timed passes, in GB/s (1e9 bytes per second), and the best single block.
struct Bandwidth {
    double best_gbps = 0;
    double median_gbps = 0;
    /// The fastest kBlockBytes block of any pass: what the memory gives when no other process takes the
    /// core away mid-pass (on a busy machine a 40 ms pass is often interrupted, a 0.3 ms block rarely).
    double best_block_gbps = 0;
};

/// Passes are timed block by block (all threads on the same block, each on its own part of it).
inline constexpr std::size_t kBlockBytes = std::size_t(8) << 20;

inline Bandwidth summarise_rates(std::vector<double> gbps) {
    if (gbps.empty()) return {};
    std::sort(gbps.begin(), gbps.end());
    const std::size_t n = gbps.size();
    const double median = n % 2 ? gbps[n / 2] : 0.5 * (gbps[n / 2 - 1] + gbps[n / 2]);
    return {gbps.back(), median, 0};
}

inline int available_threads() { return kvcache::detail::default_threads(); }

/// Runs part(t, parts) for t < parts on the library's pool (parts = threads, capped by the hardware).
template <class Part>
void for_each_part(int threads, Part&& part) {
    const int parts = std::max(1, std::min(threads, kvcache::detail::hardware_threads()));
    // Always on `parts` threads: the probe measures what that many threads read, whatever they cost.
    kvcache::detail::parallel_for(std::size_t(parts), 1, parts, {.helpers = kvcache::detail::HelperUse::always},
                                  [&](std::size_t begin, std::size_t end) {
        for (std::size_t t = begin; t < end; ++t) part(int(t), parts);
    });
}

/// Σ a[0..n). Eight independent 8-wide accumulators (64 floats = 4 cache lines per step) so the adds'
/// latency never limits the loop: one core issues loads as fast as the memory system answers them.
inline float sum_floats(const float* a, std::size_t n) {
    std::size_t i = 0;
    float total = 0.0f;
#if defined(__AVX2__)
    __m256 s[8];
    for (auto& v : s) v = _mm256_setzero_ps();
    for (; i + 64 <= n; i += 64) {
        for (int k = 0; k < 8; ++k) s[k] = _mm256_add_ps(s[k], _mm256_load_ps(a + i + 8 * k));
    }
    for (int k = 1; k < 8; ++k) s[0] = _mm256_add_ps(s[0], s[k]);
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, s[0]);
    for (float x : lanes) total += x;
#else
    float s[16] = {};
    for (; i + 16 <= n; i += 16) {
        for (std::size_t k = 0; k < 16; ++k) s[k] += a[i + k];
    }
    for (float x : s) total += x;
#endif
    for (; i < n; ++i) total += a[i];
    return total;
}

/// [begin, end) of part `t` of `parts` equal parts of n elements, cut at multiples of 64 elements.
inline void split_range(std::size_t n, int parts, int t, std::size_t& begin, std::size_t& end) {
    const std::size_t blocks = n / 64;
    begin = blocks * std::size_t(t) / std::size_t(parts) * 64;
    end = t + 1 == parts ? n : blocks * std::size_t(t + 1) / std::size_t(parts) * 64;
}

/// A page-touched, 64-byte aligned array of n floats (written by the threads that will read it).
inline kvcache::detail::AlignedBuffer<float> make_array(std::size_t n, int threads) {
    kvcache::detail::AlignedBuffer<float> a(n);
    float* p = a.data();
    for_each_part(threads, [&](int t, int parts) {
        std::size_t b = 0, e = 0;
        split_range(n, parts, t, b, e);
        for (std::size_t i = b; i < e; ++i) p[i] = float(i % 7) * 0.25f;
    });
    return a;
}

/// One pass over a, block by block: `threads` threads each sum their contiguous part of each block.
/// Returns the seconds the pass took; `fastest_block` is lowered to the quickest block's seconds.
inline double timed_sum_pass(const float* a, std::size_t n, int threads, float& sink, double& fastest_block) {
    const std::size_t block = kBlockBytes / sizeof(float);
    double total_seconds = 0;
    for (std::size_t at = 0; at < n; at += block) {
        const std::size_t m = std::min(block, n - at);
        const auto t0 = std::chrono::steady_clock::now();
        float partial[64] = {};
        for_each_part(std::min(threads, 64), [&](int t, int parts) {
            std::size_t b = 0, e = 0;
            split_range(m, parts, t, b, e);
            partial[t] = sum_floats(a + at + b, e - b);
        });
        float total = 0.0f;
        for (float x : partial) total += x;
        const auto t1 = std::chrono::steady_clock::now();
        sink += total;
        const double s = std::chrono::duration<double>(t1 - t0).count();
        total_seconds += s;
        if (m == block) fastest_block = std::min(fastest_block, s);
    }
    return total_seconds;
}

/// One pass: `threads` threads each copy their contiguous part of src to dst with memcpy.
inline double timed_copy_pass(const float* src, float* dst, std::size_t n, int threads) {
    const auto t0 = std::chrono::steady_clock::now();
    for_each_part(threads, [&](int t, int parts) {
        std::size_t b = 0, e = 0;
        split_range(n, parts, t, b, e);
        std::memcpy(dst + b, src + b, (e - b) * sizeof(float));
    });
    const auto t1 = std::chrono::steady_clock::now();
    return std::chrono::duration<double>(t1 - t0).count();
}

/// Read bandwidth with `threads` threads: `reps` timed sums over a `bytes` array (after one warm-up pass).
inline Bandwidth measure_read_bandwidth(int threads, std::size_t bytes = std::size_t(1) << 30, int reps = 7) {
    const std::size_t n = bytes / sizeof(float);
    const auto a = make_array(n, threads);
    float sink = 0.0f;
    double fastest_block = 1e30;
    timed_sum_pass(a.data(), n, threads, sink, fastest_block);
    fastest_block = 1e30;
    std::vector<double> rates;
    for (int r = 0; r < reps; ++r) {
        rates.push_back(double(bytes) / timed_sum_pass(a.data(), n, threads, sink, fastest_block) / 1e9);
    }
    volatile float keep = sink;
    (void)keep;
    Bandwidth bw = summarise_rates(std::move(rates));
    bw.best_block_gbps = double(kBlockBytes) / fastest_block / 1e9;
    return bw;
}

}  // namespace kvcache_bench
