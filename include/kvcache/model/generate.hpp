// Text generation with the reference decoder: with a KV cache (each step runs only the new token) and
// without one (each step runs the whole sequence again), so the two can be compared and timed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvcache/model/cache_options.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/model/sampling.hpp"

namespace kvcache {

class Tokenizer;

struct GenerateOptions {
    std::size_t max_new_tokens = 64;
    SamplingOptions sampling;
    /// Positions the cache holds; default prompt + max_new_tokens (never the model's training context).
    /// Smaller than that is a CapacityError, raised before anything is allocated.
    std::optional<std::size_t> cache_capacity;
    /// Stop at the tokenizer's end-of-generation tokens (EOS, <|im_end|>, ...).
    bool stop_at_eos = true;
    /// Threads of this call's forward passes (ForwardOptions::threads); 0 → the decoder's default. The
    /// decoder itself is not changed.
    int threads = 0;
    /// The matmuls' arithmetic (ForwardOptions::precision): int8 is faster and rounds the activations.
    MatmulPrecision precision = MatmulPrecision::f32;
    /// Called with each generated token and the text it completes (whole UTF-8; may be empty);
    /// return false to stop. Not called for the stop token. At the end, bytes still held back (an
    /// incomplete UTF-8 sequence) are passed once with token -1.
    std::function<bool(std::int32_t token, std::string_view piece)> on_token;
    /// Key/value element types and what a full cache does (context shift, sinks + window): see
    /// cache_options.hpp. Anything but the default routes generate_with_cache to generate_with_cache_options.
    CacheOptions cache;
};

struct GenerationResult {
    std::string text;                  ///< the generated text (without the prompt and the stop token)
    std::vector<std::int32_t> tokens;  ///< generated ids, including the stop token if one ended generation
    double prompt_seconds = 0;         ///< the forward pass over the prompt that yields the first token
    double seconds_per_token = 0;      ///< mean time of each later step (forward + sampling)
    double tokens_per_second = 0;      ///< 1 / seconds_per_token (0 if there were no later steps)
    double total_seconds = 0;
    std::size_t cache_bytes = 0;       ///< KV cache allocated (0 without a cache: it is rebuilt each step)
    std::size_t reused_prompt_tokens = 0;  ///< prompt positions taken from a prefix cache (PagedSession)
};

/// Bytes the KV cache of generate_with_cache will allocate for this prompt length and these options.
std::size_t generation_cache_bytes(const Decoder& model, std::size_t prompt_tokens, const GenerateOptions& options);

/// Prefills the prompt into a fresh cache, then feeds one token per step. Throws ConfigError for an empty
/// prompt or bad sampling options, CapacityError if cache_capacity is below prompt + max_new_tokens,
/// IndexError for a prompt token outside the vocabulary.
GenerationResult generate_with_cache(Decoder& model, const Tokenizer& tokenizer,
                                     std::span<const std::int32_t> prompt_tokens, const GenerateOptions& options);

/// Computes the next-token logits of `sequence` (prompt + generated so far) into `logits` (vocab_size
/// floats). The first call gets the prompt; each later call the same sequence one token longer.
using GenerationStep = std::function<void(std::span<const std::int32_t> sequence, std::span<float> logits)>;

/// The generation loop of generate_with_cache (sampling, stopping, streaming, timing) around any way of
/// computing logits — how PagedSession generates over a paged pool. options.threads is for `step` to
/// honour (this loop runs no forward pass itself). Throws ConfigError for an empty prompt or bad sampling
/// options; whatever `step` throws passes through.
GenerationResult generate_with_step(Decoder& model, const Tokenizer& tokenizer,
                                    std::span<const std::int32_t> prompt_tokens, const GenerateOptions& options,
                                    const GenerationStep& step);

/// The same generation where every step runs the whole sequence (prompt + generated so far) through the
/// model from scratch — O(n) work per step, O(n²) in all. Same tokens as generate_with_cache for the same
/// options (the decoder's logits do not depend on how tokens are batched).
GenerationResult generate_without_cache(Decoder& model, const Tokenizer& tokenizer,
                                        std::span<const std::int32_t> prompt_tokens, const GenerateOptions& options);

/// Several prompts generated together: each step runs one batched forward pass over every unfinished
/// prompt's new tokens (the prompts in the first step, then one token each), so the weights are read once
/// per step for all of them. `options` holds one set for every prompt or one per prompt (ConfigError
/// otherwise); the calls run with the largest threads among them, and every prompt's precision must be the
/// same (a step has one; ConfigError otherwise). Each result — tokens, text, callbacks —
/// is what generate_with_cache gives for that prompt and options alone (the logits are bitwise the same);
/// timings count the shared steps each prompt took part in. Throws, before anything runs, what
/// generate_with_cache throws for any prompt.
std::vector<GenerationResult> generate_batch(Decoder& model, const Tokenizer& tokenizer,
                                             std::span<const std::vector<std::int32_t>> prompts,
                                             std::span<const GenerateOptions> options);
/// The same with one set of options for every prompt.
std::vector<GenerationResult> generate_batch(Decoder& model, const Tokenizer& tokenizer,
                                             std::span<const std::vector<std::int32_t>> prompts,
                                             const GenerateOptions& options);

}  // namespace kvcache
