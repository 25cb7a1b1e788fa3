// rope_shift_keys: the reference decoder's RoPE applied as a position delta to cached keys.
#include "kvcache/model/context_shift.hpp"

#include <cmath>
#include <vector>

#include <fmt/format.h>

#include "kvcache/detail/format.hpp"
#include "kvcache/error.hpp"

namespace kvcache {

void rope_shift_keys(const Decoder& model, std::span<float> keys, std::size_t n_tokens, std::ptrdiff_t delta) {
    const DecoderConfig& c = model.config();
    const std::size_t heads = c.n_kv_heads, d = c.head_dim, half = c.rope_dim / 2;
    detail::check_size("rope_shift_keys keys", keys.size(), n_tokens * heads * d);
    if (delta == 0 || n_tokens == 0) return;
    // The decoder's frequencies (decoder.cpp): position_scale * base^(-2i / rope_dim) / factor_i.
    const auto& factors = model.weights().rope_freqs;
    std::vector<float> cosines(half), sines(half);
    for (std::size_t i = 0; i < half; ++i) {
        double f = std::pow(static_cast<double>(c.rope_base), -2.0 * double(i) / double(c.rope_dim));
        f *= static_cast<double>(c.rope_position_scale);
        if (!factors.empty()) f /= static_cast<double>(factors[i]);
        const double angle = static_cast<double>(delta) * f;
        cosines[i] = static_cast<float>(std::cos(angle));
        sines[i] = static_cast<float>(std::sin(angle));
    }
    const bool interleaved = c.rope_style == RopeStyle::Interleaved;
    for (std::size_t row = 0; row < n_tokens * heads; ++row) {
        float* v = keys.data() + row * d;
        for (std::size_t i = 0; i < half; ++i) {
            const std::size_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
            const float x0 = v[a], x1 = v[b];
            v[a] = std::fma(x0, cosines[i], -x1 * sines[i]);
            v[b] = std::fma(x0, sines[i], x1 * cosines[i]);
        }
    }
}

}  // namespace kvcache
