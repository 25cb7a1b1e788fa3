// Sampler stages and the draw; see sampling.hpp for the order and the reproducibility argument.
#include "kvcache/model/sampling.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kvcache/error.hpp"

namespace kvcache {

namespace {

/// Rank order: more probable first, then lower id — a strict total order, so sorts agree everywhere.
bool ranks_before(const TokenProbability& a, const TokenProbability& b) {
    if (a.probability != b.probability) return a.probability > b.probability;
    return a.id < b.id;
}

/// Sorts candidates so that at least the first `count` are the top `count` in rank order.
void sort_prefix(std::vector<TokenProbability>& c, std::size_t count) {
    count = std::min(count, c.size());
    std::partial_sort(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(count), c.end(), ranks_before);
}

}  // namespace

void validate(const SamplingOptions& o) {
    if (!(o.temperature >= 0) || !std::isfinite(o.temperature)) {
        throw ConfigError(fmt::format("sampling: temperature must be finite and >= 0, got {}", o.temperature));
    }
    if (o.top_k < 0) throw ConfigError(fmt::format("sampling: top_k must be >= 0, got {}", o.top_k));
    if (!(o.top_p > 0 && o.top_p <= 1)) {
        throw ConfigError(fmt::format("sampling: top_p must be in (0, 1], got {}", o.top_p));
    }
    if (!(o.min_p >= 0 && o.min_p <= 1)) {
        throw ConfigError(fmt::format("sampling: min_p must be in [0, 1], got {}", o.min_p));
    }
    if (!(o.repetition_penalty > 0) || !std::isfinite(o.repetition_penalty)) {
        throw ConfigError(
            fmt::format("sampling: repetition_penalty must be finite and > 0, got {}", o.repetition_penalty));
    }
}

std::int32_t argmax(std::span<const float> logits) {
    if (logits.empty()) throw ShapeError("argmax: logits are empty");
    std::size_t best = logits.size();
    for (std::size_t i = 0; i < logits.size(); ++i) {
        if (std::isnan(logits[i])) continue;
        if (best == logits.size() || logits[i] > logits[best]) best = i;  // strict: ties keep the lower id
    }
    if (best == logits.size()) throw ConfigError("argmax: every logit is NaN");
    return static_cast<std::int32_t>(best);
}

void apply_repetition_penalty(std::span<float> logits, std::span<const std::int32_t> history, float penalty,
                              std::size_t window) {
    if (window != 0 && history.size() > window) history = history.subspan(history.size() - window);
    for (std::int32_t id : history) {
        if (id < 0 || static_cast<std::size_t>(id) >= logits.size()) {
            throw IndexError(fmt::format("repetition penalty: history token id {} out of range (vocab size {})",
                                         id, logits.size()));
        }
    }
    if (penalty == 1) return;
    std::vector<bool> seen(logits.size(), false);
    for (std::int32_t id : history) {
        auto i = static_cast<std::size_t>(id);
        if (seen[i]) continue;
        seen[i] = true;
        logits[i] = logits[i] > 0 ? logits[i] / penalty : logits[i] * penalty;
    }
}

Sampler::Sampler(const SamplingOptions& options) : options_(options), generator_(options.seed) {
    validate(options_);
}

void Sampler::reseed(std::uint64_t seed) {
    options_.seed = seed;
    generator_.reseed(seed);
}

double Sampler::uniform() { return generator_.unit(); }

void Sampler::filter(std::span<const float> logits, std::span<const std::int32_t> history) {
    if (logits.empty()) throw ShapeError("sampler: logits are empty");
    scratch_logits_.assign(logits.begin(), logits.end());
    apply_repetition_penalty(scratch_logits_, history, options_.repetition_penalty, options_.repetition_window);

    // The logits' contract, the same for greedy and sampled decoding (see sampling.hpp): NaN is an error,
    // -inf is never picked, and +inf logits take all the probability between them (the limit of the softmax).
    std::size_t infinite = 0;  // logits at +inf
    bool finite = false;
    for (std::size_t i = 0; i < scratch_logits_.size(); ++i) {
        const float l = scratch_logits_[i];
        if (std::isnan(l)) throw ConfigError(fmt::format("sampler: the logit of token {} is NaN", i));
        if (l == std::numeric_limits<float>::infinity()) ++infinite;
        else if (l > -std::numeric_limits<float>::infinity()) finite = true;
    }
    if (infinite == 0 && !finite) throw ConfigError("sampler: every logit is -inf; no token can be picked");

    candidates_.clear();
    if (greedy()) {
        candidates_.push_back({argmax(scratch_logits_), 1.0f});  // the first +inf, or the largest finite logit
        return;
    }
    if (infinite > 0) {
        // Every +inf token equally likely, whatever the temperature; the finite ones have none left.
        for (std::size_t i = 0; i < scratch_logits_.size(); ++i) {
            if (scratch_logits_[i] == std::numeric_limits<float>::infinity()) {
                candidates_.push_back({static_cast<std::int32_t>(i), 1.0f});
            }
        }
    } else {
        weigh_finite();
    }
    select_and_normalise();
}

void Sampler::weigh_finite() {
    // Stage 2: temperature, folded into the softmax. -inf logits drop out here.
    float max_logit = -std::numeric_limits<float>::infinity();
    for (float l : scratch_logits_) {
        if (std::isfinite(l)) max_logit = std::max(max_logit, l);
    }
    // 1 / T is inf for T below ~2.9e-39; then the top token's 0 * inf was NaN and every token dropped out,
    // leaving nothing to draw (issue 9). The top token's weight is exp(0) = 1 by definition, written out so
    // that no T can make it NaN; the others become exp(-inf) = 0. Normal temperatures give the same bits.
    const float inv_t = 1.0f / options_.temperature;
    for (std::size_t i = 0; i < scratch_logits_.size(); ++i) {
        const float l = scratch_logits_[i];
        if (!std::isfinite(l)) continue;
        const float below_top = l - max_logit;  // <= 0; -inf if the difference overflows a float
        const float p = below_top == 0 ? 1.0f : std::exp(below_top * inv_t);
        if (p > 0) candidates_.push_back({static_cast<std::int32_t>(i), p});
    }
    // The top token has exp(0) = 1 exactly, so candidates_ is never empty; kept as a check all the same, since
    // every later stage (and the draw) relies on it.
    if (candidates_.empty()) throw ConfigError(fmt::format("sampler: no token survives temperature {}", options_.temperature));
}

void Sampler::select_and_normalise() {
    // Stage 3: top-k.
    if (options_.top_k > 0 && static_cast<std::size_t>(options_.top_k) < candidates_.size()) {
        sort_prefix(candidates_, static_cast<std::size_t>(options_.top_k));
        candidates_.resize(static_cast<std::size_t>(options_.top_k));
    }

    // Stage 4: top-p. The nucleus is usually small, so sort a growing prefix instead of everything.
    if (options_.top_p < 1) {
        double total = 0;
        for (const auto& c : candidates_) total += c.probability;
        const double target = static_cast<double>(options_.top_p) * total;
        std::size_t sorted = 0;
        std::size_t want = std::min<std::size_t>(64, candidates_.size());
        double cumulative = 0;
        std::size_t keep = candidates_.size();
        for (;;) {
            if (want > sorted) {
                // Elements [0, sorted) are already final; sort the next stretch among the rest.
                std::partial_sort(candidates_.begin() + static_cast<std::ptrdiff_t>(sorted),
                                  candidates_.begin() + static_cast<std::ptrdiff_t>(want), candidates_.end(),
                                  ranks_before);
            }
            for (; sorted < want; ++sorted) {
                cumulative += candidates_[sorted].probability;
                if (cumulative >= target) {
                    keep = sorted + 1;
                    break;
                }
            }
            if (keep != candidates_.size() || want == candidates_.size()) break;
            want = std::min(want * 4, candidates_.size());
        }
        candidates_.resize(keep);
    }

    // Stage 5: min-p, relative to the most probable survivor.
    if (options_.min_p > 0) {
        float top = 0;
        for (const auto& c : candidates_) top = std::max(top, c.probability);
        const float threshold = options_.min_p * top;
        std::erase_if(candidates_, [&](const TokenProbability& c) { return c.probability < threshold; });
    }

    double total = 0;
    for (const auto& c : candidates_) total += c.probability;
    for (auto& c : candidates_) c.probability = static_cast<float>(c.probability / total);
}

std::int32_t Sampler::sample(std::span<const float> logits, std::span<const std::int32_t> history) {
    filter(logits, history);
    if (candidates_.empty()) throw ConfigError("sampler: no candidate token to draw from");
    if (candidates_.size() == 1) return candidates_[0].id;
    double total = 0;
    for (const auto& c : candidates_) total += c.probability;
    const double u = uniform() * total;
    double cumulative = 0;
    for (const auto& c : candidates_) {
        cumulative += c.probability;
        if (u < cumulative) return c.id;
    }
    return candidates_.back().id;  // u within rounding of the total
}

std::vector<TokenProbability> Sampler::distribution(std::span<const float> logits,
                                                    std::span<const std::int32_t> history) {
    filter(logits, history);
    std::vector<TokenProbability> out = candidates_;
    std::sort(out.begin(), out.end(), ranks_before);
    return out;
}

}  // namespace kvcache
