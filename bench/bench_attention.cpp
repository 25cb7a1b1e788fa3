// bench_attention: decode attention (one query token) over the KV cache, against the machine's read bandwidth.
//
// Shape: 9 query heads, 3 kv heads (GQA, group 3), head size 64, fp32, fp16, bf16, q8_0 and q4_0 caches, contexts
// 128 … 32768. One call reads the whole cache of one layer: 2 (K and V) * kv_heads * (bytes of head_dim values)
// per position — 256 * 2 bytes for fp32, 68 * 2 for q8_0 (two 34-byte blocks), 36 * 2 for q4_0.
// It does 4 * q_heads * head_dim FLOP per position (a multiply-add for q·k and one for p·v, per query head).
//
// Cold vs hot. In a real decode step every layer's cache is read once and then the other layers' caches are,
// so a layer's cache is not in any CPU cache when its turn comes again. BM_DecodeAttention reproduces that: it
// builds as many layers of the given context as make up at least --attn_cold_mib (default 1024 MiB: the size of
// the bandwidth benchmark's array, 32 times this machine's L3) and each call reads the next layer in turn. BM_DecodeAttentionHot reads one layer
// over and over, so small contexts sit in L2/L3: that shows the kernel's compute limit, not the memory's.
//
// Counters: GB/s = cache bytes read per second (1e9 bytes), over all calls; best_GB/s = the same for the fastest
// single call (robust when other processes share the cores); bw_GB/s = the best 1 GiB read-bandwidth pass on the
// same thread count, measured once at start in this process; %bw = GB/s / bw_GB/s * 100; best_%bw = best_GB/s
// over the fastest 8 MiB block of that sum (both immune to being descheduled now and then); GFLOP/s.
// BM_DecodeAttentionPaged reads like a batched decode step: kPagedSequences sequences of one PagedKVPool (blocks of
// 16 positions), one query token each, items side by side over the threads as the decoder runs them; one call
// reads one layer of every sequence. Argument `whole`: 1 = each sequence's positions appended in one go (a prompt:
// consecutive block ids, one long run per head in the pool's arenas), 0 = a block of each sequence in turn (as
// sequences that grew side by side token by token: a head's rows are 16-position runs spread over the arena).
// Its /int8 variant asks for integer q·k (q8_0 keys).
// BM_DecodeAttentionReference runs attention_reference (double precision, one thread) at small contexts for
// comparison.
//
// Run: bench_attention [--attn_cold_mib=1024] [--attn_skip_bandwidth] [--benchmark_filter=...]
//                      [--benchmark_format=json] [--benchmark_repetitions=N]
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "kvcache/attention/attention.hpp"
#include "kvcache/attention/reference.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/cache/paged_kv_cache.hpp"
#include "kvcache/detail/thread_pool.hpp"
#include "kvcache/testing/random.hpp"
#include "read_bandwidth.hpp"

