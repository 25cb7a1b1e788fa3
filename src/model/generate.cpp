// The generation loops, with and without a KV cache; they differ only in what each step runs.
#include "kvcache/model/generate.hpp"

#include "kvcache/model/shifting_generation.hpp"

#include <chrono>

#include "kvcache/model/tokenizer.hpp"

namespace kvcache {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::size_t capacity_for(std::size_t prompt, const GenerateOptions& o) {
    const std::size_t needed = prompt + o.max_new_tokens;
    if (o.cache_capacity && *o.cache_capacity < needed) {
        throw CapacityError(fmt::format("generate: cache capacity {} is below prompt ({} tokens) + max_new_tokens ({})",
                                        *o.cache_capacity, prompt, o.max_new_tokens));
    }
    return o.cache_capacity.value_or(needed);
}

/// Restores the decoder's thread count when a generate call returns or throws.
struct ThreadScope {
    Decoder& model;
    int saved;
    ThreadScope(Decoder& m, int threads) : model(m), saved(m.threads()) {
        if (threads > 0) model.set_threads(threads);
    }
    ~ThreadScope() { model.set_threads(saved); }
};

/// The loop both variants share. `step(sequence, logits)` must leave the next-token logits of `sequence`
/// (prompt + generated so far) in `logits`; the first call is the prompt pass.
template <class Step>
GenerationResult run(Decoder& model, const Tokenizer& tokenizer, std::span<const std::int32_t> prompt,
                     const GenerateOptions& o, Step&& step) {
    if (prompt.empty()) throw ConfigError("generate: the prompt has no tokens");
    Sampler sampler(o.sampling);
    GenerationResult result;
    std::vector<std::int32_t> sequence(prompt.begin(), prompt.end());
    sequence.reserve(prompt.size() + o.max_new_tokens);
    std::vector<float> logits(model.config().vocab_size);
    TokenStreamDecoder stream(tokenizer);

    const auto t_start = Clock::now();
    std::size_t steps_after_prompt = 0;
    double later_seconds = 0;
    for (std::size_t i = 0; i < o.max_new_tokens; ++i) {
        const auto t_step = Clock::now();
        step(std::span<const std::int32_t>(sequence), logits);
        const std::int32_t next = sampler.sample(logits, sequence);
        if (i == 0) {
            result.prompt_seconds = seconds_since(t_step);
        } else {
            later_seconds += seconds_since(t_step);
            ++steps_after_prompt;
        }
        result.tokens.push_back(next);
        sequence.push_back(next);
        if (o.stop_at_eos && (tokenizer.is_end_of_generation(next) || next == model.config().eos_id)) break;
        std::string piece = stream.push(next);
        result.text += piece;
        if (o.on_token && !o.on_token(next, piece)) break;
    }
    std::string rest = stream.finish();
    if (!rest.empty()) {
        result.text += rest;
        if (o.on_token) o.on_token(-1, rest);
    }
    result.total_seconds = seconds_since(t_start);
    if (steps_after_prompt > 0) {
        result.seconds_per_token = later_seconds / double(steps_after_prompt);
        result.tokens_per_second = double(steps_after_prompt) / later_seconds;
    }
    return result;
}

}  // namespace

std::size_t generation_cache_bytes(const Decoder& model, std::size_t prompt_tokens, const GenerateOptions& options) {
    if (!options.cache.is_plain()) return cache_options_bytes(model, prompt_tokens, options);  // issue 14
    return model.cache_bytes(capacity_for(prompt_tokens, options));
}

GenerationResult generate_with_cache(Decoder& model, const Tokenizer& tokenizer,
                                     std::span<const std::int32_t> prompt_tokens, const GenerateOptions& options) {
    if (!options.cache.is_plain()) return generate_with_cache_options(model, tokenizer, prompt_tokens, options);  // issue 14
    validate(options.sampling);
    if (prompt_tokens.empty()) throw ConfigError("generate: the prompt has no tokens");
    ThreadScope threads(model, options.threads);
    auto cache = model.make_cache(capacity_for(prompt_tokens.size(), options));
    std::size_t fed = 0;  // tokens of the sequence already in the cache
    auto result = run(model, tokenizer, prompt_tokens, options,
                      [&](std::span<const std::int32_t> sequence, std::vector<float>& logits) {
                          model.forward(sequence.subspan(fed), cache, 0, logits);  // only the new tokens
                          fed = sequence.size();
                      });
    result.cache_bytes = cache.bytes_allocated();
    return result;
}

GenerationResult generate_with_step(Decoder& model, const Tokenizer& tokenizer,
                                    std::span<const std::int32_t> prompt_tokens, const GenerateOptions& options,
                                    const GenerationStep& step) {
    validate(options.sampling);
    if (!step) throw ConfigError("generate_with_step: no step function");
    ThreadScope threads(model, options.threads);
    return run(model, tokenizer, prompt_tokens, options,
               [&](std::span<const std::int32_t> sequence, std::vector<float>& logits) { step(sequence, logits); });
}

GenerationResult generate_without_cache(Decoder& model, const Tokenizer& tokenizer,
                                        std::span<const std::int32_t> prompt_tokens, const GenerateOptions& options) {
    if (!options.cache.is_plain()) return generate_with_cache_options(model, tokenizer, prompt_tokens, options);  // issue 14
    validate(options.sampling);
    ThreadScope threads(model, options.threads);
    return run(model, tokenizer, prompt_tokens, options,
               [&](std::span<const std::int32_t> sequence, std::vector<float>& logits) {
                   // Attention still needs somewhere to read this pass's K/V from: a scratch cache that
                   // lives for one step. Every token is recomputed; nothing carries over.
                   auto scratch = model.make_cache(sequence.size());
                   model.forward(sequence, scratch, 0, logits);
               });
}

}  // namespace kvcache
