// bench_generation: text generation with and without the KV cache — O(n) against O(n²) — on the
// random-weight decoder (6 layers × 8 heads × 512), the real default model (SmolLM2-135M GGUF) and the
// encoder-decoder (6+6 layers × 8 heads × 512), plus the latency of one step against its context length,
// prefill, and the cache operations a step performs. scripts/plot_bench.py reads the JSON it writes.
//
//   bench_generation [--quick] [--models=random,real,seq2seq] [--max-uncached-real=N] [--threads=N]
//                    [--capacity=256 --keep=4 --sinks=4]   (BM_PastCapacity)
//                    [google-benchmark flags]
// --threads: threads of every model (0, the default: all the hardware offers; see detail/thread_pool.hpp).
// The caller never waits for a helper that has not started, but timings on a busy machine still vary.
//
// What "without the cache" means here: every step runs the whole sequence so far (prompt + generated)
// through the model from scratch. The model still needs somewhere to put K/V while attending inside that
// one pass, so it gets a scratch cache that is cleared before every step — nothing carries over, exactly
// as generate_without_cache does (minus its per-step allocation, which would only add noise).
//
// Names (the plotting script parses them):
//   BM_Generate/<model>/<cached|uncached>/<n>   n new tokens after a kPromptTokens-token prompt, greedy
//   BM_Step/<model>/cached/<L>                  one decode step with L-1 positions cached (1 token in)
//   BM_Prefill/<model>/<L>                      L tokens into an empty cache. A step *without* the cache at
//                                               context L is exactly this, so it is also the uncached step.
//                                               (seq2seq: the decoder over L target positions without caches,
//                                               cross K/V re-projected — one step of uncached generation.)
//   BM_CacheAppend/<model>/<L>, BM_CacheCopy/<model>/<L>, BM_DecodeAttention/<model>/<L>   cache operations
//   BM_PastCapacity/real/<shift|sinks|grow>/<n>   n new tokens (greedy, EOS ignored) through a cache of
//                                               --capacity positions (default 256): a context shift keeping
//                                               --keep, or --sinks sinks + a window; "grow" is a cache of
//                                               prompt + n positions for comparison. tokens/s past capacity.
// Counters: FLOP/s of the weight matmuls + attention actually run (model below), bytes/s where memory is
// the point, kv_bytes (what cache.bytes_allocated() reports), token_forwards (positions run through the
// model), same_tokens (1 when the uncached run generated exactly the cached run's tokens).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "kvcache/attention/attention.hpp"
#include "kvcache/detail/thread_pool.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/model/encoder_decoder.hpp"
#include "kvcache/model/generate.hpp"
#include "kvcache/model/gguf.hpp"
#include "kvcache/model/shifting_generation.hpp"
#include "kvcache/model/tokenizer.hpp"

#ifndef KVCACHE_SOURCE_DIR
#define KVCACHE_SOURCE_DIR "."
#endif

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t kPromptTokens = 8;
constexpr std::size_t kSourceTokens = 64;  // encoder-decoder source length
int g_threads = 0;                          // --threads
std::size_t g_capacity = 256;               // --capacity: cache positions of BM_PastCapacity
std::size_t g_keep = 4;                     // --keep: positions a context shift keeps
std::size_t g_sinks = 4;                    // --sinks: sinks of the sink + window cache
bool g_quick = false;                       // --quick: fewer, shorter cases, each run once

