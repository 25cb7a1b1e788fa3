// check_cache_consistency(): proves that an attention layer gives the same output token by token with a
// KV cache as it gives all at once without one — the test every cached attention layer should pass.
#pragma once

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "kvcache/error.hpp"
#include "kvcache/testing/compare.hpp"
#include "kvcache/testing/random.hpp"

namespace kvcache::testing {

/// What a layer offers to be checked. x and out are [n_tokens][model_dim] floats.
///  - forward(x, n, out): n tokens at positions 0..n-1, causal, no cache.
///  - forward_cached(x, n, cache, out): n new tokens that follow what the cache already holds; the layer
///    appends their K/V to the cache and attends over it.
template <class Layer, class Cache>
concept CachedAttentionLayer = requires(Layer& layer, std::span<const float> x, std::size_t n, Cache& cache,
                                        std::span<float> out) {
    { layer.model_dim() } -> std::convertible_to<std::size_t>;
    layer.forward(x, n, out);
    layer.forward_cached(x, n, cache, out);
};

struct ConsistencyOptions {
    std::size_t seq_len = 32;     ///< positions in the random sequence
    std::size_t step = 1;         ///< tokens per cached call (1 = token by token; larger = chunked prefill)
    std::uint64_t seed = 1;       ///< for the random input
    float input_stddev = 1.0f;    ///< of the random input
    double tolerance = 1e-5;      ///< allowed max error at a position, relative to max |uncached output|
};

struct ConsistencyReport {
    std::vector<double> max_abs_error;  ///< per position: max |cached - uncached| over the model dimension
    double worst_error = 0.0;
    std::size_t worst_position = 0;
    double reference_scale = 0.0;       ///< max |uncached output|
    double tolerance = 0.0;

    bool passed() const { return worst_error <= tolerance * reference_scale; }
    /// First position whose error exceeds the tolerance, or max_abs_error.size() if none does.
    std::size_t first_failing_position() const {
        for (std::size_t p = 0; p < max_abs_error.size(); ++p) {
            if (max_abs_error[p] > tolerance * reference_scale) return p;
        }
        return max_abs_error.size();
    }
    /// One line for a test log: pass/fail, the worst position and the first failing one.
    std::string summary() const {
        std::ostringstream out;
        out << (passed() ? "consistent" : "INCONSISTENT") << ": worst error " << worst_error << " at position "
            << worst_position << " (allowed " << tolerance * reference_scale << " = " << tolerance
            << " x max|output| " << reference_scale << ")";
        if (!passed()) out << "; first failing position " << first_failing_position();
        return out.str();
    }
};

/// Runs one random sequence through `layer` twice — all at once without a cache, then opts.step tokens
/// at a time with a fresh cache from make_cache() — and reports the largest deviation per position.
template <class Layer, class MakeCache>
    requires CachedAttentionLayer<Layer, std::invoke_result_t<MakeCache&>>
ConsistencyReport check_cache_consistency(Layer& layer, MakeCache&& make_cache, const ConsistencyOptions& opts = {}) {
    if (opts.seq_len == 0 || opts.step == 0) {
        throw ConfigError("check_cache_consistency needs seq_len >= 1 and step >= 1");
    }
    const std::size_t dim = layer.model_dim();
    const std::vector<float> x = random_normal(opts.seq_len * dim, opts.seed, opts.input_stddev);

    std::vector<float> full(opts.seq_len * dim);
    layer.forward(std::span<const float>(x), opts.seq_len, std::span<float>(full));

    auto cache = make_cache();
    std::vector<float> stepped(opts.seq_len * dim);
    for (std::size_t start = 0; start < opts.seq_len; start += opts.step) {
        const std::size_t n = std::min(opts.step, opts.seq_len - start);
        layer.forward_cached(std::span<const float>(x).subspan(start * dim, n * dim), n, cache,
                             std::span<float>(stepped).subspan(start * dim, n * dim));
    }

    ConsistencyReport report;
    report.tolerance = opts.tolerance;
    for (float v : full) report.reference_scale = std::max(report.reference_scale, double(std::abs(v)));
    report.max_abs_error.resize(opts.seq_len);
    for (std::size_t p = 0; p < opts.seq_len; ++p) {
        const auto diff = compare_tensors(std::span<const float>(stepped).subspan(p * dim, dim),
                                          std::span<const float>(full).subspan(p * dim, dim));
        report.max_abs_error[p] = diff.non_finite ? std::numeric_limits<double>::infinity() : diff.max_abs_error;
        if (report.max_abs_error[p] > report.worst_error || p == 0) {
            report.worst_error = report.max_abs_error[p];
            report.worst_position = p;
        }
    }
    return report;
}

}  // namespace kvcache::testing
