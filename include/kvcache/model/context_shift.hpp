// Context shift for the reference decoder: re-rotating cached keys to new positions with the model's own RoPE,
// so a full cache can drop positions (cache/context_shift.hpp) and generation goes on.
#pragma once

#include <cstddef>
#include <span>

#include "kvcache/cache/context_shift.hpp"
#include "kvcache/model/decoder.hpp"

namespace kvcache {

/// Rotates keys ([n_tokens][n_kv_heads][head_dim], as the model's K projection + RoPE left them) that were
/// rotated for position p so that they are rotated for p + delta: one rotation by delta * frequency per pair
/// of dimensions, the same for every token (RoPE rotations compose). Float rounding aside, the result equals
/// RoPE applied at p + delta. ShapeError if keys is not n_tokens rows of the model's kv width.
void rope_shift_keys(const Decoder& model, std::span<float> keys, std::size_t n_tokens, std::ptrdiff_t delta);

/// context_shift's re-rotation for `model`.
struct RopeShift {
    const Decoder* model;
    void operator()(std::size_t /*layer*/, std::span<float> keys, std::size_t n_tokens, std::ptrdiff_t delta) const {
        rope_shift_keys(*model, keys, n_tokens, delta);
    }
};

/// Keeps the first n_keep positions of `row`, drops the next n_discard and re-rotates the rest for their new
/// positions: the next forward pass continues at the row's new length. Errors as context_shift.
template <ShiftableCache C>
void shift_context(const Decoder& model, C& cache, std::size_t row, std::size_t n_keep, std::size_t n_discard) {
    context_shift(cache, row, n_keep, n_discard, RopeShift{&model});
}

}  // namespace kvcache
