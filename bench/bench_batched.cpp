// bench_batched: batched decode on SmolLM2 — aggregate tokens/s with 1-16 sequences decoding together at
// context 512, and the step latency of running streams while a 1024-token prompt is admitted in chunks.
//
//   bench_batched [--threads=N] [--quick] [--context=N] [google-benchmark flags, e.g. --benchmark_format=json]
//
// --context: the positions each sequence holds (512 unless told). At a short context (16) attention costs
// almost nothing and the curve is the weights' alone: how far batching can go before attention's share counts.
//
// Names (scripts/plot_bench.py parses them):
//   BM_BatchedDecode/<S>    one Decoder::forward over S sequences, one new token each, every sequence holding
//                           512 positions of its own (distinct memory: attention reads S × 512 positions).
//                           Counters: tokens_per_second (S / step), weight_GBps (weight bytes / step),
//                           kv_GBps (K/V bytes attention reads / step).
//   BM_BatchedDecodeQ8_0/<S>  the same over a q8_0 pool: attention reads 3.8x fewer bytes per sequence.
//   BM_BatchedDecodeInt8/<S>, BM_SchedulerDecodeInt8/<S>  BM_BatchedDecode / BM_SchedulerDecode with
//                           MatmulPrecision::int8 (activations rounded to int8, integer block dots).
//   BM_SchedulerDecode/<S>  the same through the Scheduler: S requests continuing kept sequences of 512
//                           positions, one step() per iteration (sampling, streaming, bookkeeping included).
//   BM_Admission/<per_decode>/<streams>  <streams> requests decode at context 512 through the Scheduler; a
//                           1024-token prompt is submitted and fed prefill_tokens_per_decode = <per_decode>
//                           tokens per step per decoding stream (2 is the default). Counters: normal_step_ms (median step before
//                           it), admission_step_ms (mean and max of the steps that carried a chunk), ratio
//                           (admission mean / normal; the goal is <= 3), admission_steps, admission_seconds
//                           (submit to the prompt's last chunk: the time to first token it costs).
// Every sequence's 512 positions are copies of one prefilled prompt's K/V, copied block by block into blocks
// of its own, so no two sequences share memory (a fork would share it, and flatter attention).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "kvcache/cache/paged_kv_cache.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/model/load_model.hpp"
#include "kvcache/model/scheduler.hpp"
#include "kvcache/model/tokenizer.hpp"

#ifndef KVCACHE_SOURCE_DIR
#define KVCACHE_SOURCE_DIR "."
#endif

