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
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "kvcache/attention/attention_options.hpp"
#include "kvcache/attention/int8_scores.hpp"
#include "kvcache/cache/concept.hpp"
#include "kvcache/detail/simd.hpp"
#include "kvcache/detail/thread_pool.hpp"

namespace kvcache {
namespace detail {

/// Positions per tile: scores of one tile are formed before one softmax rescale. A multiple of 4.
inline constexpr std::size_t kAttentionTile = 64;
/// Positions per segment (one unit of parallel work). A multiple of kAttentionTile.
inline constexpr std::size_t kAttentionSegment = 512;
/// Query heads folded together over one pass of a tile (each K and V row is loaded once for all of them).
inline constexpr std::size_t kAttentionHeadBundle = 3;

/// Per-thread scratch, grown on first use and kept: no allocation on the decode path after warm-up.
struct TileScratch {
    std::vector<float> scores;       // [group][kAttentionTile]: q·k, then e^(score - max)
    std::vector<const void*> krows;  // [kAttentionTile]: row pointers when a tile spans several chunks
    std::vector<const void*> vrows;  // [kAttentionTile]
    void reserve(std::size_t group) {
        if (scores.size() < group * kAttentionTile) scores.resize(group * kAttentionTile);
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

/// Asks for the cache lines of the row of `bytes` bytes at `address` (an integer: the address may lie past the
/// end of a chunk, and a prefetch never faults). A row that does not start on a line boundary spans one line more.
inline void prefetch_row(std::uintptr_t address, std::size_t bytes) {
#if defined(__GNUC__)
    const std::uintptr_t end = address + bytes;
    for (std::uintptr_t line = address & ~std::uintptr_t{63}; line < end; line += 64) {
        __builtin_prefetch(reinterpret_cast<const void*>(line), 0, 3);
    }
#else
    (void)address;
    (void)bytes;
#endif
}

/// Rows of a tile that lie in one chunk: row r at base + r * stride (no per-row pointers to gather).
template <class T>
struct StridedRows {
    const T* base;
    std::size_t stride;
    const T* operator[](std::size_t r) const { return base + r * stride; }
    /// Asks for rows r .. r + count - 1 of the next tile while this one is computed: the hardware prefetcher alone
    /// leaves one core well short of the memory's bandwidth (measured: 20-30 % more GB/s with it). One span:
    /// each line is asked for once (rows that are not line-aligned share lines), and the loop runs once rather
    /// than once per row — per row it was ~13 % of the integer scores' time.
    void prefetch_next_tile(std::size_t r, std::size_t d, std::size_t count) const {
        prefetch_row(reinterpret_cast<std::uintptr_t>(base) + (r + kAttentionTile) * stride * sizeof(T),
                     (count - 1) * stride * sizeof(T) + storage_units<T>(d) * sizeof(T));
    }
};
/// Rows of a tile that spans chunks (a paged cache's blocks): one pointer per row.
template <class T>
struct GatheredRows {
    const void* const* rows;
    std::size_t n;  // rows in the tile
    const T* operator[](std::size_t r) const { return static_cast<const T*>(rows[r]); }
    /// Asks for rows r + kGatherLookahead .. + count - 1 of this tile (those it has): the rows lie in different
    /// blocks, so the hardware prefetcher does not see them coming.
    void prefetch_next_tile(std::size_t r, std::size_t d, std::size_t count) const {
        for (std::size_t i = r + kGatherLookahead; i < std::min(n, r + kGatherLookahead + count); ++i) {
            prefetch_row(reinterpret_cast<std::uintptr_t>(rows[i]), storage_units<T>(d) * sizeof(T));
        }
    }
    static constexpr std::size_t kGatherLookahead = 12;
};

/// Values i.. of a row of T as a Simd<W> vector, in the basis the row is stored in: a RotatedElement's blocks are
/// read as their stored blocks (attention rotates the queries and the output to match, see attention()).
template <StorageElement T, std::size_t W>
inline typename Simd<W>::V load_stored(const T* row, std::size_t i) {
    if constexpr (RotatedElement<T>) {
        using B = typename ElementTraits<T>::stored_block;
        constexpr std::size_t n = block_values_v<T>, nb = block_values_v<B>;
        static_assert(n % nb == 0 && nb % W == 0, "a rotated element is a whole number of stored blocks");
        return Simd<W>::template load<B>(ElementTraits<T>::stored(row + i / n) + (i % n) / nb, i % nb);
    } else {
        return Simd<W>::template load<T>(row, i);
    }
}

/// Whether tile kernels read rows of T through Simd<W>::load_block, a whole 32-value block (two vectors) per
/// call: the block's scale is converted once instead of once per vector — the same values, so the same bits.
template <StorageElement T, std::size_t W>
inline constexpr bool kLoadBlocks = KVCACHE_HAVE_AVX512 && W == 16 && !RotatedElement<T> &&
                                    (std::is_same_v<T, q8_0> || std::is_same_v<T, q4_0>);

/// scores[g * kAttentionTile + r] = q_g · k_r for the NB query heads q ([NB][d], pre-scaled) and rows
/// r in [0, n). Four rows at a time; a short last group repeats row n-1 (its extra results are dropped),
/// so every score is the same instruction sequence — and so the same bits — wherever its row falls.
/// A row of a quantised type is dequantised W values at a time in registers (Simd<W>::load), once for all
/// NB heads.
template <StorageElement T, std::size_t W, std::size_t NB, class Rows>
inline void tile_scores(const float* q, std::size_t d, const Rows& k, std::size_t n, float* scores) {
    using S = Simd<W>;
    for (std::size_t r = 0; r < n; r += 4) {
        const T* row[4];
        for (std::size_t j = 0; j < 4; ++j) row[j] = k[std::min(r + j, n - 1)];
        k.prefetch_next_tile(r, d, 4);
        typename S::V acc[NB][4];
        for (std::size_t g = 0; g < NB; ++g)
            for (std::size_t j = 0; j < 4; ++j) acc[g][j] = S::zero();
        std::size_t i = 0;
        if constexpr (kLoadBlocks<T, W>) {
            for (; i + 2 * W <= d; i += 2 * W) {  // each accumulator still takes values i.. then i + W..
                for (std::size_t j = 0; j < 4; ++j) {
                    typename S::V x0, x1;
                    S::template load_block<T>(row[j], i, x0, x1);
                    for (std::size_t g = 0; g < NB; ++g) acc[g][j] = S::fmadd(S::loadf(q + g * d + i), x0, acc[g][j]);
                    for (std::size_t g = 0; g < NB; ++g) {
                        acc[g][j] = S::fmadd(S::loadf(q + g * d + i + W), x1, acc[g][j]);
                    }
                }
            }
        }
        for (; i < d; i += W) {
            for (std::size_t j = 0; j < 4; ++j) {
                const typename S::V x = load_stored<T, W>(row[j], i);
                for (std::size_t g = 0; g < NB; ++g) acc[g][j] = S::fmadd(S::loadf(q + g * d + i), x, acc[g][j]);
            }
        }
        // straight into the scores (past n in a short last group: room the tile has and nobody reads)
        for (std::size_t g = 0; g < NB; ++g)
            S::reduce4(acc[g][0], acc[g][1], acc[g][2], acc[g][3], scores + g * kAttentionTile + r);
    }
}

/// acc_g[0..d) += Σ_r p[g * kAttentionTile + r] * v_r over rows r = 0..n-1 in order, for NB heads. Each
/// output element is one chain of multiply-adds in row order, however the dimensions are blocked.
template <StorageElement T, std::size_t W, std::size_t NB, class Rows>
inline void tile_accumulate(const float* p, const Rows& v, std::size_t n, float* const* acc, std::size_t d) {
    using S = Simd<W>;
    constexpr std::size_t kBlock = W == 8 ? 2 : 4;  // vectors per block of dims: accumulators stay in registers
    std::size_t i = 0;
    for (; i + kBlock * W <= d; i += kBlock * W) {
        typename S::V a[NB][kBlock];
        for (std::size_t g = 0; g < NB; ++g)
            for (std::size_t b = 0; b < kBlock; ++b) a[g][b] = S::loadf(acc[g] + i + b * W);
        for (std::size_t r = 0; r < n; ++r) {
            if (i == 0 && r % 4 == 0) v.prefetch_next_tile(r, d, 4);
            const T* row = v[r];
            typename S::V w[NB];
            for (std::size_t g = 0; g < NB; ++g) w[g] = S::set1(p[g * kAttentionTile + r]);
            if constexpr (kLoadBlocks<T, W>) {  // W = 16, kBlock = 4: i is a multiple of 64, b even: whole blocks
                for (std::size_t b = 0; b < kBlock; b += 2) {
                    typename S::V x0, x1;
                    S::template load_block<T>(row, i + b * W, x0, x1);
                    for (std::size_t g = 0; g < NB; ++g) a[g][b] = S::fmadd(w[g], x0, a[g][b]);
                    for (std::size_t g = 0; g < NB; ++g) a[g][b + 1] = S::fmadd(w[g], x1, a[g][b + 1]);
                }
            } else {
                for (std::size_t b = 0; b < kBlock; ++b) {
                    const typename S::V x = load_stored<T, W>(row, i + b * W);
                    for (std::size_t g = 0; g < NB; ++g) a[g][b] = S::fmadd(w[g], x, a[g][b]);
                }
            }
        }
        for (std::size_t g = 0; g < NB; ++g)
            for (std::size_t b = 0; b < kBlock; ++b) S::store(acc[g] + i + b * W, a[g][b]);
    }
    for (; i < d; i += W) {
        typename S::V a[NB];
        for (std::size_t g = 0; g < NB; ++g) a[g] = S::loadf(acc[g] + i);
        for (std::size_t r = 0; r < n; ++r) {
            const typename S::V x = load_stored<T, W>(v[r], i);
            for (std::size_t g = 0; g < NB; ++g) a[g] = S::fmadd(S::set1(p[g * kAttentionTile + r]), x, a[g]);
        }
        for (std::size_t g = 0; g < NB; ++g) S::store(acc[g] + i, a[g]);
    }
}

/// Turns head g's tile scores into weights e^(score - m) and folds them into its running max and sum
/// (rescaling what was accumulated so far when the max grows).
inline void tile_softmax(float* scores, std::size_t n, const SoftmaxState& state, std::size_t g) {
    const float tile_max = max_of(scores, n);
    float& m = state.m(g);
    float& l = state.l(g);
    float correction = 1.0f;
    if (tile_max > m) {
        if (l > 0.0f) {
            correction = std::exp(m - tile_max);
            scale(state.acc(g), correction, state.d);
        }
        m = tile_max;
    }
    l = fused_multiply_add(l, correction, exp_shifted(scores, m, scores, n));
}

/// Folds one tile of n rows into the state of `group` pre-scaled queries qs ([group][d]): scores for all
/// heads, softmax per head, then values — each pass takes the heads kAttentionHeadBundle at a time, so a
/// row is loaded (and converted from fp16/bf16 or dequantised) once per bundle rather than once per head.
/// With iq (q8_0 keys, ScorePrecision::int8) the scores are integer ones from the rounded queries.
template <StorageElement TK, StorageElement TV, std::size_t W, class KRows, class VRows>
void fold_tile(const float* qs, std::size_t group, std::size_t d, const KRows& k, const VRows& v, std::size_t n,
               float* scores, const SoftmaxState& state, const Int8Queries* iq) {
    for (std::size_t g0 = 0; g0 < group; g0 += kAttentionHeadBundle) {
        const std::size_t nb = std::min(kAttentionHeadBundle, group - g0);
        const float* q = qs + g0 * d;
        float* s = scores + g0 * kAttentionTile;
        if constexpr (std::is_same_v<TK, q8_0>) {
            if (iq != nullptr) {
                const Int8QueryView heads = iq->view().from(g0, d);
                if (nb == 3) int8_scores<3>(heads, d, k, n, s, kAttentionTile);
                else if (nb == 2) int8_scores<2>(heads, d, k, n, s, kAttentionTile);
                else int8_scores<1>(heads, d, k, n, s, kAttentionTile);
                continue;
            }
        }
        if (nb == 3) tile_scores<TK, W, 3>(q, d, k, n, s);
        else if (nb == 2) tile_scores<TK, W, 2>(q, d, k, n, s);
        else tile_scores<TK, W, 1>(q, d, k, n, s);
    }
    for (std::size_t g = 0; g < group; ++g) tile_softmax(scores + g * kAttentionTile, n, state, g);
    for (std::size_t g0 = 0; g0 < group; g0 += kAttentionHeadBundle) {
        const std::size_t nb = std::min(kAttentionHeadBundle, group - g0);
        float* acc[kAttentionHeadBundle];
        for (std::size_t g = 0; g < nb; ++g) acc[g] = state.acc(g0 + g);
        const float* p = scores + g0 * kAttentionTile;
        if (nb == 3) tile_accumulate<TV, W, 3>(p, v, n, acc, d);
        else if (nb == 2) tile_accumulate<TV, W, 2>(p, v, n, acc, d);
        else tile_accumulate<TV, W, 1>(p, v, n, acc, d);
    }
}

/// Whether chunk b continues chunk a in memory: its positions, key rows and value rows follow a's, at the same
/// stride. A paged pool's consecutive block ids do (each (layer, kv head) has one arena of all the blocks' rows).
template <StorageElement TK, StorageElement TV>
bool continues(const KVChunk<TK, TV>& a, const KVChunk<TK, TV>& b, std::size_t d) {
    return b.start == a.start + a.length && b.stride == a.stride &&
           b.keys == a.keys + a.length * a.key_row_stride(d) && b.values == a.values + a.length * a.value_row_stride(d);
}

/// Reads positions [lo, hi) of one kv head (from any chunk range) into the state, tile by tile, with
/// tiles cut at absolute multiples of kAttentionTile. Chunks that continue each other in memory are read as one
/// run. A tile inside one run is read through its stride; one that spans runs through gathered row pointers —
/// the arithmetic is the same either way.
template <StorageElement TK, StorageElement TV, std::size_t W, class Chunks>
void attend_positions(const float* qs, std::size_t group, std::size_t d, const Chunks& chunks, std::size_t lo,
                      std::size_t hi, const SoftmaxState& state, const Int8Queries* iq) {
    TileScratch& tmp = tile_scratch();
    tmp.reserve(group);
    float* scores = tmp.scores.data();
    std::size_t next = lo;  // next position to read
    std::size_t n = 0;      // rows of the current tile gathered so far (when it spans runs)
    std::size_t tile_end = std::min(hi, (lo / kAttentionTile + 1) * kAttentionTile);
    const auto read_run = [&](const KVChunk<TK, TV>& chunk) {
        const std::size_t end = std::min(hi, chunk.start + chunk.length);
        std::size_t pos = std::max(next, chunk.start);
        const std::size_t kstride = chunk.key_row_stride(d), vstride = chunk.value_row_stride(d);
        while (pos < end) {
            const TK* krow = chunk.keys + (pos - chunk.start) * kstride;
            const TV* vrow = chunk.values + (pos - chunk.start) * vstride;
            if (n == 0 && tile_end <= end) {  // the whole tile lies in this run: read it through the stride
                fold_tile<TK, TV, W>(qs, group, d, StridedRows<TK>{krow, kstride}, StridedRows<TV>{vrow, vstride},
                                     tile_end - pos, scores, state, iq);
            } else {  // gather this run's part of the tile
                const std::size_t stop = std::min(end, tile_end);
                for (; pos < stop; ++pos, krow += kstride, vrow += vstride, ++n) {
                    tmp.krows[n] = krow;
                    tmp.vrows[n] = vrow;
                }
                if (pos < tile_end) break;  // the tile goes on in the next run
                fold_tile<TK, TV, W>(qs, group, d, GatheredRows<TK>{tmp.krows.data(), n},
                                     GatheredRows<TV>{tmp.vrows.data(), n}, n, scores, state, iq);
                n = 0;
            }
            pos = tile_end;
            tile_end = std::min(hi, tile_end + kAttentionTile);
        }
        next = std::max(next, pos);
    };
    KVChunk<TK, TV> run{};
    bool have_run = false;
    for (const KVChunk<TK, TV>& chunk : chunks) {
        if (chunk.start >= hi) break;
        if (have_run && continues(run, chunk, d)) {
            run.length += chunk.length;
            continue;
        }
        if (have_run) read_run(run);
        run = chunk;
        have_run = true;
    }
    if (have_run) read_run(run);
    if (n) {  // only if the chunks ended before hi
        fold_tile<TK, TV, W>(qs, group, d, GatheredRows<TK>{tmp.krows.data(), n},
                             GatheredRows<TV>{tmp.vrows.data(), n}, n, scores, state, iq);
    }
}

/// attend_positions with the widest Simd<W> that divides head_dim.
template <StorageElement TK, StorageElement TV, class Chunks>
void attend_positions_simd(const float* qs, std::size_t group, std::size_t d, const Chunks& chunks, std::size_t lo,
                           std::size_t hi, const SoftmaxState& state, const Int8Queries* iq = nullptr) {
    switch (simd_lanes_for(d)) {
#if KVCACHE_HAVE_AVX512
        case 16: return attend_positions<TK, TV, 16>(qs, group, d, chunks, lo, hi, state, iq);
#endif
#if KVCACHE_HAVE_AVX2
        case 8: return attend_positions<TK, TV, 8>(qs, group, d, chunks, lo, hi, state, iq);
#endif
        default: return attend_positions<TK, TV, 1>(qs, group, d, chunks, lo, hi, state, iq);
    }
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
    using TK = key_element_t<C>;
    using TV = value_element_t<C>;
    const auto s = detail::check_attention(cache, layer, row, q, n_tokens, n_q_heads, out, opts);
    if (n_tokens == 0) return;
    const std::size_t d = s.head_dim;
    const std::size_t state_size = s.group * (d + 2);
    detail::AttentionPlan& plan = detail::attention_plan();

    plan.scaled_q.resize(q.size());
    for (std::size_t i = 0; i < q.size(); ++i) plan.scaled_q[i] = q[i] * s.scale;
    // Keys stored rotated: rotate each query head the same way (q·k is unchanged), once per call.
    if constexpr (RotatedElement<TK>) {
        for (std::size_t i = 0; i < q.size(); i += d) ElementTraits<TK>::rotate_query(plan.scaled_q.data() + i, d);
    }

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

    // Threads only when there is enough to read to pay for waking them (the split does not change the result).
    std::size_t positions = 0;
    for (const auto& item : plan.work) positions += item.hi - item.lo;
    const std::size_t bytes =
        positions * (storage_units<TK>(d) * sizeof(TK) + storage_units<TV>(d) * sizeof(TV));
    const std::size_t n_work = plan.work.size();
    const int threads = detail::thread_count(opts.threads, n_work, bytes);
    const float* qbase = plan.scaled_q.data();
    float* states = plan.states.data();
    const auto* work = plan.work.data();
    // One item per claim: parallel_for gives each thread one contiguous run of items first (long sequential reads
    // of one kv head that the hardware prefetcher can follow: interleaved single items gave 47-58 % of the
    // two-thread bandwidth, contiguous runs 78-86 %), and the items of a thread that starts late are taken from
    // the back of its run by the others, one at a time.
    const std::size_t chunk = 1;
    // Integer scores: q8_0 keys and ScorePrecision::int8 (other key types keep the float path).
    const bool int8_scores = std::is_same_v<TK, q8_0> && opts.scores == ScorePrecision::int8;
    // Each item writes only its own slot's state: the result does not depend on which thread runs it.
    detail::parallel_for(n_work, chunk, threads, {.size = bytes}, [&](std::size_t first, std::size_t end) {
        thread_local detail::Int8Queries rounded;  // this thread's, reused
        for (std::size_t w = first; w < end; ++w) {
            const detail::AttentionWork& item = work[w];
            const detail::SoftmaxState state{states + item.slot * state_size, d};
            state.reset(s.group);
            const float* qs = qbase + (item.token * n_q_heads + item.kv_head * s.group) * d;
            if (int8_scores) rounded.round(qs, s.group, d);
            detail::attend_positions_simd<TK, TV>(qs, s.group, d, cache.chunks(layer, row, item.kv_head), item.lo,
                                                  item.hi, state, int8_scores ? &rounded : nullptr);
        }
    });

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
                    l = detail::fused_multiply_add(part.l(g), w, l);
                    const float* acc = part.acc(g);
                    for (std::size_t i = 0; i < d; ++i) o[i] = detail::fused_multiply_add(acc[i], w, o[i]);
                }
                const float inv = l > 0.0f ? 1.0f / l : 0.0f;
                for (std::size_t i = 0; i < d; ++i) o[i] *= inv;
                // Values stored rotated: the output is a weighted sum of rotated rows; rotate it back.
                if constexpr (RotatedElement<TV>) ElementTraits<TV>::unrotate(o, d);
            }
        }
    }
}

}  // namespace kvcache
