// bench_seq2seq: time per generated token of the encoder-decoder with and without the KV caches, against the
// target length, for a 6+6-layer, 8-head, d_model 512, d_ff 2048 model with random weights.
//
// One "token" at target length n is one decoder step producing position n's logits:
//   cached:   the new token alone, attending over n cached self K/V and the cached cross K/V;
//   uncached: the decoder over all n+1 target positions, re-projecting the cross K/V (what a step costs
//             when nothing is kept).
// Counters: FLOP/s counts the projection multiply-adds (2 flops each) of the positions actually run, per
// wall-clock second (the kernels may use both cores).
#include <benchmark/benchmark.h>

#include <vector>

#include "kvcache/model/encoder_decoder.hpp"

namespace {

using kvcache::EncoderDecoder;
using kvcache::EncoderDecoderConfig;
using kvcache::EncoderDecoderWeights;

constexpr std::size_t kSourceLen = 64;

EncoderDecoderConfig bench_config() {
    EncoderDecoderConfig c;
    c.d_model = 512;
    c.n_heads = 8;
    c.d_ff = 2048;
    c.n_encoder_layers = 6;
    c.n_decoder_layers = 6;
    c.src_vocab_size = 1000;
    c.tgt_vocab_size = 1000;
    c.max_positions = 1024;
    return c;
}

EncoderDecoder& model() {
    static EncoderDecoder m(EncoderDecoderWeights::random(bench_config(), 1234));
    return m;
}

std::vector<std::int32_t> tokens(std::size_t n, std::int32_t salt) {
    std::vector<std::int32_t> t(n);
    for (std::size_t i = 0; i < n; ++i) t[i] = static_cast<std::int32_t>((i * 37 + salt) % 997 + 3);
    return t;
}

// Projection multiply-adds of one decoder position (self q,k,v,out; cross q,out; ffn; output head).
double decoder_flops_per_position(const EncoderDecoderConfig& c) {
    const double d = c.d_model, ff = c.d_ff;
    return 2.0 * (c.n_decoder_layers * (6 * d * d + 2 * d * ff) + d * c.tgt_vocab_size);
}

void BM_Seq2SeqCached(benchmark::State& state) {
    auto& m = model();
    const std::size_t n = static_cast<std::size_t>(state.range(0));
    const auto source = tokens(kSourceLen, 1);
    const auto memory = m.encode(source);
    auto cache = m.make_cache(1, n + 1, kSourceLen);
    m.write_cross(memory, kSourceLen, cache.cross, 0);
    const auto prefix = tokens(n, 2);
    std::vector<float> all(n * m.config().tgt_vocab_size);
    m.decode(prefix, 0, cache.self, cache.cross, all);  // prefill n positions
    std::vector<float> logits(m.config().tgt_vocab_size);
    const std::int32_t next = 7;
    for (auto _ : state) {
        m.decode(std::span<const std::int32_t>(&next, 1), 0, cache.self, cache.cross, logits);
        benchmark::DoNotOptimize(logits.data());
        state.PauseTiming();
        cache.self.truncate(n);  // back to n positions: every iteration measures the step at length n
        state.ResumeTiming();
    }
    state.counters["target_len"] = static_cast<double>(n);
    state.counters["FLOP/s"] = benchmark::Counter(decoder_flops_per_position(m.config()),
                                                  benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Seq2SeqUncached(benchmark::State& state) {
    auto& m = model();
    const std::size_t n = static_cast<std::size_t>(state.range(0));
    const auto source = tokens(kSourceLen, 1);
    const auto memory = m.encode(source);
    const auto target = tokens(n + 1, 2);
    for (auto _ : state) {
        auto logits = m.decode_uncached(memory, kSourceLen, target);
        benchmark::DoNotOptimize(logits.data());
    }
    state.counters["target_len"] = static_cast<double>(n);
    const auto& c = m.config();
    const double cross_kv = 2.0 * c.n_decoder_layers * 2 * c.d_model * c.d_model * kSourceLen;
    state.counters["FLOP/s"] = benchmark::Counter(decoder_flops_per_position(c) * static_cast<double>(n + 1) + cross_kv,
                                                  benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK(BM_Seq2SeqCached)->RangeMultiplier(2)->Range(16, 512)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Seq2SeqUncached)->RangeMultiplier(2)->Range(16, 512)->Unit(benchmark::kMillisecond)->MinTime(0.5)->UseRealTime();

BENCHMARK_MAIN();
