// example_seq2seq: a small PyTorch-trained nn.Transformer turns English number words into digits, with the
// KV caches and without them, and says how much the caches saved.
//
//   example_seq2seq "four hundred and twelve"                 # prints 412 (the model in examples/models/numbers)
//   example_seq2seq seventy-one thousand and six --repeat 200
//   example_seq2seq --config tests/fixtures/seq2seq/post_norm_relu.config.json
//                   --weights tests/fixtures/seq2seq/post_norm_relu.safetensors --ids 5 9 12 7   (token ids in/out)
//
// The answer goes to stdout, the report (model, timings, speedup) to stderr. The model was trained by
// scripts/train_seq2seq_numbers.py; its vocabulary (words in, characters out) is vocab.json beside it.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "kvcache/error.hpp"
#include "kvcache/model/encoder_decoder.hpp"
#include "kvcache/model/text_vocabulary.hpp"

#ifndef KVCACHE_SOURCE_DIR
#define KVCACHE_SOURCE_DIR "."
#endif

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// CLI11 reads integers with strtoull/strtoll: "-1" becomes 2^64 - 1 for an unsigned option, a number beyond
// 2^63 saturates without a word and "010" is octal. So integer options take plain decimal digits only, and the
// message quotes at most the first digits of what was typed.
const CLI::Validator kDecimal(
    [](std::string& text) -> std::string {
        const bool digits = !text.empty() && std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
        if (digits && text.size() <= 19) return {};
        const std::string shown = text.size() > 24 ? text.substr(0, 20) + "..." : text;
        return fmt::format("'{}' is not a decimal number from 0 to 10^19 - 1", shown);
    },
    "DECIMAL");

struct Timing {
    std::vector<double> seconds, encode, decode;
    double median(std::vector<double> v) const {
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
    }
};

