// The generation loops, with and without a KV cache; they differ only in what each step runs.
#include "kvcache/model/generate.hpp"

#include <algorithm>
#include <chrono>

#include "kvcache/detail/checked.hpp"

#include "kvcache/model/shifting_generation.hpp"
#include "kvcache/model/tokenizer.hpp"

namespace kvcache {

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t kReserveAhead = 1 << 16;  // generated tokens the sequence holds before it grows
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::size_t capacity_for(std::size_t prompt, const GenerateOptions& o) {
    if (!o.cache_capacity) return detail::checked_add(prompt, o.max_new_tokens, "generate: prompt + max_new_tokens");
    // Compared without forming prompt + max_new_tokens, which may not fit in 64 bits.
    if (*o.cache_capacity < prompt || *o.cache_capacity - prompt < o.max_new_tokens) {
        throw CapacityError(fmt::format("generate: cache capacity {} is below prompt ({} tokens) + max_new_tokens ({})",
                                        *o.cache_capacity, prompt, o.max_new_tokens));
    }
    return *o.cache_capacity;
}

/// capacity_for, and the cache's bytes checked too: a CapacityError before anything is allocated.
std::size_t checked_capacity(const Decoder& model, std::size_t prompt, const GenerateOptions& o) {
    const std::size_t capacity = capacity_for(prompt, o);
    (void)model.cache_bytes(capacity);
    return capacity;
}

/// One generation in progress: sampling, stopping, streaming and timing of each step's logits. What
/// generate_with_cache, generate_without_cache, generate_with_step and generate_batch share.
class Generation {
public:
    Generation(const Decoder& model, const Tokenizer& tokenizer, std::span<const std::int32_t> prompt,
               const GenerateOptions& o)
        : model_(&model), tokenizer_(&tokenizer), options_(&o), sampler_(o.sampling),
          stream_(tokenizer, {.render_special = false}),
          sequence_(prompt.begin(), prompt.end()), logits_(model.config().vocab_size) {
        if (prompt.empty()) throw ConfigError("generate: the prompt has no tokens");
        // At most kReserveAhead ahead: max_new_tokens is a limit, not a promise (near 2^64 it is "until the end
        // of the text"), and reserving it all would be std::length_error or bad_alloc before the first step.
        sequence_.reserve(prompt.size() + std::min(o.max_new_tokens, kReserveAhead));
        done_ = o.max_new_tokens == 0;
    }

    bool done() const { return done_; }
    /// Prompt + generated so far: the next step's input.
    std::span<const std::int32_t> sequence() const { return sequence_; }
    std::span<float> logits() { return logits_; }

    /// Samples from logits() (the step that computed them took `seconds`), streams the token, decides
    /// whether generation goes on.
    void accept(double seconds) {
        const std::int32_t next = sampler_.sample(logits_, sequence_);
        if (result_.tokens.empty()) {
            result_.prompt_seconds = seconds;
        } else {
            later_seconds_ += seconds;
            ++steps_after_prompt_;
        }
        result_.tokens.push_back(next);
        sequence_.push_back(next);
        if (result_.tokens.size() >= options_->max_new_tokens) done_ = true;
        if (options_->stop_at_eos && (tokenizer_->is_end_of_generation(next) || next == model_->config().eos_id)) {
            done_ = true;
            return;
        }
        std::string piece = stream_.push(next);
        result_.text += piece;
        if (options_->on_token && !options_->on_token(next, piece)) done_ = true;
    }

    GenerationResult finish(double total_seconds) {
        std::string rest = stream_.finish();
        if (!rest.empty()) {
            result_.text += rest;
            if (options_->on_token) options_->on_token(-1, rest);
        }
        result_.total_seconds = total_seconds;
        if (steps_after_prompt_ > 0) {
            result_.seconds_per_token = later_seconds_ / double(steps_after_prompt_);
            result_.tokens_per_second = double(steps_after_prompt_) / later_seconds_;
        }
        return std::move(result_);
    }

private:
    const Decoder* model_;
    const Tokenizer* tokenizer_;
    const GenerateOptions* options_;
    Sampler sampler_;
    TokenStreamDecoder stream_;
    std::vector<std::int32_t> sequence_;
    std::vector<float> logits_;
    GenerationResult result_;
    std::size_t steps_after_prompt_ = 0;
    double later_seconds_ = 0;
    bool done_ = false;
};

/// The loop of the one-sequence variants. `step(sequence, logits)` must leave the next-token logits of
/// `sequence` (prompt + generated so far) in `logits`; the first call is the prompt pass.
template <class Step>
GenerationResult run(const Decoder& model, const Tokenizer& tokenizer, std::span<const std::int32_t> prompt,
                     const GenerateOptions& o, Step&& step) {
    Generation g(model, tokenizer, prompt, o);
    const auto t_start = Clock::now();
    while (!g.done()) {
        const auto t_step = Clock::now();
        step(g.sequence(), g.logits());
        g.accept(seconds_since(t_step));
    }
    return g.finish(seconds_since(t_start));
}

}  // namespace

std::size_t generation_cache_bytes(const Decoder& model, std::size_t prompt_tokens, const GenerateOptions& options) {
    if (!options.cache.is_plain()) return cache_options_bytes(model, prompt_tokens, options);  // issue 14
    return model.cache_bytes(capacity_for(prompt_tokens, options));  // both checked: CapacityError
}