namespace {

using namespace kvcache;

constexpr std::size_t kQHeads = 9;
constexpr std::size_t kKVHeads = 3;
constexpr std::size_t kHeadDim = 64;

std::size_t g_cold_bytes = std::size_t(1) << 30;
kvcache_bench::Bandwidth g_read_bw[3];  // read bandwidth on 1 and 2 threads (index = threads)

template <class T>
constexpr const char* type_name() {
    if constexpr (std::is_same_v<T, float>) return "fp32";
    else if constexpr (std::is_same_v<T, fp16>) return "fp16";
    else if constexpr (std::is_same_v<T, bf16>) return "bf16";
    else if constexpr (std::is_same_v<T, q8_0>) return "q8_0";
    else if constexpr (std::is_same_v<T, q4_0h>) return "q4_0h";
    else return "q4_0";
}

template <class T>
std::size_t layer_bytes(std::size_t context) {
    return 2 * kKVHeads * storage_units<T>(kHeadDim) * sizeof(T) * context;
}

/// `layers` layers of `context` random positions each (the same positions in every layer: the contents do not
/// change the work, only where it is read from). Kept between benchmark runs of the same context.
template <class T>
struct Caches {
    std::size_t context = 0;
    std::size_t layers = 0;
    std::unique_ptr<MultiLayerKVCache<T>> cache;
    /// The layer the next call reads. It carries over between benchmark runs (Google Benchmark calls the
    /// function several times) and the warm-up call: restarting at layer 0 would read a layer still in L3.
    std::size_t next_layer = 0;
    std::size_t take_layer() {
        const std::size_t l = next_layer;
        next_layer = (next_layer + 1) % layers;
        return l;
    }
};

template <class T>
Caches<T>& caches(std::size_t context, bool cold) {
    static Caches<T> held[2];  // [cold]
    Caches<T>& c = held[cold ? 1 : 0];
    if (c.context == context && c.cache) return c;
    c.cache.reset();  // free the old set before building the next
    c.context = context;
    c.next_layer = 0;
    c.layers = cold ? std::max<std::size_t>(1, (g_cold_bytes + layer_bytes<T>(context) - 1) / layer_bytes<T>(context)) : 1;
    c.cache = std::make_unique<MultiLayerKVCache<T>>(CacheShape{c.layers, kKVHeads, kHeadDim}, 1, context);
    const std::size_t width = kKVHeads * kHeadDim;
    const auto k = testing::random_normal(context * width, 11), v = testing::random_normal(context * width, 12);
    for (std::size_t l = 0; l < c.layers; ++l) c.cache->append(l, 0, k, v, context);
    return c;
}

enum class Kernel { Fast, Reference };

/// Total and fastest seconds of the calls a benchmark timed.
struct Timing {
    double seconds = 0;
    double fastest = 1e30;
};

/// One call(layer) per benchmark iteration, timed by hand (the layer is picked outside the timed part).
template <class NextLayer, class Call>
Timing time_calls(benchmark::State& state, NextLayer&& next_layer, Call&& call, const std::vector<float>& out) {
    Timing t;
    for (auto _ : state) {
        const std::size_t layer = next_layer();
        const auto t0 = std::chrono::steady_clock::now();
        call(layer);
        const auto t1 = std::chrono::steady_clock::now();
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
        const double s = std::chrono::duration<double>(t1 - t0).count();
        state.SetIterationTime(s);
        t.seconds += s;
        t.fastest = std::min(t.fastest, s);
    }
    return t;
}

template <class T>
void BM_Decode(benchmark::State& state, bool cold, Kernel kernel) {
    const auto context = static_cast<std::size_t>(state.range(0));
    const int threads = kernel == Kernel::Fast ? static_cast<int>(state.range(1)) : 1;
    Caches<T>& c = caches<T>(context, cold);
    const auto q = testing::random_normal(kQHeads * kHeadDim, 13);
    std::vector<float> out(q.size());
    AttentionOptions opts;
    opts.threads = threads;
    attention(*c.cache, c.take_layer(), 0, q, 1, kQHeads, out, opts);  // warm-up: scratch and thread pool in place

    const auto [seconds, fastest] = time_calls(
        state, [&] { return c.take_layer(); },
        [&](std::size_t layer) {
            if (kernel == Kernel::Fast) {
                attention(*c.cache, layer, 0, q, 1, kQHeads, out, opts);
            } else {
                attention_reference(*c.cache, layer, 0, q, 1, kQHeads, out, opts);
            }
        },
        out);
    const double calls = double(state.iterations());
    const double gbps = calls * double(layer_bytes<T>(context)) / seconds / 1e9;
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(layer_bytes<T>(context)));
    state.counters["GB/s"] = gbps;
    state.counters["GFLOP/s"] = calls * 4.0 * kQHeads * kHeadDim * double(context) / seconds / 1e9;
    state.counters["best_GB/s"] = double(layer_bytes<T>(context)) / fastest / 1e9;  // the fastest single call
    state.counters["layers"] = double(c.layers);
    if (threads <= 2 && g_read_bw[threads].best_gbps > 0) {
        const auto& bw = g_read_bw[threads];
        state.counters["bw_GB/s"] = bw.best_gbps;
        state.counters["%bw"] = 100.0 * gbps / bw.best_gbps;
        state.counters["best_%bw"] = 100.0 * state.counters["best_GB/s"].value / bw.best_block_gbps;
    }
}

