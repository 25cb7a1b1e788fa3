// example_simple: chat with SmolLM2 through the KV cache, then generate the same answer without the cache,
// and print both timings. Run scripts/fetch-model.sh first.
//
//   example_simple "Why is the sky blue?" --max-tokens 64 --threads 2
//   example_simple "Tell a long story." -n 512 --cache-type q8_0 --ctx 256 --context-shift   (goes past 256)
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "kvcache/error.hpp"
#include "kvcache/model/cache_options.hpp"
#include "kvcache/model/chat.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/model/generate.hpp"
#include "kvcache/model/load_model.hpp"
#include "kvcache/model/tokenizer.hpp"

#ifndef KVCACHE_SOURCE_DIR
#define KVCACHE_SOURCE_DIR "."
#endif

namespace {

std::string mib(std::size_t bytes) { return fmt::format("{:.1f} MiB", double(bytes) / (1024.0 * 1024.0)); }

// A float option that must be finite and within [lo, hi] (CLI::Range lets NaN through and prints its bounds
// with all 309 digits of a double).
CLI::Validator finite_between(double lo, double hi, bool open_low = false) {
    return CLI::Validator(
        [=](const std::string& text) -> std::string {
            double value = 0;
            try {
                std::size_t used = 0;
                value = std::stod(text, &used);
                if (used != text.size()) return "'" + text + "' is not a number";
            } catch (const std::exception&) {
                return "'" + text + "' is not a number";
            }
            if (!std::isfinite(value) || value < lo || value > hi || (open_low && value == lo))
                return fmt::format("{} is outside {}{:g}, {:g}]", text, open_low ? "(" : "[", lo, hi);
            return {};
        },
        fmt::format("{}{:g}, {:g}]", open_low ? "(" : "[", lo, hi));
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"Generate text with SmolLM2 through a KV cache, then without one, and compare the time."};
    std::string prompt = "Explain in two sentences what a KV cache does in a transformer.";
    std::string model_path = kvcache::default_model_path(KVCACHE_SOURCE_DIR).string();
    std::size_t max_tokens = 64;
    int threads = 0;
    bool skip_uncached = false;
    std::string chat_format = "auto";
    kvcache::SamplingOptions sampling;
    app.add_option("prompt", prompt, "The user message (formatted with the model's chat template; taken literally)");
    app.add_option("-m,--model", model_path, "GGUF model file (default: $KVCACHE_MODEL or models/ in the source tree)");
    app.add_option("-n,--max-tokens", max_tokens, "Most tokens to generate")->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20));
    app.add_option("-t,--temperature", sampling.temperature, "0 = greedy")->check(finite_between(0, 100));
    app.add_option("--top-k", sampling.top_k, "Keep the k most likely tokens (0 = off)")->check(CLI::Range(0, 1 << 30));
    app.add_option("--top-p", sampling.top_p, "Nucleus sampling threshold")->check(finite_between(0, 1, true));
    app.add_option("--seed", sampling.seed, "Sampling seed");
    app.add_option("--threads", threads, "Threads (0 = all cores)")->check(CLI::Range(0, 1024));
    app.add_option("--chat-format", chat_format,
                   "Chat format: auto (recognise the model's template; an unknown one is an error) or one of "
                   "chatml, llama3, llama2, zephyr, phi3")
        ->check(CLI::IsMember({"auto", "chatml", "llama3", "llama2", "zephyr", "phi3"}));
    app.add_flag("--no-uncached", skip_uncached, "Skip the run without a cache");
    std::string precision = "f32";
    app.add_option("--precision", precision,
                   "Matmul arithmetic: f32, or int8 (activations rounded to int8 per block of 32; faster, "
                   "slightly different logits)");
    // The cache (issue 14): element types, positions, and what happens when it is full.
    std::string cache_type = "f32";
    std::optional<std::size_t> ctx;
    kvcache::CacheOptions cache;
    app.add_option("--cache-type", cache_type, "KV cache element type: f32, f16, bf16, q8_0, q4_0, q4_0h")
        ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0", "q4_0", "q4_0h"}));
    app.add_option("--ctx", ctx, "Positions the cache holds (default: prompt + max tokens)")
        ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 24));
    app.add_flag("--context-shift", cache.context_shift,
                 "When the cache is full, drop the older half after --keep positions and go on");
    app.add_option("--keep", cache.n_keep, "Positions a context shift keeps at the start (default 0)");
    app.add_option("--sinks", cache.sinks, "Attention sinks: first positions always kept (with --window)");
    app.add_option("--window", cache.window, "Keep only the last W positions after the sinks (a sink + window cache)")
        ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 24));
    CLI11_PARSE(app, argc, argv);

    try {
        if (!std::filesystem::exists(model_path)) {
            fmt::print(stderr, "error: model file not found: {}\nFetch it with: scripts/fetch-model.sh "
                               "(or pass --model / set KVCACHE_MODEL)\n", model_path);
            return 1;
        }
        auto [model, tokenizer, fingerprint] = kvcache::load_model(model_path, {.threads = threads});
        const auto& c = model.config();
        fmt::print(stderr, "model: {} ({}, {} layers, d_model {}, {} heads / {} kv heads), weights {}\n", model_path,
                   c.architecture, c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, mib(model.weights().bytes()));

        // The prompt is the user's text: encode_chat keeps it literal, so typing "<|im_end|><|im_start|>system"
        // cannot forge a turn; only the template's own markers become control tokens.
        const std::vector<kvcache::ChatMessage> messages{{"user", prompt}};
        const auto format = chat_format == "auto" ? kvcache::detect_chat_template(tokenizer.chat_template())
                                                  : kvcache::chat_template_for(*kvcache::chat_template_family_from_name(chat_format));
        const auto prompt_tokens = kvcache::encode_chat(tokenizer, format, messages, {.add_generation_prompt = true});

        kvcache::GenerateOptions options;
        options.max_new_tokens = max_tokens;
        options.sampling = sampling;
        options.threads = threads;
        options.precision = kvcache::parse_matmul_precision(precision);
        cache.keys = cache.values = kvcache::parse_cache_element(cache_type);
        options.cache = cache;
        options.cache_capacity = ctx;
        const std::size_t positions = cache.window ? cache.sinks + cache.window : ctx.value_or(prompt_tokens.size() + max_tokens);
        fmt::print(stderr, "prompt: {} tokens; KV cache for {} positions: {} ({}, {:.0f} bytes per token){}\n",
                   prompt_tokens.size(), positions,
                   mib(kvcache::generation_cache_bytes(model, prompt_tokens.size(), options)), cache_type,
                   double(model.cache_bytes(1)) / 4.0 * kvcache::cache_element_bytes_per_value(cache.keys),
                   cache.context_shift ? ", context shift when full" : cache.window ? ", sinks + window" : "");

        options.on_token = [](std::int32_t, std::string_view piece) {
            std::fwrite(piece.data(), 1, piece.size(), stdout);
            std::fflush(stdout);
            return true;
        };
        const auto cached = kvcache::generate_with_cache(model, tokenizer, prompt_tokens, options);
        std::fputs("\n", stdout);
        fmt::print(stderr, "\nwith cache:    {} tokens in {:.3f} s (prompt {:.3f} s, then {:.1f} tokens/s)\n",
                   cached.tokens.size(), cached.total_seconds, cached.prompt_seconds, cached.tokens_per_second);
        if (skip_uncached) return 0;

        options.on_token = nullptr;
        const auto uncached = kvcache::generate_without_cache(model, tokenizer, prompt_tokens, options);
        fmt::print(stderr, "without cache: {} tokens in {:.3f} s ({:.1f} tokens/s after the prompt)\n",
                   uncached.tokens.size(), uncached.total_seconds, uncached.tokens_per_second);
        fmt::print(stderr, "speedup: {:.2f}x{}\n", uncached.total_seconds / cached.total_seconds,
                   uncached.tokens == cached.tokens ? " (same tokens)" : " (the two runs produced different tokens!)");
        return 0;
    } catch (const kvcache::ChatTemplateError& e) {
        fmt::print(stderr, "error: {}\n(pass --chat-format to choose one)\n", e.what());
        return 1;
    } catch (const kvcache::Error& e) {
        fmt::print(stderr, "error: {}\n", e.what());
        return 1;
    } catch (const std::exception& e) {  // not expected: the library throws kvcache::Error only
        fmt::print(stderr, "internal error: {}\n", e.what());
        return 2;
    }
}
