// kvcache-perplexity: the perplexity of a GGUF model over a text file through a KV cache of a chosen element
// type — how much q8_0/q4_0 keys and values, or a sink + window cache, cost in prediction quality.
//
//   kvcache-perplexity [--model M] FILE --ctx 2048 --cache-type q8_0 [--chunks 4]
//   kvcache-perplexity FILE --ctx 256 --sinks 4 --window 252    (streaming: one cache of sinks + window)
// The text used in docs/quantised-caches.md: scripts/fetch-perplexity-text.sh.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>

#include "kvcache/error.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/model/load_model.hpp"
#include "kvcache/model/perplexity.hpp"
#include "kvcache/model/tokenizer.hpp"

#ifndef KVCACHE_SOURCE_DIR
#define KVCACHE_SOURCE_DIR "."
#endif

int main(int argc, char** argv) {
    CLI::App app{"Perplexity of a GGUF model over a text file, through a KV cache of the chosen type."};
    std::string model_path = kvcache::default_model_path(KVCACHE_SOURCE_DIR).string(), file, cache_type = "f32";
    std::optional<std::string> type_k, type_v;
    kvcache::PerplexityOptions options;
    int threads = 0;
    std::size_t max_tokens = 0;
    bool json = false;
    app.add_option("file", file, "UTF-8 text file")->required();
    app.add_option("-m,--model", model_path, "GGUF model file (default: $KVCACHE_MODEL or models/ in the source tree)");
    app.add_option("-c,--ctx", options.context, "Tokens per chunk (the cache's positions); in streaming mode, "
                                                "predictions before this many tokens are not scored")
        ->check(CLI::Range(2, 1 << 24));  // not PositiveNumber: its message printed DBL_MAX's 309 digits
    app.add_option("--cache-type", cache_type, "Keys and values: f32, f16, bf16, q8_0, q4_0, q4_0h");
    app.add_option("--cache-type-k", type_k, "Keys only (overrides --cache-type)");
    app.add_option("--cache-type-v", type_v, "Values only (overrides --cache-type)");
    app.add_option("--chunks", options.max_chunks, "At most this many chunks (0: all)")->check(CLI::Range(0, 1 << 30));
    app.add_option("--batch", options.batch, "Tokens per forward pass")->check(CLI::Range(1, 1 << 16));
    app.add_option("--sinks", options.cache.sinks, "Streaming mode: attention sinks kept at the start")
        ->check(CLI::Range(0, 1 << 24));
    app.add_option("--window", options.cache.window, "Streaming mode: the most recent positions kept (> 0 selects it)")
        ->check(CLI::Range(0, 1 << 24));
    app.add_option("--evict-block", options.cache.evict_block, "Streaming mode: positions dropped at once")
        ->check(CLI::Range(1, 1 << 24));
    app.add_option("--tokens", max_tokens, "Use only the first N tokens of the text (0: all)")
        ->check(CLI::Range(0, 1 << 30));  // -1 was taken as 2^64 - 1
    app.add_option("--threads", threads, "Threads (0 = all cores)")->check(CLI::Range(0, 1024));  // -1 was "all"
    std::string precision = "f32";
    app.add_option("--precision", precision, "Matmul arithmetic: f32, or int8 (activations rounded to int8; faster)");
    app.add_flag("--json", json, "Print the result as one JSON line on stdout");
    CLI11_PARSE(app, argc, argv);

    try {
        options.cache.keys = kvcache::parse_cache_element(type_k.value_or(cache_type));
        options.cache.values = kvcache::parse_cache_element(type_v.value_or(cache_type));
        std::ifstream in(file, std::ios::binary);
        if (!in) throw kvcache::IoError(fmt::format("cannot open {}", file));
        const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        if (!std::filesystem::exists(model_path)) {
            throw kvcache::IoError(fmt::format("model file not found: {} (fetch it with scripts/fetch-model.sh, or pass "
                                               "--model / set KVCACHE_MODEL)",
                                               model_path));
        }
        options.precision = kvcache::parse_matmul_precision(precision);
        auto [model, tokenizer, fingerprint] = kvcache::load_model(model_path, {.threads = threads});
        auto tokens = tokenizer.encode(text, {.add_special = true});
        if (max_tokens && tokens.size() > max_tokens) tokens.resize(max_tokens);
        const bool streaming = options.cache.window > 0;
        fmt::print(stderr, "{}: {} bytes, {} tokens; ctx {}, keys {} values {}{}\n", file, text.size(), tokens.size(),
                   options.context, kvcache::cache_element_name(options.cache.keys),
                   kvcache::cache_element_name(options.cache.values),
                   streaming ? fmt::format(", streaming through {} sinks + {} window", options.cache.sinks,
                                           options.cache.window)
                             : std::string());
        options.on_progress = [](std::size_t done, std::size_t total, double ppl) {
            fmt::print(stderr, "  {:>7} / {} tokens  perplexity so far {:.4f}\n", done, total, ppl);
        };
        const auto r = kvcache::perplexity(model, tokens, options);
        fmt::print(stderr, "perplexity: {:.4f} over {} predictions ({} chunks), KV cache {:.1f} MiB, {:.1f} s\n",
                   r.perplexity, r.scored, r.chunks, double(r.cache_bytes) / (1 << 20), r.seconds);
        if (json) {
            fmt::print("{{\"file\": \"{}\", \"tokens\": {}, \"ctx\": {}, \"keys\": \"{}\", \"values\": \"{}\", "
                       "\"sinks\": {}, \"window\": {}, \"perplexity\": {:.6f}, \"scored\": {}, \"chunks\": {}, "
                       "\"cache_bytes\": {}, \"seconds\": {:.2f}, \"precision\": \"{}\"}}\n",
                       file, tokens.size(), options.context, kvcache::cache_element_name(options.cache.keys),
                       kvcache::cache_element_name(options.cache.values), options.cache.sinks, options.cache.window,
                       r.perplexity, r.scored, r.chunks, r.cache_bytes, r.seconds,
                       kvcache::matmul_precision_name(options.precision));
        } else {
            fmt::print("{:.4f}\n", r.perplexity);
        }
        return 0;
    } catch (const kvcache::Error& e) {
        fmt::print(stderr, "error: {}\n", e.what());
        return 1;
    } catch (const std::exception& e) {  // not expected: the library throws kvcache::Error only
        fmt::print(stderr, "error: {}\n", e.what());
        return 1;
    }
}