constexpr std::size_t kPagedSequences = 8;

/// kPagedSequences sequences of `context` positions in one pool, over as many layers as the cold set needs.
template <class T>
struct PagedCaches {
    std::size_t context = 0;
    bool whole = false;
    std::size_t layers = 0;
    std::unique_ptr<PagedKVPool<T>> pool;
    std::vector<PagedSequence<T>> sequences;
    std::size_t next_layer = 0;
};

template <class T>
PagedCaches<T>& paged_caches(std::size_t context, bool whole) {
    static PagedCaches<T> c;
    if (c.context == context && c.whole == whole && c.pool) return c;
    c.sequences.clear();
    c.pool.reset();
    c.context = context;
    c.whole = whole;
    c.next_layer = 0;
    const std::size_t step_bytes = kPagedSequences * layer_bytes<T>(context);
    c.layers = std::max<std::size_t>(1, (g_cold_bytes + step_bytes - 1) / step_bytes);
    const std::size_t block = PagedKVPool<T>::kDefaultBlockSize;
    c.pool = std::make_unique<PagedKVPool<T>>(CacheShape{c.layers, kKVHeads, kHeadDim},
                                              kPagedSequences * PagedKVPool<T>::blocks_for(context, block), block);
    for (std::size_t s = 0; s < kPagedSequences; ++s) c.sequences.emplace_back(*c.pool, c.pool->create_sequence());
    const std::size_t width = kKVHeads * kHeadDim;
    const auto k = testing::random_normal(context * width, 21), v = testing::random_normal(context * width, 22);
    const std::size_t step = whole ? context : block;  // positions a sequence takes at once
    for (std::size_t pos = 0; pos < context; pos += step) {
        const std::size_t n = std::min(step, context - pos);
        for (auto& seq : c.sequences) {
            for (std::size_t l = 0; l < c.layers; ++l) {
                seq.append(l, 0, std::span<const float>(k).subspan(pos * width, n * width),
                           std::span<const float>(v).subspan(pos * width, n * width), n);
            }
        }
    }
    return c;
}

template <class T>
void BM_DecodePaged(benchmark::State& state, ScorePrecision scores) {
    const auto context = static_cast<std::size_t>(state.range(0));
    const int threads = static_cast<int>(state.range(1));
    PagedCaches<T>& c = paged_caches<T>(context, state.range(2) != 0);
    const auto q = testing::random_normal(kPagedSequences * kQHeads * kHeadDim, 13);
    std::vector<float> out(q.size());
    const AttentionOptions opts{.threads = 1, .scores = scores};
    const std::size_t qsize = kQHeads * kHeadDim;
    const auto step = [&](std::size_t layer) {
        // the decoder's "items side by side": one sequence per claim, each on one thread
        detail::parallel_for(kPagedSequences, 1, threads, {.size = kPagedSequences * layer_bytes<T>(context)},
                             [&](std::size_t first, std::size_t end) {
            for (std::size_t s = first; s < end; ++s) {
                attention(c.sequences[s], layer, 0, std::span<const float>(q).subspan(s * qsize, qsize), 1, kQHeads,
                          std::span<float>(out).subspan(s * qsize, qsize), opts);
            }
        });
    };
    const auto next_layer = [&] {
        const std::size_t l = c.next_layer;
        c.next_layer = (c.next_layer + 1) % c.layers;
        return l;
    };
    step(next_layer());  // warm-up: scratch and thread pool in place
    const auto [seconds, fastest] = time_calls(state, next_layer, step, out);
    const double bytes = double(kPagedSequences * layer_bytes<T>(context));
    const double gbps = double(state.iterations()) * bytes / seconds / 1e9;
    state.counters["GB/s"] = gbps;
    state.counters["best_GB/s"] = bytes / fastest / 1e9;
    state.counters["layers"] = double(c.layers);
    if (threads <= 2 && g_read_bw[threads].best_gbps > 0) {
        state.counters["%bw"] = 100.0 * gbps / g_read_bw[threads].best_gbps;
    }
}