std::string model_path() {
    if (const char* env = std::getenv("KVCACHE_MODEL")) return env;
    return std::string(KVCACHE_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// ---- the models (loaded once, on first use) ----

kvcache::Decoder& random_decoder() {
    static kvcache::Decoder d(kvcache::DecoderWeights::random(kvcache::DecoderConfig::small_test_model(), 42),
                              g_threads);
    return d;
}

kvcache::Decoder& real_decoder() {
    static kvcache::Decoder d = [] {
        kvcache::Decoder m = kvcache::Decoder::load(model_path());
        m.set_threads(g_threads);
        return m;
    }();
    return d;
}

kvcache::Decoder& decoder(const std::string& name) { return name == "real" ? real_decoder() : random_decoder(); }

kvcache::EncoderDecoderConfig seq2seq_config() {
    kvcache::EncoderDecoderConfig c;
    c.d_model = 512;
    c.n_heads = 8;
    c.d_ff = 2048;
    c.n_encoder_layers = 6;
    c.n_decoder_layers = 6;
    c.src_vocab_size = 1000;
    c.tgt_vocab_size = 1000;
    c.max_positions = 1100;  // BOS + 1024 new tokens
    return c;
}

kvcache::EncoderDecoder& seq2seq() {
    static kvcache::EncoderDecoder m(kvcache::EncoderDecoderWeights::random(seq2seq_config(), 1234));
    return m;
}

std::vector<std::int32_t> some_tokens(std::size_t n, std::size_t vocab, std::size_t salt) {
    std::vector<std::int32_t> t(n);
    for (std::size_t i = 0; i < n; ++i) t[i] = static_cast<std::int32_t>((i * 7919 + salt * 104729 + 3) % vocab);
    return t;
}

std::int32_t argmax(std::span<const float> logits) {
    return static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

// ---- the cost model (the counters and the README's explanation use it) ----

/// Multiply-adds of the weight matrices for one token through all layers (not the output head).
double layer_macs_per_token(const kvcache::DecoderConfig& c) {
    const double d = double(c.d_model), qd = double(c.q_dim()), kvd = double(c.kv_dim()), ff = double(c.d_ff);
    return double(c.n_layers) * (d * qd + 2 * d * kvd + qd * d + 3 * d * ff);
}
double head_macs(const kvcache::DecoderConfig& c) { return double(c.d_model) * double(c.vocab_size); }
/// Multiply-adds of attention for one query that sees `keys` positions (QKᵀ and PV, all layers and heads).
double attention_macs(const kvcache::DecoderConfig& c, double keys) {
    return double(c.n_layers) * double(c.n_heads) * double(c.head_dim) * 2 * keys;
}
/// FLOPs of running `n` tokens at positions [start, start+n) with logits for the last token only.
double forward_flops(const kvcache::DecoderConfig& c, double start, double n) {
    // Query at position p sees p+1 keys: sum over p in [start, start+n) of (p+1) = n*start + n(n+1)/2.
    const double keys = n * start + n * (n + 1) / 2;
    return 2 * (n * layer_macs_per_token(c) + head_macs(c) + attention_macs(c, keys) / 1.0);
}
/// Bytes of weights one decode step streams: every layer matrix and the output head (not the embedding,
/// of which a step reads one row — unless it is tied to the output head, then it counts as the head).
double streamed_weight_bytes(const kvcache::Decoder& m) {
    const auto& w = m.weights();
    double b = double(w.output_matrix().bytes());
    for (const auto& l : w.layers) {
        b += double(l.wq.bytes() + l.wk.bytes() + l.wv.bytes() + l.wo.bytes() + l.w_gate.bytes() + l.w_up.bytes() +
                    l.w_down.bytes());
    }
    return b;
}

void set_model_counters(benchmark::State& state, const kvcache::Decoder& m) {
    state.counters["weight_bytes"] = streamed_weight_bytes(m);
    state.counters["flops_per_token"] = 2 * layer_macs_per_token(m.config());
    state.counters["kv_bytes_per_token"] = double(m.cache_bytes(1));
}

// ---- generation ----

/// Greedy generation of n new tokens; returns the tokens. With the cache: prefill, then one token per step.
/// Without: every step clears the cache and runs the whole sequence.
std::vector<std::int32_t> generate(kvcache::Decoder& m, kvcache::MultiLayerKVCache<float>& cache, std::size_t n,
                                   bool use_cache, std::vector<float>& logits) {
    std::vector<std::int32_t> seq = some_tokens(kPromptTokens, m.config().vocab_size, 1);
    seq.reserve(kPromptTokens + n);
    cache.clear();
    m.forward(std::span<const std::int32_t>(seq), cache, 0, logits);
    seq.push_back(argmax(logits));
    while (seq.size() < kPromptTokens + n) {
        if (use_cache) {
            m.forward(std::span<const std::int32_t>(&seq.back(), 1), cache, 0, logits);
        } else {
            cache.clear();
            m.forward(std::span<const std::int32_t>(seq), cache, 0, logits);
        }
        seq.push_back(argmax(logits));
    }
    return {seq.begin() + kPromptTokens, seq.end()};
}

std::map<std::pair<std::string, std::size_t>, std::vector<std::int32_t>>& cached_tokens() {
    static std::map<std::pair<std::string, std::size_t>, std::vector<std::int32_t>> tokens;
    return tokens;
}

void BM_Generate(benchmark::State& state, const std::string& model, bool use_cache) {
    kvcache::Decoder& m = decoder(model);
    const std::size_t n = static_cast<std::size_t>(state.range(0));
    auto cache = m.make_cache(kPromptTokens + n);
    std::vector<float> logits(m.config().vocab_size);
    std::vector<std::int32_t> tokens;
    for (auto _ : state) {
        tokens = generate(m, cache, n, use_cache, logits);
        benchmark::DoNotOptimize(tokens.data());
    }
    auto& reference = cached_tokens()[{model, n}];
    if (use_cache) {
        reference = tokens;
    } else if (reference.empty()) {  // the cached case did not run (filtered out): make the reference now
        reference = generate(m, cache, n, true, logits);
    }
    const auto& c = m.config();
    const double P = kPromptTokens;
    // Positions run through the model and FLOPs: with the cache the prompt once then 1 per step; without,
    // the step that makes new token i (i >= 1) runs all P + i positions again.
    double token_forwards = 0, flops = forward_flops(c, 0, P);
    token_forwards += P;
    for (std::size_t i = 1; i < n; ++i) {
        const double len = P + double(i);
        token_forwards += use_cache ? 1 : len;
        flops += use_cache ? forward_flops(c, len - 1, 1) : forward_flops(c, 0, len);
    }
    state.counters["n"] = double(n);
    state.counters["prompt"] = P;
    state.counters["token_forwards"] = token_forwards;
    state.counters["kv_bytes"] = use_cache ? double(cache.bytes_allocated()) : 0.0;
    state.counters["scratch_kv_bytes"] = use_cache ? 0.0 : double(cache.bytes_allocated());
    state.counters["tokens/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
    state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["same_tokens"] = tokens == reference ? 1.0 : 0.0;
    set_model_counters(state, m);
}

// ---- generation past the cache's capacity: context shift, sinks + window ----

kvcache::Tokenizer& real_tokenizer() {
    static kvcache::Tokenizer t = kvcache::Tokenizer::from_gguf(kvcache::gguf::File::open(model_path()));
    return t;
}

/// n new tokens from an 8-token prompt with a cache of g_capacity positions that shifts or keeps sinks + a
/// window when full ("grow": a plain cache of prompt + n, the cost of not bounding the memory).
void BM_PastCapacity(benchmark::State& state, const std::string& mode) {
    kvcache::Decoder& m = real_decoder();
    const std::size_t n = static_cast<std::size_t>(state.range(0));
    const auto prompt = some_tokens(kPromptTokens, m.config().vocab_size, 3);
    kvcache::GenerateOptions o;
    o.max_new_tokens = n;
    o.stop_at_eos = false;
    o.threads = g_threads;
    if (mode == "shift") {
        o.cache_capacity = g_capacity;
        o.cache.context_shift = true;
        o.cache.n_keep = g_keep;
    } else if (mode == "sinks") {
        o.cache.sinks = g_sinks;
        o.cache.window = g_capacity - g_sinks;
    } else {
        o.cache_capacity = kPromptTokens + n;  // a plain f32 cache that holds everything
    }
    kvcache::GenerationResult r;
    for (auto _ : state) {
        r = kvcache::generate_with_cache_options(m, real_tokenizer(), prompt, o);
        benchmark::DoNotOptimize(r.tokens.data());
    }
    state.counters["n"] = double(n);
    state.counters["capacity"] = mode == "grow" ? double(kPromptTokens + n) : double(g_capacity);
    state.counters["generated"] = double(r.tokens.size());
    state.counters["kv_bytes"] = double(kvcache::cache_options_bytes(m, prompt.size(), o));
    state.counters["tokens/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
    state.counters["step_tokens/s"] = r.tokens_per_second;  // decode steps only (the prompt's pass excluded)
    set_model_counters(state, m);
}

// ---- one step against its context length, and prefill ----

/// One decode step at context L: the cache holds L-1 positions, one token goes in. Timed by hand so the
/// truncate that resets the cache stays out of the measurement.
void BM_Step(benchmark::State& state, const std::string& model) {
    kvcache::Decoder& m = decoder(model);
    const std::size_t L = static_cast<std::size_t>(state.range(0));
    auto cache = m.make_cache(L);
    std::vector<float> logits(m.config().vocab_size);
    const auto prefix = some_tokens(L - 1, m.config().vocab_size, 2);
    m.forward(std::span<const std::int32_t>(prefix), cache, 0, logits);
    const std::int32_t next = 5;
    for (auto _ : state) {
        const auto t0 = Clock::now();
        m.forward(std::span<const std::int32_t>(&next, 1), cache, 0, logits);
        state.SetIterationTime(std::chrono::duration<double>(Clock::now() - t0).count());
        cache.truncate(L - 1);
    }
    const double kv_read = double(m.cache_bytes(L));
    state.counters["L"] = double(L);
    state.counters["FLOP/s"] = benchmark::Counter(forward_flops(m.config(), double(L - 1), 1),
                                                  benchmark::Counter::kIsIterationInvariantRate);
    // A decode step streams every weight once plus the K/V it attends over.
    state.counters["bytes/s"] = benchmark::Counter(streamed_weight_bytes(m) + kv_read,
                                                   benchmark::Counter::kIsIterationInvariantRate);
    set_model_counters(state, m);
}

/// L tokens into an empty cache (logits of the last only) — the prompt pass, and also one step of
/// generation without the cache at context L.
void BM_Prefill(benchmark::State& state, const std::string& model) {
    kvcache::Decoder& m = decoder(model);
    const std::size_t L = static_cast<std::size_t>(state.range(0));
    auto cache = m.make_cache(L);
    std::vector<float> logits(m.config().vocab_size);
    const auto tokens = some_tokens(L, m.config().vocab_size, 3);
    for (auto _ : state) {
        cache.clear();
        m.forward(std::span<const std::int32_t>(tokens), cache, 0, logits);
        benchmark::DoNotOptimize(logits.data());
    }
    state.counters["L"] = double(L);
    state.counters["tokens/s"] = benchmark::Counter(double(L), benchmark::Counter::kIsIterationInvariantRate);
    state.counters["FLOP/s"] = benchmark::Counter(forward_flops(m.config(), 0, double(L)),
                                                  benchmark::Counter::kIsIterationInvariantRate);
    set_model_counters(state, m);
}

// ---- the cache operations of a step, on the model's cache shape ----

/// Appending one token's K/V to every layer (what a decode step adds), with L-1 positions already held.
void BM_CacheAppend(benchmark::State& state, const std::string& model) {
    kvcache::Decoder& m = decoder(model);
    const std::size_t L = static_cast<std::size_t>(state.range(0));
    auto cache = m.make_cache(L);
    const std::size_t width = m.config().kv_dim();
    const std::vector<float> kv((L - 1) * width, 0.25f);
    for (std::size_t l = 0; l < m.config().n_layers; ++l) cache.append(l, 0, kv, kv, L - 1);
    const std::vector<float> one(width, 0.5f);
    for (auto _ : state) {
        for (std::size_t l = 0; l < m.config().n_layers; ++l) cache.append(l, 0, one, one, 1);
        benchmark::ClobberMemory();
        cache.truncate(L - 1);
    }
    state.counters["L"] = double(L);
    state.counters["bytes/s"] = benchmark::Counter(double(m.cache_bytes(1)), benchmark::Counter::kIsIterationInvariantRate);
}

/// copy() of a cache holding L positions (the explicit deep copy; cost of forking a conversation).
void BM_CacheCopy(benchmark::State& state, const std::string& model) {
    kvcache::Decoder& m = decoder(model);
    const std::size_t L = static_cast<std::size_t>(state.range(0));
    auto cache = m.make_cache(L);
    const std::vector<float> kv(L * m.config().kv_dim(), 0.25f);
    for (std::size_t l = 0; l < m.config().n_layers; ++l) cache.append(l, 0, kv, kv, L);
    for (auto _ : state) {
        auto copy = cache.copy();
        benchmark::DoNotOptimize(copy);
    }
    state.counters["L"] = double(L);
    state.counters["kv_bytes"] = double(cache.bytes_allocated());
    state.counters["bytes/s"] = benchmark::Counter(double(cache.bytes_allocated()),
                                                   benchmark::Counter::kIsIterationInvariantRate);
}

/// Attention of one new query per layer over L cached positions (the O(p) part of a decode step).
void BM_DecodeAttention(benchmark::State& state, const std::string& model) {
    kvcache::Decoder& m = decoder(model);
    const auto& c = m.config();
    const std::size_t L = static_cast<std::size_t>(state.range(0));
    auto cache = m.make_cache(L);
    std::vector<float> kv(L * c.kv_dim());
    for (std::size_t i = 0; i < kv.size(); ++i) kv[i] = float((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    for (std::size_t l = 0; l < c.n_layers; ++l) cache.append(l, 0, kv, kv, L);
    std::vector<float> q(c.q_dim(), 0.1f), out(c.q_dim());
    const kvcache::AttentionOptions opts{.threads = m.threads()};
    for (auto _ : state) {
        for (std::size_t l = 0; l < c.n_layers; ++l) kvcache::attention(cache, l, 0, q, 1, c.n_heads, out, opts);
        benchmark::DoNotOptimize(out.data());
    }
    state.counters["L"] = double(L);
    state.counters["bytes/s"] = benchmark::Counter(double(m.cache_bytes(L)), benchmark::Counter::kIsIterationInvariantRate);
    state.counters["FLOP/s"] = benchmark::Counter(2 * attention_macs(c, double(L)),
                                                  benchmark::Counter::kIsIterationInvariantRate);
}

/// Read bandwidth of this machine: summing 256 MiB of floats on the models' threads. A decode step cannot
/// be faster than (bytes of weights it streams) / this.
void BM_ReadBandwidth(benchmark::State& state) {
    const std::size_t n = std::size_t(64) << 20;
    std::vector<float> a(n, 1.0f);
    const int threads = kvcache::detail::thread_count(g_threads, n / 32, n * sizeof(float));
    const std::size_t parts = std::size_t(threads);
    for (auto _ : state) {
        std::vector<double> partial(parts, 0.0);
        kvcache::detail::parallel_for(parts, 1, threads, {.helpers = kvcache::detail::HelperUse::always},
                                      [&](std::size_t begin, std::size_t end) {
            for (std::size_t p = begin; p < end; ++p) {
                // 32 independent lanes (vertical adds, so the compiler vectorises without reassociating).
                float lanes[32] = {};
                for (std::size_t i = n / 32 * p / parts * 32; i < n / 32 * (p + 1) / parts * 32; i += 32) {
                    for (std::size_t j = 0; j < 32; ++j) lanes[j] += a[i + j];
                }
                for (float lane : lanes) partial[p] += double(lane);
            }
        });
        double total = 0;
        for (double x : partial) total += x;
        benchmark::DoNotOptimize(total);
    }
    state.counters["bytes/s"] = benchmark::Counter(double(n * sizeof(float)), benchmark::Counter::kIsIterationInvariantRate);
}

// ---- the encoder-decoder ----

void BM_Seq2SeqGenerate(benchmark::State& state, bool use_cache) {
    auto& m = seq2seq();
    const std::size_t n = static_cast<std::size_t>(state.range(0));
    const std::vector<std::vector<std::int32_t>> sources{some_tokens(kSourceTokens, 997, 4)};
    kvcache::Seq2SeqGenerateOptions o;
    o.threads = g_threads;
    o.max_new_tokens = n;
    o.use_cache = use_cache;
    o.stop_at_eos = false;
    std::vector<std::int32_t> tokens;
    m.reset_stats();
    for (auto _ : state) {
        auto r = m.generate(sources, o);
        tokens = r.tokens.at(0);
        benchmark::DoNotOptimize(tokens.data());
    }
    const double positions = double(m.stats().decoder_positions) / double(state.iterations());
    auto& reference = cached_tokens()[{"seq2seq", n}];
    if (use_cache) {
        reference = tokens;
    } else if (reference.empty()) {
        o.use_cache = true;
        reference = m.generate(sources, o).tokens.at(0);
    }
    const auto& c = m.config();
    // Self KV of the target plus cross KV of the source, float, all decoder layers.
    const double kv_bytes = 2.0 * double(c.n_decoder_layers) * double(c.d_model) * sizeof(float) *
                            double(n + 1 + kSourceTokens);
    state.counters["n"] = double(n);
    state.counters["prompt"] = 1;  // BOS
    state.counters["source"] = double(kSourceTokens);
    state.counters["token_forwards"] = positions;
    state.counters["kv_bytes"] = use_cache ? kv_bytes : 0.0;
    state.counters["tokens/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
    state.counters["same_tokens"] = tokens == reference ? 1.0 : 0.0;
}

/// One decoder step of the encoder-decoder at target length L: the self cache holds L-1 positions, the cross
/// cache the encoded source, one token goes in. (The encoder ran once, before; it is not part of a step.)
void BM_Seq2SeqStep(benchmark::State& state) {
    auto& m = seq2seq();
    const std::size_t L = static_cast<std::size_t>(state.range(0));
    const auto source = some_tokens(kSourceTokens, 997, 4);
    auto cache = m.make_cache<float>(1, L, kSourceTokens);
    const std::vector<float> memory = m.encode(source);
    m.write_cross(memory, kSourceTokens, cache.cross, 0);
    const std::size_t V = m.config().tgt_vocab_size;
    const auto prefix = some_tokens(L - 1, V, 5);
    std::vector<float> logits((L - 1) * V);
    m.decode(std::span<const std::int32_t>(prefix), 0, cache.self, cache.cross, logits);
    const std::int32_t next = 5;
    logits.resize(V);
    for (auto _ : state) {
        const auto t0 = Clock::now();
        m.decode(std::span<const std::int32_t>(&next, 1), 0, cache.self, cache.cross, logits);
        state.SetIterationTime(std::chrono::duration<double>(Clock::now() - t0).count());
        cache.self.truncate(L - 1);
    }
    state.counters["L"] = double(L);
    state.counters["kv_bytes"] = double(cache.bytes_allocated());
}

/// The encoder-decoder's step *without* caches at target length L: the decoder over all L target positions,
/// re-projecting the source's cross K/V (exactly one step of generate with use_cache = false).
void BM_Seq2SeqPrefill(benchmark::State& state) {
    auto& m = seq2seq();
    const std::size_t L = static_cast<std::size_t>(state.range(0));
    const std::vector<float> memory = m.encode(some_tokens(kSourceTokens, 997, 4));
    const auto target = some_tokens(L, m.config().tgt_vocab_size, 6);
    for (auto _ : state) {
        auto logits = m.decode_uncached(memory, kSourceTokens, target);
        benchmark::DoNotOptimize(logits.data());
    }
    state.counters["L"] = double(L);
    state.counters["tokens/s"] = benchmark::Counter(double(L), benchmark::Counter::kIsIterationInvariantRate);
}

// ---- which cases run ----

struct Plan {
    bool quick = false;
    std::set<std::string> models{"random", "real", "seq2seq"};
    std::size_t max_uncached_real = 0;  // 0: the default for the mode
};

std::vector<std::int64_t> powers_of_two(std::int64_t from, std::int64_t to) {
    std::vector<std::int64_t> v;
    for (std::int64_t x = from; x <= to; x *= 2) v.push_back(x);
    return v;
}

/// Step/prefill context lengths: powers of two from the prompt length up to `to` and the points halfway
/// between them on a log scale, then `to` + the prompt. Generating n tokens runs steps at contexts
/// prompt+1 .. prompt+n-1, so these points bracket every step of every n <= `to`: the plotting script
/// predicts the speedup from them by interpolation, never extrapolation.
/// --quick: powers of two only.
std::vector<std::int64_t> contexts(std::int64_t to) {
    std::vector<std::int64_t> v;
    for (std::int64_t x = std::int64_t(kPromptTokens); x <= to; x *= 2) {
        v.push_back(x);
        if (!g_quick && x * 3 / 2 <= to && x < to) v.push_back(x * 3 / 2);
    }
    v.push_back(to + std::int64_t(kPromptTokens));
    return v;
}

/// Prints "running <case>" to stderr when a case starts (Google Benchmark prints only when one ends, and the
/// uncached cases take minutes), once per case although the function is entered once per trial run.
void announce(const std::string& family, const benchmark::State& state) {
    static std::string last;
    const std::string name = family + "/" + std::to_string(state.range(0));
    if (name == last) return;
    last = name;
    std::fprintf(stderr, "running %s\n", name.c_str());
    std::fflush(stderr);
}

/// Registers one case per argument. `repetitions` > 1: the case runs that many times and only the fastest
/// is reported (name suffix _min) — on a shared machine the minimum is the run least disturbed by others.
/// Long cases run once: a run of many seconds averages over the disturbances itself.
void add(const std::string& name, const std::vector<std::int64_t>& args, auto fn, bool manual_time, double min_time,
         auto repetitions_for) {
    for (const std::int64_t arg : args) {
        auto* b = benchmark::RegisterBenchmark(name.c_str(), [name, fn](benchmark::State& s) {
            announce(name, s);
            try {
                fn(s);
            } catch (const std::exception& e) {  // e.g. the model file is unreadable: report, go on
                s.SkipWithError(e.what());
            }
        });
        b->Arg(arg)->Unit(benchmark::kMillisecond)->MinTime(min_time);
        if (manual_time) b->UseManualTime();
        else b->UseRealTime();
        if (const int reps = g_quick ? 1 : repetitions_for(arg); reps > 1) {
            b->Repetitions(reps)->ComputeStatistics("min", [](const std::vector<double>& v) {
                return *std::min_element(v.begin(), v.end());
            });
            b->ReportAggregatesOnly(true);
        }
    }
}

void register_all(const Plan& p) {
    const std::int64_t max_n = 1024;
    add("BM_ReadBandwidth", {256}, [](benchmark::State& s) { BM_ReadBandwidth(s); }, false, 0.3,
        [](std::int64_t) { return 3; });
    for (const std::string model : {"random", "real"}) {
        if (!p.models.count(model)) continue;
        const bool real = model == "real";
        if (real && !std::filesystem::exists(model_path())) {
            std::fprintf(stderr, "bench_generation: %s not found (run scripts/fetch-model.sh); skipping the real model\n",
                         model_path().c_str());
            continue;
        }
        // Uncached generation costs ~n²/2 token-forwards: these limits keep the full run near 15 minutes
        // and --quick under 2 on 2 cores. The plots stop where these stop.
        std::int64_t max_uncached = real ? (p.quick ? 64 : 512) : (p.quick ? 256 : 1024);
        if (real && p.max_uncached_real) max_uncached = std::int64_t(p.max_uncached_real);
        const std::int64_t max_cached = p.quick && real ? 256 : max_n;
        const std::int64_t max_context = p.quick ? (real ? 256 : 512) : max_n;
        const double short_time = p.quick ? 0.05 : 0.2;
        // Repetitions: best of 3 for cases that take about a second or less, one run for longer ones.
        const auto best_of_3 = [](std::int64_t) { return 3; };
        const auto once = [](std::int64_t) { return 1; };
        const std::int64_t long_uncached = real ? 64 : 128;
        add("BM_Generate/" + model + "/cached", powers_of_two(16, max_cached),
            [model](benchmark::State& s) { BM_Generate(s, model, true); }, false, short_time,
            [real](std::int64_t n) { return real && n >= 512 ? 1 : 3; });
        add("BM_Generate/" + model + "/uncached", powers_of_two(16, max_uncached),
            [model](benchmark::State& s) { BM_Generate(s, model, false); }, false, short_time,
            [long_uncached](std::int64_t n) { return n >= long_uncached ? 1 : 3; });
        add("BM_Step/" + model + "/cached", contexts(max_context), [model](benchmark::State& s) { BM_Step(s, model); },
            true, short_time, best_of_3);
        add("BM_Prefill/" + model, contexts(max_context), [model](benchmark::State& s) { BM_Prefill(s, model); }, false,
            short_time, [real](std::int64_t L) { return L >= (real ? 512 : 1024) ? 1 : 3; });
        const std::vector<std::int64_t> op_lengths = p.quick ? std::vector<std::int64_t>{128, 1024}
                                                             : std::vector<std::int64_t>{128, 512, 1024, 4096};
        add("BM_CacheAppend/" + model, op_lengths, [model](benchmark::State& s) { BM_CacheAppend(s, model); }, false,
            0.05, once);
        add("BM_CacheCopy/" + model, op_lengths, [model](benchmark::State& s) { BM_CacheCopy(s, model); }, false, 0.05,
            once);
        add("BM_DecodeAttention/" + model, op_lengths,
            [model](benchmark::State& s) { BM_DecodeAttention(s, model); }, false, 0.05, once);
        if (real) {  // 4x the cache's capacity: every mode runs past it (grow: the unbounded comparison)
            for (const std::string mode : {"shift", "sinks", "grow"}) {
                add("BM_PastCapacity/real/" + mode, {std::int64_t(4 * g_capacity)},
                    [mode](benchmark::State& s) { BM_PastCapacity(s, mode); }, false, 0.05, once);
            }
        }
    }
    if (p.models.count("seq2seq")) {
        add("BM_Generate/seq2seq/cached", powers_of_two(16, p.quick ? 256 : max_n),
            [](benchmark::State& s) { BM_Seq2SeqGenerate(s, true); }, false, p.quick ? 0.05 : 0.2,
            [](std::int64_t) { return 3; });
        add("BM_Generate/seq2seq/uncached", powers_of_two(16, p.quick ? 128 : 512),
            [](benchmark::State& s) { BM_Seq2SeqGenerate(s, false); }, false, p.quick ? 0.05 : 0.2,
            [](std::int64_t n) { return n >= 128 ? 1 : 3; });
        const std::vector<std::int64_t> lengths = contexts(p.quick ? 256 : max_n);
        add("BM_Step/seq2seq/cached", lengths, [](benchmark::State& s) { BM_Seq2SeqStep(s); }, true,
            p.quick ? 0.05 : 0.2, [](std::int64_t) { return 3; });
        add("BM_Prefill/seq2seq", lengths, [](benchmark::State& s) { BM_Seq2SeqPrefill(s); }, false,
            p.quick ? 0.05 : 0.2, [](std::int64_t L) { return L >= 512 ? 1 : 3; });
    }
}

}  // namespace

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    Plan plan;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--quick") {
            plan.quick = g_quick = true;
        } else if (a.rfind("--models=", 0) == 0) {
            plan.models.clear();
            std::stringstream list(a.substr(9));
            for (std::string m; std::getline(list, m, ',');) plan.models.insert(m);
        } else if (a.rfind("--threads=", 0) == 0) {
            g_threads = std::stoi(a.substr(10));
        } else if (a.rfind("--capacity=", 0) == 0) {
            g_capacity = std::stoul(a.substr(11));
        } else if (a.rfind("--keep=", 0) == 0) {
            g_keep = std::stoul(a.substr(7));
        } else if (a.rfind("--sinks=", 0) == 0) {
            g_sinks = std::stoul(a.substr(8));
        } else if (a.rfind("--max-uncached-real=", 0) == 0) {
            plan.max_uncached_real = std::stoul(a.substr(20));
        } else {
            std::fprintf(stderr, "bench_generation: unknown argument %s\n", a.c_str());
            return 2;
        }
    }
    register_all(plan);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