namespace {

using Clock = std::chrono::steady_clock;
std::size_t kContext = 512;  // --context=N: positions every sequence holds (512 unless told)
constexpr std::size_t kAdmittedPrompt = 1024;
constexpr std::size_t kMaxSequences = 16;
int g_threads = 0;
bool g_quick = false;

std::string model_path() {
    if (const char* env = std::getenv("KVCACHE_MODEL")) return env;
    return std::string(KVCACHE_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

std::vector<std::int32_t> some_tokens(std::size_t n, std::size_t vocab, std::size_t salt) {
    std::vector<std::int32_t> t(n);
    for (std::size_t i = 0; i < n; ++i) t[i] = static_cast<std::int32_t>((i * 7919 + salt * 104729 + 3) % vocab);
    return t;
}

/// The model, its tokenizer, and one prompt of kContext tokens prefilled into a pool (the source of copies).
struct World {
    kvcache::Tokenizer tokenizer;
    kvcache::Decoder decoder;
    std::vector<std::int32_t> prompt;
    std::vector<std::vector<float>> keys, values;  // per layer: [kContext][kv_dim] of the prompt

    static World& get() {
        static World w = [] {
            auto model = kvcache::load_model(model_path(), {.threads = g_threads});
            World world{std::move(model.tokenizer), std::move(model.decoder), {}, {}, {}};
            world.prefill();
            return world;
        }();
        return w;
    }

    /// Runs the prompt once and keeps its K/V as rows, to copy into as many sequences as a case needs.
    void prefill() {
        const auto& c = decoder.config();
        prompt = some_tokens(kContext, c.vocab_size, 1);
        kvcache::PagedKVPool<float> pool(decoder.cache_layers(), kContext / 16 + 1);
        const auto id = pool.create_sequence();
        auto seq = pool.sequence(id);
        std::vector<float> logits(c.vocab_size);
        decoder.forward(std::span<const std::int32_t>(prompt), seq, 0, logits);
        keys.assign(c.n_layers, std::vector<float>(kContext * c.kv_dim()));
        values = keys;
        for (std::size_t l = 0; l < c.n_layers; ++l) {
            for (std::size_t h = 0; h < c.n_kv_heads; ++h) {
                for (const auto chunk : pool.chunks(id, l, h)) {
                    for (std::size_t p = 0; p < chunk.length; ++p) {
                        const std::size_t at = ((chunk.start + p) * c.n_kv_heads + h) * c.head_dim;
                        std::memcpy(&keys[l][at], chunk.keys + p * c.head_dim, c.head_dim * sizeof(float));
                        std::memcpy(&values[l][at], chunk.values + p * c.head_dim, c.head_dim * sizeof(float));
                    }
                }
            }
        }
    }

    /// A new sequence of `pool` holding the prompt's K/V in blocks of its own (converted to the pool's type).
    template <class T>
    kvcache::SequenceId copy_into(kvcache::PagedKVPool<T>& pool) const {
        const auto id = pool.create_sequence();
        for (std::size_t l = 0; l < keys.size(); ++l) pool.append(id, l, keys[l], values[l], kContext);
        return id;
    }
};

std::size_t pool_blocks(std::size_t sequences, std::size_t extra_positions) {
    return sequences * ((kContext + extra_positions) / 16 + 2) + (kAdmittedPrompt + 64) / 16 + 8;
}

template <class T>
double kv_bytes_per_step(const kvcache::Decoder& d, std::size_t sequences) {
    // K and V of one position in every layer, stored as T.
    const double per_position = double(kvcache::PagedKVPool<T>::block_bytes_for(d.cache_layers(), 1));
    return double(sequences) * double(kContext) * per_position;
}

/// T: the pool's K/V element type (float for BM_BatchedDecode; q8_0 for BM_BatchedDecodeQ8_0, whose attention
/// reads 3.8x fewer bytes — how much of the curve is attention).
template <class T, kvcache::MatmulPrecision P = kvcache::MatmulPrecision::f32>
void BM_BatchedDecode(benchmark::State& state) {
    World& w = World::get();
    const auto S = static_cast<std::size_t>(state.range(0));
    kvcache::PagedKVPool<T> pool(w.decoder.cache_layers(), pool_blocks(S, 16));
    std::vector<kvcache::SequenceId> ids;
    std::vector<kvcache::PagedSequence<T>> seqs;
    for (std::size_t i = 0; i < S; ++i) ids.push_back(w.copy_into(pool));
    for (auto id : ids) seqs.push_back(pool.sequence(id));
    const std::size_t vocab = w.decoder.config().vocab_size;
    std::vector<float> logits(S * vocab);
    std::vector<std::int32_t> next = some_tokens(S, vocab, 7);
    std::vector<kvcache::ForwardItem<kvcache::PagedSequence<T>>> items;
    for (std::size_t i = 0; i < S; ++i) {
        items.push_back({std::span<const std::int32_t>(&next[i], 1), &seqs[i], 0,
                         std::span<float>(logits).subspan(i * vocab, vocab)});
    }
    const kvcache::ForwardOptions options{.threads = g_threads, .precision = P};
    for (auto _ : state) {
        w.decoder.forward(std::span<const kvcache::ForwardItem<kvcache::PagedSequence<T>>>(items), options);
        benchmark::DoNotOptimize(logits.data());
        state.PauseTiming();
        for (auto id : ids) pool.truncate(id, kContext);  // every step at the same context
        state.ResumeTiming();
    }
    const double steps = double(state.iterations());
    state.counters["tokens_per_second"] = benchmark::Counter(steps * double(S), benchmark::Counter::kIsRate);
    state.counters["weight_GBps"] =
        benchmark::Counter(steps * double(w.decoder.weights().bytes()) / 1e9, benchmark::Counter::kIsRate);
    state.counters["kv_GBps"] = benchmark::Counter(steps * kv_bytes_per_step<T>(w.decoder, S) / 1e9,
                                                   benchmark::Counter::kIsRate);
    state.counters["sequences"] = double(S);
}

/// S requests decoding at context ~512 through a Scheduler (continuing kept sequences that hold the prompt).
struct RunningStreams {
    kvcache::PagedKVPool<float> pool;
    kvcache::Scheduler scheduler;

    RunningStreams(World& w, std::size_t streams, std::size_t max_new, std::size_t prefill_per_decode,
                   kvcache::MatmulPrecision precision = kvcache::MatmulPrecision::f32)
        : pool(w.decoder.cache_layers(), pool_blocks(streams, max_new + 16)),
          scheduler(w.decoder, w.tokenizer, pool, nullptr,
                    kvcache::SchedulerOptions{.max_batch = streams + 1,
                                              .prefill_tokens_per_decode = prefill_per_decode,
                                              .threads = g_threads,
                                              .precision = precision}) {
        for (std::size_t i = 0; i < streams; ++i) {
            const auto id = scheduler.exclusive([&](auto& p, auto*) { return w.copy_into(p); });
            scheduler.adopt(id, w.prompt);
            kvcache::Request r;
            r.prompt = some_tokens(1, w.decoder.config().vocab_size, 100 + i);
            r.continue_from = id;
            r.options.max_new_tokens = max_new;
            r.options.stop_at_eos = false;
            r.options.sampling.temperature = 0.7f;  // sampling is part of what a step costs
            r.options.sampling.seed = i;
            scheduler.submit(std::move(r));
        }
        scheduler.step();  // all join; each feeds its one token
    }
};

template <kvcache::MatmulPrecision P = kvcache::MatmulPrecision::f32>
void BM_SchedulerDecode(benchmark::State& state) {
    World& w = World::get();
    const auto S = static_cast<std::size_t>(state.range(0));
    constexpr std::size_t kMaxSteps = 2000;
    RunningStreams run(w, S, kMaxSteps, kvcache::SchedulerOptions{}.prefill_tokens_per_decode, P);
    std::size_t steps = 0;
    for (auto _ : state) {
        if (++steps >= kMaxSteps) {
            state.SkipWithError("more iterations than the requests have tokens");
            break;
        }
        run.scheduler.step();
    }
    state.counters["tokens_per_second"] =
        benchmark::Counter(double(state.iterations()) * double(S), benchmark::Counter::kIsRate);
    state.counters["sequences"] = double(S);
}

void BM_Admission(benchmark::State& state) {
    World& w = World::get();
    const auto per_decode = static_cast<std::size_t>(state.range(0));
    const auto streams = static_cast<std::size_t>(state.range(1));
    constexpr std::size_t kNormalSteps = 6;
    for (auto _ : state) {
        const std::size_t chunk = std::min<std::size_t>(per_decode * streams, 256);
        const std::size_t admission_steps = (kAdmittedPrompt + chunk - 1) / chunk;
        RunningStreams run(w, streams, kNormalSteps + admission_steps + 8, per_decode);
        std::vector<double> normal, admission;
        for (std::size_t i = 0; i < kNormalSteps; ++i) {
            const auto t0 = Clock::now();
            run.scheduler.step();
            normal.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
        }
        kvcache::Request long_prompt;
        long_prompt.prompt = some_tokens(kAdmittedPrompt, w.decoder.config().vocab_size, 3);
        long_prompt.options.max_new_tokens = 1;
        bool admitted = false;
        long_prompt.on_done = [&](const kvcache::RequestResult&) { admitted = true; };
        run.scheduler.submit(std::move(long_prompt));
        while (!admitted) {
            const auto t0 = Clock::now();
            run.scheduler.step();
            admission.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
        }
        std::sort(normal.begin(), normal.end());
        const double normal_step = normal[normal.size() / 2];
        const double mean = std::accumulate(admission.begin(), admission.end(), 0.0) / double(admission.size());
        const double worst = *std::max_element(admission.begin(), admission.end());
        state.SetIterationTime(mean);
        state.counters["normal_step_ms"] = normal_step * 1e3;
        state.counters["admission_step_ms"] = mean * 1e3;
        state.counters["admission_worst_ms"] = worst * 1e3;
        state.counters["ratio"] = mean / normal_step;
        state.counters["admission_steps"] = double(admission.size());
        state.counters["streams"] = double(streams);
        state.counters["admission_seconds"] = std::accumulate(admission.begin(), admission.end(), 0.0);
    }
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<char*> args;
    for (int i = 0; i < argc; ++i) {
        const std::string a = argv[i];
        if (a.rfind("--threads=", 0) == 0) {
            g_threads = std::atoi(a.c_str() + 10);
        } else if (a.rfind("--context=", 0) == 0) {
            const long context = std::atol(a.c_str() + 10);
            if (context < 1 || context > 8192) {
                std::fprintf(stderr, "bench_batched: --context takes 1..8192 positions, not '%s'\n", a.c_str() + 10);
                return 2;
            }
            kContext = static_cast<std::size_t>(context);
        } else if (a == "--quick") {
            g_quick = true;
        } else {
            args.push_back(argv[i]);
        }
    }
    const double min_time = g_quick ? 0.2 : 2.0;
    auto* decode = benchmark::RegisterBenchmark("BM_BatchedDecode", BM_BatchedDecode<float>);
    auto* decode_q8 = benchmark::RegisterBenchmark("BM_BatchedDecodeQ8_0", BM_BatchedDecode<kvcache::q8_0>);
    auto* decode_int8 = benchmark::RegisterBenchmark(
        "BM_BatchedDecodeInt8", BM_BatchedDecode<float, kvcache::MatmulPrecision::int8>);
    auto* decode_int8_q8 = benchmark::RegisterBenchmark(
        "BM_BatchedDecodeInt8Q8_0", BM_BatchedDecode<kvcache::q8_0, kvcache::MatmulPrecision::int8>);
    auto* sched = benchmark::RegisterBenchmark("BM_SchedulerDecode", BM_SchedulerDecode<>);
    auto* sched_int8 =
        benchmark::RegisterBenchmark("BM_SchedulerDecodeInt8", BM_SchedulerDecode<kvcache::MatmulPrecision::int8>);
    for (auto* b : {decode, decode_q8, decode_int8, decode_int8_q8, sched, sched_int8}) {
        for (const std::size_t s : {std::size_t{1}, std::size_t{2}, std::size_t{4}, std::size_t{8}, kMaxSequences}) {
            b->Arg(static_cast<std::int64_t>(s));
        }
        b->Unit(benchmark::kMillisecond)->MinTime(min_time)->UseRealTime();
    }
    auto* admission = benchmark::RegisterBenchmark("BM_Admission", BM_Admission);
    for (const int streams : {1, 4}) {
        for (const int per_decode : {2, 4, 16}) admission->Args({per_decode, streams});
    }
    admission->Unit(benchmark::kMillisecond)->Iterations(1)->UseManualTime();
    int n = static_cast<int>(args.size());
    benchmark::Initialize(&n, args.data());
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