std::string ms(double seconds) { return fmt::format("{:.3f} ms", seconds * 1e3); }

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"Turn English number words into digits with a small encoder-decoder, with and without its KV "
                 "caches. The answer goes to stdout, the timings to stderr."};
    std::vector<std::string> words;
    std::string model_dir = (fs::path(KVCACHE_SOURCE_DIR) / "examples" / "models" / "numbers").string();
    std::string config_path, weights_path, vocab_path;
    std::vector<std::int64_t> ids;
    std::int64_t max_new = 16, threads = 1, repeat = 50, top_k = 0;
    std::uint64_t seed = 0;
    kvcache::SamplingOptions sampling;
    app.add_option("text", words, "A number from 0 to 999999 in English words, e.g. \"four hundred and twelve\"");
    app.add_option("--model-dir", model_dir, "Directory with config.json, model.safetensors and vocab.json")
        ->check(CLI::ExistingDirectory);
    app.add_option("--config", config_path, "Config JSON (default: MODEL_DIR/config.json)");
    app.add_option("--weights", weights_path, "safetensors weights (default: MODEL_DIR/model.safetensors)");
    app.add_option("--vocab", vocab_path, "Vocabulary JSON (default: MODEL_DIR/vocab.json if it exists)");
    app.add_option("--ids", ids, "Source token ids instead of text (for models without a vocabulary)")
        ->check(kDecimal)
        ->check(CLI::Range(std::int64_t{0}, std::int64_t{INT32_MAX}));
    app.add_option("--max-new", max_new, "Most tokens to generate")->check(kDecimal)->check(CLI::Range(1, 1 << 20));
    app.add_option("--temperature", sampling.temperature, "0 = greedy")->check(CLI::Range(0.0f, 100.0f));
    app.add_option("--top-k", top_k, "Keep the k most likely tokens (0 = off)")->check(kDecimal)->check(CLI::Range(0, 1 << 24));
    app.add_option("--top-p", sampling.top_p, "Nucleus sampling threshold in (0, 1]")->check(CLI::Range(0.0f, 1.0f));
    app.add_option("--seed", seed, "Sampling seed")->check(kDecimal);
    app.add_option("--threads", threads, "Threads (0 = all cores; 1 suits a model this small)")
        ->check(kDecimal)
        ->check(CLI::Range(0, 1024));
    app.add_option("--repeat", repeat, "Timed runs each way (the median is reported)")
        ->check(kDecimal)
        ->check(CLI::Range(1, 100000));
    CLI11_PARSE(app, argc, argv);

    try {
        const fs::path dir(model_dir);
        if (config_path.empty()) config_path = (dir / "config.json").string();
        if (weights_path.empty()) weights_path = (dir / "model.safetensors").string();
        if (vocab_path.empty() && ids.empty() && fs::exists(dir / "vocab.json")) vocab_path = (dir / "vocab.json").string();
        std::optional<kvcache::Seq2SeqVocabulary> vocab;
        if (!vocab_path.empty()) vocab = kvcache::Seq2SeqVocabulary::load(vocab_path);

        std::vector<std::int32_t> source;
        std::string text;
        for (const auto& w : words) text += (text.empty() ? "" : " ") + w;
        if (!ids.empty()) {
            if (!words.empty()) throw kvcache::ConfigError("give either text or --ids, not both");
            for (std::int64_t id : ids) source.push_back(static_cast<std::int32_t>(id));  // range-checked above
        } else {
            if (!vocab) throw kvcache::ConfigError("this model has no vocab.json: pass source token ids with --ids");
            if (text.empty())
                throw kvcache::ConfigError("give a number in words, e.g.: example_seq2seq \"four hundred and twelve\"");
            source = vocab->source.encode(text);
            if (source.empty()) throw kvcache::ConfigError(fmt::format("\"{}\" holds no words", text));
        }

        kvcache::EncoderDecoder model = kvcache::EncoderDecoder::load(config_path, weights_path);
        const auto& c = model.config();
        if (vocab && (vocab->source.size() != c.src_vocab_size || vocab->target.size() != c.tgt_vocab_size))
            throw kvcache::ConfigError(fmt::format("the vocabulary has {} source and {} target tokens, the model {} and {}",
                                                   vocab->source.size(), vocab->target.size(), c.src_vocab_size,
                                                   c.tgt_vocab_size));

        kvcache::Seq2SeqGenerateOptions options;
        options.max_new_tokens = static_cast<std::size_t>(max_new);
        options.threads = static_cast<int>(threads);
        sampling.top_k = static_cast<int>(top_k);
        sampling.seed = seed;
        options.sampling = sampling;
        const std::vector<std::vector<std::int32_t>> batch{source};

        // Alternate the two ways so a busy machine slows both alike; report the medians.
        Timing with, without;
        std::vector<std::int32_t> cached_tokens, uncached_tokens;
        kvcache::EncoderDecoderStats cached_work, uncached_work;
        for (std::int64_t i = 0; i < repeat; ++i) {
            for (bool use_cache : {true, false}) {
                options.use_cache = use_cache;
                Timing& t = use_cache ? with : without;
                model.reset_stats();
                const auto start = Clock::now();
                const auto result = model.generate(batch, options);
                t.seconds.push_back(std::chrono::duration<double>(Clock::now() - start).count());
                t.encode.push_back(result.encode_seconds);
                t.decode.push_back(result.decode_seconds);
                (use_cache ? cached_tokens : uncached_tokens) = result.tokens[0];
                (use_cache ? cached_work : uncached_work) = model.stats();
            }
        }
        if (cached_tokens != uncached_tokens) {
            fmt::print(stderr, "error: generation with and without the caches differs\n");
            return 1;
        }

        auto ids_of = [](const std::vector<std::int32_t>& t) { return fmt::format("{}", fmt::join(t, " ")); };
        const std::string answer = vocab ? vocab->target.decode(cached_tokens) : ids_of(cached_tokens);
        fmt::print("{}\n", answer);

        fmt::print(stderr, "model: {}: d_model {}, {} heads, d_ff {}, {} encoder + {} decoder layers, {}\n",
                   fs::path(weights_path).parent_path().string(), c.d_model, c.n_heads, c.d_ff, c.n_encoder_layers,
                   c.n_decoder_layers, c.norm_first ? "pre-norm" : "post-norm");
        fmt::print(stderr, "source: {} ({} tokens: {}) -> generated tokens: {}\n", text.empty() ? "ids" : '"' + text + '"',
                   source.size(), ids_of(source), ids_of(cached_tokens));
        auto report = [&](const char* label, const Timing& t, const kvcache::EncoderDecoderStats& work) {
            fmt::print(stderr, "{:<19} {} per run (encode {}, decode {}); decoder positions {}, cross K/V projections {}\n",
                       label, ms(t.median(t.seconds)), ms(t.median(t.encode)), ms(t.median(t.decode)),
                       work.decoder_positions, work.cross_kv_projections);
        };
        report("with the caches:", with, cached_work);
        report("without the caches:", without, uncached_work);
        fmt::print(stderr, "speedup with the caches: {:.2f}x per run, {:.2f}x in the decode steps "
                           "(median of {} runs each, {} thread{}; same tokens both ways)\n",
                   with.median(without.seconds) / with.median(with.seconds),
                   with.median(without.decode) / with.median(with.decode), repeat, threads,
                   threads == 1 ? "" : "s");
        return 0;
    } catch (const kvcache::Error& e) {
        fmt::print(stderr, "error: {}\n", e.what());
        return 1;
    } catch (const std::exception& e) {  // std::bad_alloc and the like: still a message, not an abort
        fmt::print(stderr, "error: {}\n", e.what());
        return 1;
    }
}