GenerationResult generate_with_cache(Decoder& model, const Tokenizer& tokenizer,
                                     std::span<const std::int32_t> prompt_tokens, const GenerateOptions& options) {
    if (!options.cache.is_plain()) return generate_with_cache_options(model, tokenizer, prompt_tokens, options);  // issue 14
    validate(options.sampling);
    if (prompt_tokens.empty()) throw ConfigError("generate: the prompt has no tokens");
    const ForwardOptions forward_options{.threads = options.threads, .precision = options.precision};
    auto cache = model.make_cache(checked_capacity(model, prompt_tokens.size(), options));
    std::size_t fed = 0;  // tokens of the sequence already in the cache
    auto result = run(model, tokenizer, prompt_tokens, options,
                      [&](std::span<const std::int32_t> sequence, std::span<float> logits) {
                          model.forward(sequence.subspan(fed), cache, 0, logits, forward_options);  // the new tokens
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
    return run(model, tokenizer, prompt_tokens, options,
               [&](std::span<const std::int32_t> sequence, std::span<float> logits) { step(sequence, logits); });
}

GenerationResult generate_without_cache(Decoder& model, const Tokenizer& tokenizer,
                                        std::span<const std::int32_t> prompt_tokens, const GenerateOptions& options) {
    validate(options.sampling);
    const ForwardOptions forward_options{.threads = options.threads, .precision = options.precision};
    return run(model, tokenizer, prompt_tokens, options,
               [&](std::span<const std::int32_t> sequence, std::span<float> logits) {
                   // Attention still needs somewhere to read this pass's K/V from: a scratch cache that
                   // lives for one step. Every token is recomputed; nothing carries over.
                   auto scratch = model.make_cache(sequence.size());
                   model.forward(sequence, scratch, 0, logits, forward_options);
               });
}

std::vector<GenerationResult> generate_batch(Decoder& model, const Tokenizer& tokenizer,
                                             std::span<const std::vector<std::int32_t>> prompts,
                                             std::span<const GenerateOptions> options) {
    if (options.size() != 1 && options.size() != prompts.size()) {
        throw ConfigError(fmt::format("generate_batch: {} option sets for {} prompts (give 1 or {})", options.size(),
                                      prompts.size(), prompts.size()));
    }
    const auto options_of = [&](std::size_t i) -> const GenerateOptions& { return options[options.size() == 1 ? 0 : i]; };
    int threads = 0;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
        const GenerateOptions& o = options_of(i);
        validate(o.sampling);
        if (prompts[i].empty()) throw ConfigError(fmt::format("generate_batch: prompt {} has no tokens", i));
        for (std::size_t t = 0; t < prompts[i].size(); ++t) {
            if (prompts[i][t] < 0 || static_cast<std::size_t>(prompts[i][t]) >= model.config().vocab_size) {
                throw IndexError(fmt::format("generate_batch: token {} (prompt {}, index {}) is outside the "
                                             "vocabulary of {}",
                                             prompts[i][t], i, t, model.config().vocab_size));
            }
        }
        checked_capacity(model, prompts[i].size(), o);  // CapacityError before anything is allocated
        threads = std::max(threads, o.threads);
        if (o.precision != options_of(0).precision) {
            throw ConfigError(fmt::format("generate_batch: prompt {} asks for {} matmuls and prompt 0 for {} (one "
                                          "batched step has one precision)",
                                          i, matmul_precision_name(o.precision),
                                          matmul_precision_name(options_of(0).precision)));
        }
    }
    const auto t_start = Clock::now();
    std::vector<MultiLayerKVCache<float>> caches;
    std::vector<Generation> generations;
    caches.reserve(prompts.size());
    generations.reserve(prompts.size());
    for (std::size_t i = 0; i < prompts.size(); ++i) {
        caches.push_back(model.make_cache(capacity_for(prompts[i].size(), options_of(i))));
        generations.emplace_back(model, tokenizer, prompts[i], options_of(i));
    }
    std::vector<std::size_t> fed(prompts.size(), 0);  // tokens of each sequence already in its cache
    std::vector<ForwardItem<MultiLayerKVCache<float>>> items;
    std::vector<std::size_t> in_step;  // which generation each item is
    items.reserve(prompts.size());
    in_step.reserve(prompts.size());
    for (;;) {
        items.clear();
        in_step.clear();
        for (std::size_t i = 0; i < prompts.size(); ++i) {
            if (generations[i].done()) continue;
            items.push_back({generations[i].sequence().subspan(fed[i]), &caches[i], 0, generations[i].logits()});
            in_step.push_back(i);
        }
        if (items.empty()) break;
        const auto t_step = Clock::now();
        model.forward(std::span<const ForwardItem<MultiLayerKVCache<float>>>(items), ForwardOptions{.threads = threads, .precision = options_of(0).precision});
        const double seconds = seconds_since(t_step);
        for (std::size_t i : in_step) {
            fed[i] = generations[i].sequence().size();
            generations[i].accept(seconds);
        }
    }
    std::vector<GenerationResult> results;
    results.reserve(prompts.size());
    const double total = seconds_since(t_start);
    for (std::size_t i = 0; i < prompts.size(); ++i) {
        results.push_back(generations[i].finish(total));
        results.back().cache_bytes = caches[i].bytes_allocated();
    }
    return results;
}

std::vector<GenerationResult> generate_batch(Decoder& model, const Tokenizer& tokenizer,
                                             std::span<const std::vector<std::int32_t>> prompts,
                                             const GenerateOptions& options) {
    return generate_batch(model, tokenizer, prompts, std::span<const GenerateOptions>(&options, 1));
}

}  // namespace kvcache
