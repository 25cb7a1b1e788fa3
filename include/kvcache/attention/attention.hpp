// attention(): fast attention over any cache — one pass with an online softmax, vectorised, threaded.
//
// How it reads the cache: for each query token and kv head, the query heads that share that kv head
// (GQA) stream its keys and values once, tile by tile. A tile's scores are formed, the running maximum
// and sum are rescaled once per tile, and the tile's values are accumulated — no score matrix over the
// whole context exists. Long contexts are split into segments that run on different threads and are
// merged at the end (split-K / "flash decoding").
//
// Determinism: tiles and segments are cut at fixed absolute positions, partial results merge in segment
// order, and each score is one fixed dot-product routine. So the output for a query at position p depends
// only on p and the cache contents — not on how many queries are processed together, on the thread
// count, or on how the cache is chunked (contiguous or paged).
#pragma once

#include <algorithm>
#include <cstddef>
#include <limits>
#include <span>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "kvcache/attention/attention_options.hpp"
#include "kvcache/cache/concept.hpp"
#include "kvcache/detail/simd.hpp"

namespace kvcache {
namespace detail {

/// Positions per tile: scores of one tile are formed before one softmax rescale. A multiple of 8.
inline constexpr std::size_t kAttentionTile = 64;
/// Positions per segment (one unit of parallel work). A multiple of kAttentionTile.
inline constexpr std::size_t kAttentionSegment = 1024;

inline int resolve_threads(int requested) {
#if defined(_OPENMP)
    return requested > 0 ? requested : omp_get_max_threads();
#else
    (void)requested;
    return 1;
#endif
}

/// Per-thread scratch, grown on first use and kept: no allocation on the decode path after warm-up.
struct TileScratch {
    std::vector<float> scores;       // [group][kAttentionTile]
    std::vector<float> probs;        // [kAttentionTile]
    std::vector<const void*> krows;  // [kAttentionTile]
    std::vector<const void*> vrows;  // [kAttentionTile]
    void reserve(std::size_t group) {
        if (scores.size() < group * kAttentionTile) scores.resize(group * kAttentionTile);
        probs.resize(kAttentionTile);
        krows.resize(kAttentionTile);
        vrows.resize(kAttentionTile);
    }
};
inline TileScratch& tile_scratch() {
    thread_local TileScratch scratch;
    return scratch;
}

/// Online-softmax state of `group` query heads after reading some positions: running max m, running sum
/// l and the unnormalised output acc, laid out as [group][head_dim + 2] = acc..., m, l.
struct SoftmaxState {
    float* base;
    std::size_t d;
    float* acc(std::size_t g) const { return base + g * (d + 2); }
    float& m(std::size_t g) const { return base[g * (d + 2) + d]; }
    float& l(std::size_t g) const { return base[g * (d + 2) + d + 1]; }
    void reset(std::size_t group) const {
        for (std::size_t g = 0; g < group; ++g) {
            std::fill(acc(g), acc(g) + d, 0.0f);
            m(g) = -std::numeric_limits<float>::infinity();
            l(g) = 0.0f;
        }
    }
};

/// Folds one tile of n rows into the state of `group` pre-scaled queries qs ([group][d]).
template <StorageElement T>
void fold_tile(const float* qs, std::size_t group, std::size_t d, std::size_t n, TileScratch& tmp,
               const SoftmaxState& state) {
    const T* const* krows = reinterpret_cast<const T* const*>(tmp.krows.data());
    const T* const* vrows = reinterpret_cast<const T* const*>(tmp.vrows.data());
    for (std::size_t g = 0; g < group; ++g) {
        float* scores = tmp.scores.data() + g * kAttentionTile;
        const float* qg = qs + g * d;
        std::size_t i = 0;
        for (; i + 8 <= n; i += 8) dot_rows8(qg, krows + i, d, scores + i);
        for (; i < n; ++i) scores[i] = dot_row(qg, krows[i], d);

        const float tile_max = *std::max_element(scores, scores + n);
        float& m = state.m(g);
        float& l = state.l(g);
        if (tile_max > m) {
            if (l > 0.0f) {
                const float correction = std::exp(m - tile_max);
                l *= correction;
                scale(state.acc(g), correction, d);
            }
            m = tile_max;
        }
        l += exp_shifted(scores, m, tmp.probs.data(), n);
        accumulate_rows(tmp.probs.data(), vrows, n, state.acc(g), d);
    }
}

/// Reads positions [lo, hi) of one kv head (from any chunk range) into the state, tile by tile, with
/// tiles cut at absolute multiples of kAttentionTile.
template <StorageElement T, class Chunks>
void attend_positions(const float* qs, std::size_t group, std::size_t d, const Chunks& chunks, std::size_t lo,
                      std::size_t hi, const SoftmaxState& state) {
    TileScratch& tmp = tile_scratch();
    tmp.reserve(group);
    std::size_t n = 0;
    for (const KVChunk<T>& chunk : chunks) {
        const std::size_t begin = std::max(lo, chunk.start);
        const std::size_t end = std::min(hi, chunk.start + chunk.length);
        if (chunk.start >= hi) break;
        if (begin >= end) continue;
        const std::size_t stride = chunk.row_stride(d);
        for (std::size_t pos = begin; pos < end; ++pos) {
            tmp.krows[n] = chunk.keys + (pos - chunk.start) * stride;
            tmp.vrows[n] = chunk.values + (pos - chunk.start) * stride;
            ++n;
            if ((pos + 1) % kAttentionTile == 0 || pos + 1 == hi) {
                fold_tile<T>(qs, group, d, n, tmp, state);
                n = 0;
            }
        }
    }
    if (n) fold_tile<T>(qs, group, d, n, tmp, state);  // only if the chunks ended before hi
}

/// One unit of parallel work: query token t, kv head h, positions [lo, hi) of one segment.
struct AttentionWork {
    std::size_t token, kv_head, lo, hi, slot;
};

/// Work list and partial states of the calling thread, kept between calls.
struct AttentionPlan {
    std::vector<AttentionWork> work;
    std::vector<std::size_t> first_slot;  // [token * kv_heads + head] -> first slot; segments are consecutive
    std::vector<std::size_t> n_slots;
    std::vector<float> states;            // [slot][group][head_dim + 2]
    std::vector<float> scaled_q;          // [n_tokens][q_heads][head_dim]
};
inline AttentionPlan& attention_plan() {
    thread_local AttentionPlan plan;
    return plan;
}

}  // namespace detail

/// Fast attention; same contract and result (within 1e-5 relative, fp32) as attention_reference.
/// q and out are [n_tokens][n_q_heads][head_dim]; query head h reads kv head h / (n_q_heads / kv_heads).
template <KVCacheReadable C>
void attention(const C& cache, std::size_t layer, std::size_t row, std::span<const float> q, std::size_t n_tokens,
               std::size_t n_q_heads, std::span<float> out, const AttentionOptions& opts = {}) {
    using T = typename C::element_type;
    const auto s = detail::check_attention(cache, layer, row, q, n_tokens, n_q_heads, out, opts);
    if (n_tokens == 0) return;
    const std::size_t d = s.head_dim;
    const std::size_t state_size = s.group * (d + 2);
    detail::AttentionPlan& plan = detail::attention_plan();

    plan.scaled_q.resize(q.size());
    for (std::size_t i = 0; i < q.size(); ++i) plan.scaled_q[i] = q[i] * s.scale;

    // Plan: one work item per (token, kv head, segment), segments cut at absolute multiples.
    plan.work.clear();
    plan.first_slot.resize(n_tokens * s.kv_heads);
    plan.n_slots.resize(n_tokens * s.kv_heads);
    std::size_t slots = 0;
    for (std::size_t t = 0; t < n_tokens; ++t) {
        std::size_t lo = 0, hi = 0;
        s.visible(opts, t, lo, hi);
        for (std::size_t h = 0; h < s.kv_heads; ++h) {
            plan.first_slot[t * s.kv_heads + h] = slots;
            std::size_t count = 0;
            for (std::size_t a = lo; a < hi; a = (a / detail::kAttentionSegment + 1) * detail::kAttentionSegment) {
                const std::size_t b = std::min(hi, (a / detail::kAttentionSegment + 1) * detail::kAttentionSegment);
                plan.work.push_back({t, h, a, b, slots++});
                ++count;
            }
            plan.n_slots[t * s.kv_heads + h] = count;
        }
    }
    plan.states.resize(slots * state_size);

    const int threads = std::min<int>(detail::resolve_threads(opts.threads), static_cast<int>(plan.work.size()));
    const float* qbase = plan.scaled_q.data();
    float* states = plan.states.data();
    const auto* work = plan.work.data();
    const std::ptrdiff_t n_work = static_cast<std::ptrdiff_t>(plan.work.size());
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
#endif
    for (std::ptrdiff_t w = 0; w < n_work; ++w) {
        const detail::AttentionWork& item = work[w];
        const detail::SoftmaxState state{states + item.slot * state_size, d};
        state.reset(s.group);
        const float* qs = qbase + (item.token * n_q_heads + item.kv_head * s.group) * d;
        detail::attend_positions<T>(qs, s.group, d, cache.chunks(layer, row, item.kv_head), item.lo, item.hi, state);
    }
    (void)threads;

    // Merge each (token, kv head)'s segments in order and normalise.
    for (std::size_t t = 0; t < n_tokens; ++t) {
        for (std::size_t h = 0; h < s.kv_heads; ++h) {
            const std::size_t first = plan.first_slot[t * s.kv_heads + h];
            const std::size_t count = plan.n_slots[t * s.kv_heads + h];
            for (std::size_t g = 0; g < s.group; ++g) {
                float* o = out.data() + (t * n_q_heads + h * s.group + g) * d;
                float m = -std::numeric_limits<float>::infinity();
                for (std::size_t k = 0; k < count; ++k) {
                    m = std::max(m, detail::SoftmaxState{states + (first + k) * state_size, d}.m(g));
                }
                float l = 0.0f;
                std::fill(o, o + d, 0.0f);
                for (std::size_t k = 0; k < count; ++k) {
                    const detail::SoftmaxState part{states + (first + k) * state_size, d};
                    if (part.l(g) == 0.0f) continue;
                    const float w = std::exp(part.m(g) - m);
                    l += part.l(g) * w;
                    const float* acc = part.acc(g);
                    for (std::size_t i = 0; i < d; ++i) o[i] += acc[i] * w;
                }
                const float inv = l > 0.0f ? 1.0f / l : 0.0f;
                for (std::size_t i = 0; i < d; ++i) o[i] *= inv;
            }
        }
    }
}

}  // namespace kvcache
