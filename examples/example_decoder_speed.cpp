// example_decoder_speed: decode and prefill throughput of the reference decoder, against memory bandwidth.
//
//   example_decoder_speed --threads 2            (default model; see --help)
// Prints: read bandwidth (sum of a 1 GiB array), decode tokens/s at contexts 128 and 1024, prefill
// tokens/s for a 512-token prompt, and the bytes of weights + KV read per decode token.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <exception>
#include <cstdlib>
#include <filesystem>
#include <numeric>
#include <vector>

#include "kvcache/detail/thread_pool.hpp"
#include "kvcache/error.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/model/generate.hpp"
#include "kvcache/model/gguf.hpp"
#include "kvcache/model/tokenizer.hpp"

#ifndef KVCACHE_SOURCE_DIR
#define KVCACHE_SOURCE_DIR "."
#endif

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

/// GB/s of summing 1 GiB of floats with `threads` threads (best of 3).
double read_bandwidth(int threads) {
    std::vector<float> a(std::size_t(1) << 28, 1.0f);
    double best = 0;
    for (int rep = 0; rep < 3; ++rep) {
        const auto t = Clock::now();
        // One part per thread on the library's pool; the parts' sums are added in order.
        const std::size_t parts = std::size_t(kvcache::detail::thread_count(threads, 64, a.size() * sizeof(float)));
        std::vector<double> partial(parts, 0.0);
        kvcache::detail::parallel_for(parts, 1, int(parts), {.helpers = kvcache::detail::HelperUse::always},
                                      [&](std::size_t begin, std::size_t end) {
            for (std::size_t p = begin; p < end; ++p) {
                for (std::size_t i = a.size() / 8 * p / parts * 8; i < a.size() / 8 * (p + 1) / parts * 8; i += 8) {
                    partial[p] += double(a[i] + a[i + 1] + a[i + 2] + a[i + 3] + a[i + 4] + a[i + 5] + a[i + 6] +
                                         a[i + 7]);
                }
            }
        });
        double total = 0;
        for (double x : partial) total += x;
        const double s = since(t);
        if (total != double(a.size())) std::abort();
        best = std::max(best, double(a.size() * sizeof(float)) / s / 1e9);
    }
    return best;
}
}  // namespace

// A function-try-block: every kvcache::Error (a bad model file, a cache too large) ends the program with its
// message and status 1 instead of std::terminate.
int main(int argc, char** argv) try {
    CLI::App app{"Decode/prefill speed of the reference decoder"};
    std::string path = std::getenv("KVCACHE_MODEL") ? std::getenv("KVCACHE_MODEL")
                                                    : std::string(KVCACHE_SOURCE_DIR) +
                                                          "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    int threads = 2;
    bool float_weights = false;
    bool no_bandwidth = false;
    std::size_t gen_tokens = 256;
    app.add_option("-m,--model", path, "GGUF model");
    app.add_option("--threads", threads, "Threads")->check(CLI::Range(1, 1024));
    app.add_flag("--float-weights", float_weights, "Dequantise all weights to float at load");
    app.add_flag("--no-bandwidth", no_bandwidth, "Skip the 1 GiB bandwidth measurement");
    app.add_option("--generate", gen_tokens, "New tokens for the with/without cache comparison (0: skip)")
        ->check(CLI::Range(std::size_t{0}, std::size_t{1} << 16));
    CLI11_PARSE(app, argc, argv);
    if (!std::filesystem::exists(path)) {
        fmt::print(stderr, "error: model file not found: {} (run scripts/fetch-model.sh)\n", path);
        return 1;
    }
    const auto file = kvcache::gguf::File::open(path);
    auto weights = kvcache::DecoderWeights::from_gguf(file);
    if (float_weights) {  // the "dequantise at load" variant: every matrix as float, the same values
        auto to_float = [](kvcache::WeightMatrix& w) {
            std::vector<float> all(w.rows() * w.cols());
            for (std::size_t r = 0; r < w.rows(); ++r) w.dequantize_row(r, all.data() + r * w.cols());
            w = kvcache::WeightMatrix::from_floats(w.rows(), w.cols(), all);
        };
        to_float(weights.token_embedding);
        if (!weights.tied_output()) to_float(weights.output);
        for (auto& l : weights.layers) {
            for (auto* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) to_float(*m);
        }
    }
    kvcache::Decoder d(std::move(weights), threads);
    const auto& c = d.config();
    const std::size_t weight_bytes = d.weights().bytes();
    double bw = 0;
    if (!no_bandwidth) {
        bw = read_bandwidth(threads);
        fmt::print("read bandwidth ({} threads, 1 GiB sum): {:.1f} GB/s\n", threads, bw);
    }
    fmt::print("weights: {:.1f} MiB ({})\n", double(weight_bytes) / 1048576.0, float_weights ? "float" : "as stored");

    std::vector<float> logits(c.vocab_size);
    for (std::size_t context : {128, 1024}) {
        auto cache = d.make_cache(context + 64);
        std::vector<std::int32_t> prompt(context);
        for (std::size_t i = 0; i < context; ++i) prompt[i] = std::int32_t((i * 7919) % c.vocab_size);
        d.forward(prompt, cache, 0, logits);
        const int steps = 32;
        const auto t = Clock::now();
        std::int32_t tok = 42;
        for (int i = 0; i < steps; ++i) d.forward(std::span(&tok, 1), cache, 0, logits);
        const double s = since(t) / steps;
        const std::size_t kv = d.cache_bytes(context + steps / 2);
        fmt::print("decode at context {}: {:.1f} tokens/s ({:.2f} ms/token); reads ~{:.1f} MiB/token "
                   "(weights {:.1f} + KV {:.1f}) = {:.1f} GB/s{}\n",
                   context, 1 / s, s * 1e3, double(weight_bytes + kv) / 1048576.0, double(weight_bytes) / 1048576.0,
                   double(kv) / 1048576.0, double(weight_bytes + kv) / s / 1e9,
                   bw > 0 ? fmt::format(" ({:.0f}% of the measured bandwidth)", 100 * double(weight_bytes + kv) / s / 1e9 / bw)
                          : "");
    }
    {
        auto cache = d.make_cache(512);
        std::vector<std::int32_t> prompt(512);
        for (std::size_t i = 0; i < 512; ++i) prompt[i] = std::int32_t((i * 104729) % c.vocab_size);
        const auto t = Clock::now();
        d.forward(prompt, cache, 0, logits);
        const double s = since(t);
        fmt::print("prefill of 512 tokens: {:.3f} s = {:.1f} tokens/s\n", s, 512 / s);
    }
    if (gen_tokens > 0) {
        const auto tok = kvcache::Tokenizer::from_gguf(file);
        std::vector<std::int32_t> prompt = tok.encode("The history of the printing press", {.add_special = false});
        kvcache::GenerateOptions o;
        o.max_new_tokens = gen_tokens;
        o.stop_at_eos = false;
        auto with = kvcache::generate_with_cache(d, tok, prompt, o);
        fmt::print("{} new tokens with the cache: {:.2f} s\n", gen_tokens, with.total_seconds);
        auto without = kvcache::generate_without_cache(d, tok, prompt, o);
        fmt::print("{} new tokens without the cache: {:.2f} s ({:.1f}x slower; same tokens: {})\n", gen_tokens,
                   without.total_seconds, without.total_seconds / with.total_seconds,
                   with.tokens == without.tokens ? "yes" : "NO");
    }
    return 0;
} catch (const kvcache::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
} catch (const std::exception& e) {  // not expected: the library throws kvcache::Error only
    fmt::print(stderr, "internal error: {}\n", e.what());
    return 2;
}
