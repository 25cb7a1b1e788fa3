// Turning a row of logits into the next token id: greedy, or seeded sampling through composable filters.
//
// The stages run in this fixed order (each optional, each skipped at its neutral value):
//   1. repetition penalty  (CTRL-style: a seen token's logit is divided by the penalty if positive,
//                           multiplied by it if negative; 1 = off)
//   2. temperature         (logits / T; T = 0 means greedy: argmax after stage 1, ties to the lowest id)
//   3. top-k               (keep the k most likely; 0 = off)
//   4. top-p (nucleus)     (keep the smallest most-likely set whose probability reaches p; 1 = off)
//   5. min-p               (keep tokens with probability >= min_p * the top probability; 0 = off)
// then the survivors are renormalised and one is drawn. Candidates are ranked by (probability
// descending, id ascending), so ties never depend on the sort algorithm.
//
// Non-finite logits mean the same to greedy and to sampled decoding: a NaN logit is an error (ConfigError; it
// says the model computed garbage, and skipping it would hide that); a -inf logit is never picked (a mask);
// +inf logits take all the probability, shared equally between them whatever the temperature (the limit of
// the softmax), so greedy picks the first of them and sampling draws among them. Every logit -inf is an error.
//
// Reproducibility: the generator is detail::PortableUniform — std::mt19937_64, whose output sequence the C++
// standard fixes, with a uniform number made from its raw 53 high bits by hand (std::uniform_real_distribution
// is not portable); the random test weights use the same one. The same options, seed and logits therefore
// give the same tokens on every platform.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "kvcache/detail/portable_random.hpp"

namespace kvcache {

struct SamplingOptions {
    float temperature = 0;           ///< 0 → greedy; must be >= 0
    int top_k = 0;                   ///< 0 → off; must be >= 0
    float top_p = 1;                 ///< in (0, 1]; 1 → off
    float min_p = 0;                 ///< in [0, 1]; 0 → off
    float repetition_penalty = 1;    ///< > 0; 1 → off
    std::size_t repetition_window = 0;  ///< penalise only the last N tokens of the history; 0 → all of it
    std::uint64_t seed = 0;
};

/// Throws ConfigError naming the offending option (negative or non-finite temperature, top_k < 0,
/// top_p outside (0, 1], min_p outside [0, 1], repetition_penalty <= 0 or non-finite).
void validate(const SamplingOptions& options);

/// Index of the largest logit; ties go to the lowest id, NaN never wins. Throws ShapeError if empty.
std::int32_t argmax(std::span<const float> logits);

/// Stage 1 in place. Each distinct id of the (windowed) history is penalised once.
/// Throws IndexError for a history id outside [0, logits.size()).
void apply_repetition_penalty(std::span<float> logits, std::span<const std::int32_t> history, float penalty,
                              std::size_t window = 0);

/// A token and its probability after the filters.
struct TokenProbability {
    std::int32_t id;
    float probability;
};

class Sampler {
public:
    /// Validates the options (ConfigError) and seeds the generator with options.seed.
    explicit Sampler(const SamplingOptions& options = {});

    /// Picks the next token. `history` is the sequence so far (prompt + generated), used only by the
    /// repetition penalty. Throws ShapeError for empty logits, IndexError for a bad history id,
    /// ConfigError if a logit is NaN or every logit is -inf.
    std::int32_t sample(std::span<const float> logits, std::span<const std::int32_t> history = {});

    /// The distribution `sample` draws from, after every stage: the surviving tokens in rank order
    /// (probability descending, id ascending), probabilities summing to 1. Greedy → one token with 1.
    /// Does not advance the generator.
    std::vector<TokenProbability> distribution(std::span<const float> logits,
                                               std::span<const std::int32_t> history = {});

    /// Restarts the generator from `seed`, as if the sampler had just been constructed with it.
    void reseed(std::uint64_t seed);

    const SamplingOptions& options() const { return options_; }
    bool greedy() const { return options_.temperature == 0; }

private:
    /// Runs stages 1-5 into candidates_ (normalised); the shared body of sample and distribution.
    void filter(std::span<const float> logits, std::span<const std::int32_t> history);
    /// Stage 2 for finite logits: temperature-scaled softmax weights (unnormalised) into candidates_.
    void weigh_finite();
    /// Stages 3-5 over candidates_, then normalisation.
    void select_and_normalise();
    /// Uniform double in [0, 1) from the generator's raw bits (portable, unlike the std distributions).
    double uniform();

    SamplingOptions options_;
    detail::PortableUniform generator_;
    std::vector<float> scratch_logits_;          // (vocab) logits after the repetition penalty
    std::vector<TokenProbability> candidates_;   // (vocab) working set, then the survivors
};

}  // namespace kvcache