std::vector<std::int64_t> contexts(std::int64_t hi) {
    std::vector<std::int64_t> out;
    for (std::int64_t c = 128; c <= hi; c *= 2) out.push_back(c);
    return out;
}

template <class T>
void register_type() {
    const std::vector<std::int64_t> thread_counts = kvcache_bench::available_threads() >= 2
                                                        ? std::vector<std::int64_t>{1, 2}
                                                        : std::vector<std::int64_t>{1};
    const std::string t = type_name<T>();
    benchmark::RegisterBenchmark(("BM_DecodeAttention/" + t).c_str(),
                                 [](benchmark::State& s) { BM_Decode<T>(s, true, Kernel::Fast); })
        ->ArgsProduct({contexts(32768), thread_counts})
        ->ArgNames({"context", "threads"})
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("BM_DecodeAttentionHot/" + t).c_str(),
                                 [](benchmark::State& s) { BM_Decode<T>(s, false, Kernel::Fast); })
        ->ArgsProduct({contexts(32768), thread_counts})
        ->ArgNames({"context", "threads"})
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("BM_DecodeAttentionPaged/" + t).c_str(),
                                 [](benchmark::State& s) { BM_DecodePaged<T>(s, ScorePrecision::f32); })
        ->ArgsProduct({{512, 4096}, thread_counts, {0, 1}})
        ->ArgNames({"context", "threads", "whole"})
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
    if constexpr (std::is_same_v<T, q8_0>) {
        benchmark::RegisterBenchmark(("BM_DecodeAttentionPaged/" + t + "/int8").c_str(),
                                     [](benchmark::State& s) { BM_DecodePaged<T>(s, ScorePrecision::int8); })
            ->ArgsProduct({{512, 4096}, thread_counts, {0, 1}})
            ->ArgNames({"context", "threads", "whole"})
            ->UseManualTime()
            ->Unit(benchmark::kMicrosecond);
    }
    benchmark::RegisterBenchmark(("BM_DecodeAttentionReference/" + t).c_str(),
                                 [](benchmark::State& s) { BM_Decode<T>(s, true, Kernel::Reference); })
        ->ArgsProduct({contexts(1024), {1}})
        ->ArgNames({"context", "threads"})
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
}

/// Takes --attn_* flags out of argv (Google Benchmark rejects flags it does not know).
void parse_own_flags(int& argc, char** argv, bool& skip_bandwidth) {
    int kept = 1;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a.rfind("--attn_cold_mib=", 0) == 0) {
            g_cold_bytes = std::size_t(std::stoul(a.substr(16))) << 20;
        } else if (a == "--attn_skip_bandwidth") {
            skip_bandwidth = true;
        } else {
            argv[kept++] = argv[i];
        }
    }
    argc = kept;
}

}  // namespace

int main(int argc, char** argv) {
    bool skip_bandwidth = false;
    parse_own_flags(argc, argv, skip_bandwidth);
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    if (!skip_bandwidth) {
        for (int t = 1; t <= std::min(2, kvcache_bench::available_threads()); ++t) {
            const auto bw = kvcache_bench::measure_read_bandwidth(t);
            g_read_bw[t] = bw;
            benchmark::AddCustomContext(fmt::format("read_GB/s_{}_threads", t),
                                        fmt::format("best {:.2f} median {:.2f} best 8 MiB block {:.2f} (1 GiB sum)",
                                                    bw.best_gbps, bw.median_gbps, bw.best_block_gbps));
        }
    }
    benchmark::AddCustomContext("attention_cold_set_MiB", std::to_string(g_cold_bytes >> 20));
    register_type<float>();
    register_type<fp16>();
    register_type<bf16>();
    register_type<q8_0>();
    register_type<q4_0>();
    register_type<q4_0h>();
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
