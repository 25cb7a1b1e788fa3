// The reference decoder-only transformer (Llama family: llama, mistral, qwen2) running over any KV cache.
//
// Decoder::forward reads top to bottom in the order a token meets it (after llama2.c's run.c):
// embedding → per layer [RMSNorm → Q,K,V → RoPE → cache.append → attention → output projection → residual
// → RMSNorm → SwiGLU MLP → residual] → final RMSNorm → logits. It depends on the core only through its
// public headers: any type satisfying KVCacheLike works, and attention is kvcache::attention.
//
// Determinism: a token's logits are bitwise the same whether it is processed alone or in a batch of any
// size and at any thread count (matmul.hpp and ops.hpp keep one order per token; attention does too).
//
// Memory: the weights live in DecoderWeights (quantised blocks or floats, see WeightMatrix); the
// activations in scratch buffers owned by the Decoder, grown to the largest batch seen and then reused
// (no allocation on the decode path after warm-up). A Decoder is therefore not safe to share between
// threads that call forward at the same time; use one per thread (weights can be loaded once each).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "kvcache/attention/attention.hpp"
#include "kvcache/cache/concept.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/detail/aligned_buffer.hpp"
#include "kvcache/detail/format.hpp"
#include "kvcache/detail/thread_pool.hpp"
#include "kvcache/error.hpp"
#include "kvcache/model/matmul.hpp"
#include "kvcache/model/ops.hpp"

namespace kvcache {

namespace gguf {
class File;
}

/// The hyper-parameters of a decoder, as GGUF metadata states them.
struct DecoderConfig {
    std::string architecture = "llama";  ///< general.architecture: llama, mistral or qwen2
    std::size_t n_layers = 0;            ///< <arch>.block_count
    std::size_t d_model = 0;             ///< <arch>.embedding_length
    std::size_t d_ff = 0;                ///< <arch>.feed_forward_length
    std::size_t n_heads = 0;             ///< <arch>.attention.head_count
    std::size_t n_kv_heads = 0;          ///< <arch>.attention.head_count_kv (GQA when < n_heads)
    std::size_t head_dim = 0;            ///< <arch>.attention.key_length, else d_model / n_heads
    std::size_t rope_dim = 0;            ///< <arch>.rope.dimension_count, else head_dim
    std::size_t vocab_size = 0;          ///< rows of token_embd
    std::size_t context_length = 0;      ///< <arch>.context_length (training context; informational)
    float rope_base = 10000.0f;          ///< <arch>.rope.freq_base
    /// Multiplies positions before RoPE: 1 / <arch>.rope.scaling.factor for linear scaling (or
    /// 1 / <arch>.rope.scale_linear in older files), else 1. Other scaling types are refused (ConfigError).
    float rope_position_scale = 1.0f;
    /// <arch>.attention.sliding_window: 0 for none, else the query at position p sees keys in (p - window, p]
    /// — window keys including its own, as llama.cpp and Mistral's reference code count it. (Hugging Face
    /// transformers' eager Mistral lets it see window + 1; see scripts/make_arch_fixtures.py.)
    std::size_t sliding_window = 0;
    float norm_eps = 1e-5f;              ///< <arch>.attention.layer_norm_rms_epsilon
    RopeStyle rope_style = RopeStyle::Interleaved;  ///< Interleaved for llama/mistral, Neox for qwen2
    bool qkv_bias = false;               ///< Q, K and V projections have biases (always for qwen2; llama and
                                         ///< mistral when the file has blk.0.attn_q.bias)
    std::int32_t bos_id = -1;            ///< tokenizer.ggml.bos_token_id, -1 if absent
    std::int32_t eos_id = -1;            ///< tokenizer.ggml.eos_token_id, -1 if absent

    std::size_t q_dim() const { return n_heads * head_dim; }
    std::size_t kv_dim() const { return n_kv_heads * head_dim; }

    /// Reads the metadata. Throws ConfigError for an architecture other than llama/mistral/qwen2 or a RoPE
    /// scaling type other than none/linear, and FormatError for missing or inconsistent keys.
    static DecoderConfig from_gguf(const gguf::File& file);
    /// The small model of the unit tests and benchmarks: llama-style, 6 layers, d_model 512, 8 heads of
    /// 64 (8 kv heads, so it fits KVCache<6, 8, 64>), d_ff 1536 (3 × d_model, SwiGLU), vocab 1024.
    static DecoderConfig small_test_model();
    /// Throws ConfigError unless the sizes are positive and fit together (heads divide, rope_dim even, ...).
    void validate() const;
};

/// One transformer block's weights. Matrices are [out][in].
struct LayerWeights {
    std::vector<float> attn_norm;    // (d_model)
    WeightMatrix wq;                 // (q_dim, d_model)
    WeightMatrix wk;                 // (kv_dim, d_model)
    WeightMatrix wv;                 // (kv_dim, d_model)
    std::vector<float> bq, bk, bv;   // (q_dim), (kv_dim), (kv_dim) — empty unless config.qkv_bias
    WeightMatrix wo;                 // (d_model, q_dim)
    std::vector<float> ffn_norm;     // (d_model)
    WeightMatrix w_gate;             // (d_ff, d_model)
    WeightMatrix w_up;               // (d_ff, d_model)
    WeightMatrix w_down;             // (d_model, d_ff)
};

/// How DecoderWeights::from_gguf stores the matrices: `from_gguf(file, {.keep_quantized = false})`.
struct WeightLoadOptions {
    /// Q8_0/Q4_1 matrices stay quantised (fused dequant-dot kernels); false: everything dequantised to float.
    bool keep_quantized = true;
};

struct DecoderWeights {
    DecoderConfig config;
    WeightMatrix token_embedding;    // (vocab, d_model)
    std::vector<LayerWeights> layers;
    std::vector<float> output_norm;  // (d_model)
    WeightMatrix output;             // (vocab, d_model); empty (rows() == 0) when tied to token_embedding
    std::vector<float> rope_freqs;   // (rope_dim / 2) divisors of the RoPE frequencies (llama 3.x
                                     // rope_freqs.weight); empty for none

    bool tied_output() const { return output.rows() == 0; }
    const WeightMatrix& output_matrix() const { return tied_output() ? token_embedding : output; }
    /// Bytes of all weights as stored (what one decode step streams from memory, roughly).
    std::size_t bytes() const;

    /// Loads every tensor, checking its shape against the config (FormatError naming the tensor). A tensor
    /// the decoder would not use is a FormatError too (naming it), rather than a model silently run without it.
    static DecoderWeights from_gguf(const gguf::File& file, const WeightLoadOptions& options = {});
    /// Random float weights for `config` (uniform, scaled by 1/sqrt(fan_in); norms 1), with a separate
    /// output matrix. The same seed gives the same weights on every platform.
    static DecoderWeights random(const DecoderConfig& config, std::uint64_t seed);
};

/// An identity of a model file for cache files (CacheFingerprint::model): the architecture and name, plus a
/// digest of every metadata entry, every tensor's name, type and shape, and every tensor's bytes. Two files
/// give the same string only if they hold the same model, so a cache saved for one is refused by another.
/// Hashing the weights costs one read of the file (a few ms for SmolLM2).
std::string model_fingerprint(const gguf::File& file);

struct DecoderOptions {
    int threads = 0;             ///< default threads of a forward pass; 0 → all the hardware offers
    bool keep_quantized = true;  ///< see DecoderWeights::from_gguf
};

/// How one forward call runs. The thread count travels with the call, so one Decoder serves callers that
/// want different counts without anyone changing shared state.
struct ForwardOptions {
    int threads = 0;  ///< threads of this call; 0 → the decoder's default (DecoderOptions::threads)
    /// The matmuls' arithmetic (matmul.hpp). int8 trades the activations' rounding for speed; f32 is what
    /// every bitwise fixture and the float64 reference test pin down.
    MatmulPrecision precision = MatmulPrecision::f32;
};

/// One sequence of a batched forward pass: its new tokens, the cache (and batch row) they continue, and
/// where its logits go — tokens.size() * vocab_size floats (every token's, [n_tokens][vocab]), vocab_size
/// floats (the last token's), or none (an empty span: a prefill chunk whose logits nobody needs).
template <class Cache>
struct ForwardItem {
    std::span<const std::int32_t> tokens;
    Cache* cache = nullptr;
    std::size_t row = 0;
    std::span<float> logits;
};

class Decoder {
public:
    explicit Decoder(DecoderWeights weights, int threads = 0);
    /// Opens a GGUF file and loads it (nothing of the file is kept open).
    static Decoder load(const std::filesystem::path& path, const DecoderOptions& options = {});

    const DecoderConfig& config() const { return weights_.config; }
    const DecoderWeights& weights() const { return weights_; }
    /// The thread count of calls whose ForwardOptions say 0.
    int threads() const { return threads_; }
    void set_threads(int threads) { threads_ = threads; }

    /// The per-layer shapes a cache for this model needs.
    std::vector<LayerShape> cache_layers() const;
    /// Bytes of a float KV cache holding `positions` positions for `batch` rows — to report before allocating.
    std::size_t cache_bytes(std::size_t positions, std::size_t batch = 1, std::size_t element_bytes = sizeof(float)) const;
    /// A fixed-capacity float cache for this model.
    MultiLayerKVCache<float> make_cache(std::size_t capacity, std::size_t batch = 1) const;

    /// Runs `tokens` (the next tokens of batch row `row`, continuing what the cache holds) through the
    /// model, appending their K/V to every layer of the cache. logits_out as ForwardItem::logits says.
    /// Throws IndexError for a token id outside the vocabulary or a bad row, ShapeError for a cache of
    /// another shape or a logits buffer of another size, CapacityError if a fixed cache cannot take the
    /// tokens — all before anything is appended.
    template <KVCacheLike Cache>
    void forward(std::span<const std::int32_t> tokens, Cache& cache, std::size_t row, std::span<float> logits_out,
                 const ForwardOptions& options = {}) {
        const ForwardItem<Cache> item{tokens, &cache, row, logits_out};
        forward(std::span<const ForwardItem<Cache>>(&item, 1), options);
    }

    /// Batched forward: every item's tokens go through the model together — each matmul runs once over all
    /// the items' tokens (each weight is read once per call), while RoPE, the cache append and attention run
    /// per item at that item's own position over its own cache. Each item's logits are bitwise the same as
    /// a forward of that item alone, whatever the other items, their order or the thread count.
    /// Throws, before any cache changes: what the single-sequence forward throws for each item (naming it
    /// through its values), ConfigError for a null cache or two items on the same cache row (or the same
    /// paged sequence), and CapacityError when items drawing on one paged pool need more free blocks in all
    /// than it has (counted conservatively: a block shared by two of the items counts for each).
    template <KVCacheLike Cache>
    void forward(std::span<const ForwardItem<Cache>> items, const ForwardOptions& options = {});

private:
    enum class LogitsWanted { None, Last, All };
    /// Token ids and logits size of one item.
    LogitsWanted check_inputs(std::span<const std::int32_t> tokens, std::size_t logits_size) const;
    void check_cache_shape(std::size_t layers, std::size_t layer, std::size_t kv_heads, std::size_t head_dim) const;
    void reserve_scratch(std::size_t n_tokens, std::size_t n_logit_rows);
    /// Every check of a batched forward, before anything changes; fills wanted_ and positions_. Returns the
    /// tokens of all items and the logit rows wanted.
    template <KVCacheLike Cache>
    std::pair<std::size_t, std::size_t> check_batch(std::span<const ForwardItem<Cache>> items);
    /// How one layer's attention over the items runs.
    struct ItemsAttention {
        /// Threads for running the items side by side (one item per task), or 1 to run them one after another,
        /// each over its own kv heads and segments. Side by side when there are several items and none has more
        /// than a thread's share of the work, e.g. a step of many decodes; a long prompt's prefill among them,
        /// or a single item, keeps the split inside each item.
        int threads = 1;
        /// The work: query-position pairs (each item's tokens × the positions they attend to), summed.
        std::size_t work = 0;
    };
    template <KVCacheLike Cache>
    ItemsAttention plan_items_attention(std::span<const ForwardItem<Cache>> items, int threads) const;
    /// Final norm and output matrix for the rows whose logits are wanted, into each item's logits buffer.
    template <KVCacheLike Cache>
    void write_logits(std::span<const ForwardItem<Cache>> items, std::size_t logit_rows, int threads,
                      MatmulPrecision precision);

    DecoderWeights weights_;
    int threads_ = 0;
    std::vector<double> inv_freq_;   // (rope_dim / 2) RoPE frequencies: position_scale * base^(-2i / rope_dim) / rope_freqs[i]

    // Activations, [n_tokens][width] over the tokens of all items of a call, item after item; grown to the
    // largest call and kept.
    detail::CacheLineVector<float> x_;    // (n, d_model) residual stream
    detail::CacheLineVector<float> xb_;   // (n, d_model) normed input of a sublayer / its output
    detail::CacheLineVector<float> q_;    // (n, q_dim)
    detail::CacheLineVector<float> k_;    // (n, kv_dim)
    detail::CacheLineVector<float> v_;    // (n, kv_dim)
    detail::CacheLineVector<float> att_;  // (n, q_dim) attention output, heads side by side
    detail::CacheLineVector<float> hb_;   // (n, d_ff) gate, then silu(gate) * up
    detail::CacheLineVector<float> hb2_;  // (n, d_ff) up
    std::vector<float> rope_cos_;   // (n, rope_dim / 2) cos of each token's RoPE angles
    std::vector<float> rope_sin_;   // (n, rope_dim / 2) their sin
    detail::CacheLineVector<float> logits_;  // (rows, vocab) logits of a batch with more than one item wanting them
    std::vector<std::size_t> positions_;    // (items) position of each item's first token
    std::vector<std::size_t> offsets_;      // (items) index of each item's first token among all
    std::vector<LogitsWanted> wanted_;      // (items)
};

template <KVCacheLike Cache>
void Decoder::forward(std::span<const ForwardItem<Cache>> items, const ForwardOptions& options) {
    const DecoderConfig& c = weights_.config;
    const int threads = options.threads > 0 ? options.threads : threads_;
    const MatmulPrecision precision = options.precision;
    const auto [total, logit_rows] = check_batch(items);  // every check first: a throw leaves every cache as it was
    if (total == 0) return;
    reserve_scratch(total, logit_rows);
    for (std::size_t i = 0, off = 0; i < items.size(); off += items[i].tokens.size(), ++i) offsets_[i] = off;
    // int8 precision rounds the queries too where the keys are q8_0 and the build has the vector kernel for it
    // (integer q·k, attention/int8_scores.hpp; the portable loop would be slower than the float path)
    const bool int8_scores = precision == MatmulPrecision::int8 && detail::kVectorInt8Scores;
    const AttentionOptions attn_opts{.window = c.sliding_window,
                                     .threads = threads,
                                     .scores = int8_scores ? ScorePrecision::int8 : ScorePrecision::f32};

    // Embedding: x[t] = token_embd[tokens[t]]
    for (std::size_t i = 0; i < items.size(); ++i) {
        for (std::size_t t = 0; t < items[i].tokens.size(); ++t) {
            weights_.token_embedding.dequantize_row(static_cast<std::size_t>(items[i].tokens[t]),
                                                    x_.data() + (offsets_[i] + t) * c.d_model);
        }
    }

    // RoPE's cos and sin for every token's position, once for all layers (the angles are the same in each)
    const std::size_t rope_half = c.rope_dim / 2;
    for (std::size_t i = 0; i < items.size(); ++i) {
        rope_table(items[i].tokens.size(), c.rope_dim, positions_[i], inv_freq_.data(),
                   rope_cos_.data() + offsets_[i] * rope_half, rope_sin_.data() + offsets_[i] * rope_half);
    }

    const std::size_t n = total;
    const ItemsAttention items_attention = plan_items_attention(items, threads);
    for (std::size_t l = 0; l < c.n_layers; ++l) {
        const LayerWeights& w = weights_.layers[l];

        // Attention block: x += wo · attention(rope(wq · norm(x)), cache ∪ rope(wk · norm(x)), wv · norm(x))
        rms_norm(x_.data(), w.attn_norm.data(), n, c.d_model, c.norm_eps, xb_.data());  // xb (n, d_model)
        // q (n, n_heads*head_dim), k and v (n, n_kv_heads*head_dim): one dispatch for the three
        const MatmulOutput qkv[] = {{&w.wq, q_.data()}, {&w.wk, k_.data()}, {&w.wv, v_.data()}};
        matmul_shared_input(qkv, xb_.data(), n, threads, precision);
        if (c.qkv_bias) {
            add_bias(q_.data(), w.bq.data(), n, c.q_dim());
            add_bias(k_.data(), w.bk.data(), n, c.kv_dim());
            add_bias(v_.data(), w.bv.data(), n, c.kv_dim());
        }
        for (std::size_t i = 0; i < items.size(); ++i) {
            const std::size_t ni = items[i].tokens.size(), off = offsets_[i];
            if (ni == 0) continue;
            float* qi = q_.data() + off * c.q_dim();
            float* ki = k_.data() + off * c.kv_dim();
            const float* cos = rope_cos_.data() + off * rope_half;
            const float* sin = rope_sin_.data() + off * rope_half;
            apply_rope(qi, ni, c.n_heads, c.head_dim, c.rope_dim, cos, sin, c.rope_style);
            apply_rope(ki, ni, c.n_kv_heads, c.head_dim, c.rope_dim, cos, sin, c.rope_style);
            // The item's cache now holds positions [0, pos + ni) of this layer; its queries are the last ni.
            items[i].cache->append(l, items[i].row, std::span<const float>(ki, ni * c.kv_dim()),
                                   std::span<const float>(v_.data() + off * c.kv_dim(), ni * c.kv_dim()), ni);
        }
        const auto attend = [&](std::size_t i) {
            const std::size_t ni = items[i].tokens.size(), off = offsets_[i];
            if (ni == 0) return;
            attention(*items[i].cache, l, items[i].row, std::span<const float>(q_.data() + off * c.q_dim(), ni * c.q_dim()),
                      ni, c.n_heads, std::span<float>(att_.data() + off * c.q_dim(), ni * c.q_dim()),
                      attn_opts);  // att (ni, q_dim)
        };
        if (items_attention.threads > 1) {
            // Items side by side, one whole item per claim (attention inside a parallel_for runs on its caller):
            // one dispatch per layer instead of one per item, and no item's kv heads split unevenly over the
            // threads. An item's result does not depend on which thread computes it.
            detail::parallel_for(items.size(), 1, items_attention.threads, {.size = items_attention.work},
                                 [&](std::size_t first, std::size_t end) {
                for (std::size_t i = first; i < end; ++i) attend(i);
            });
        } else {
            for (std::size_t i = 0; i < items.size(); ++i) attend(i);  // each item threaded over its own work
        }
        matmul(w.wo, att_.data(), n, xb_.data(), threads, precision);                     // xb  (n, d_model)
        add_into(x_.data(), xb_.data(), n * c.d_model);

        // MLP block: x += w_down · (silu(w_gate · norm(x)) * (w_up · norm(x)))
        rms_norm(x_.data(), w.ffn_norm.data(), n, c.d_model, c.norm_eps, xb_.data());    // xb  (n, d_model)
        const MatmulOutput gate_up[] = {{&w.w_gate, hb_.data()}, {&w.w_up, hb2_.data()}};  // hb, hb2 (n, d_ff)
        matmul_shared_input(gate_up, xb_.data(), n, threads, precision);
        swiglu(hb_.data(), hb2_.data(), n * c.d_ff);
        matmul(w.w_down, hb_.data(), n, xb_.data(), threads, precision);                  // xb  (n, d_model)
        add_into(x_.data(), xb_.data(), n * c.d_model);
    }

    write_logits(items, logit_rows, threads, options.precision);
}

template <KVCacheLike Cache>
Decoder::ItemsAttention Decoder::plan_items_attention(std::span<const ForwardItem<Cache>> items, int threads) const {
    std::size_t work = 0, largest = 0, busy = 0;
    for (std::size_t i = 0; i < items.size(); ++i) {
        const std::size_t ni = items[i].tokens.size();
        if (ni == 0) continue;
        const std::size_t w = ni * (positions_[i] + ni);
        work += w;
        largest = std::max(largest, w);
        ++busy;
    }
    if (busy < 2) return {1, work};
    // bytes of K and V the whole layer's attention reads, as fp32 (only to judge whether threads pay off)
    const std::size_t bytes = work * weights_.config.kv_dim() * 2 * sizeof(float);
    const int n = detail::thread_count(threads, busy, bytes);
    return {n > 1 && largest * static_cast<std::size_t>(n) <= work ? n : 1, work};
}

template <KVCacheLike Cache>
std::pair<std::size_t, std::size_t> Decoder::check_batch(std::span<const ForwardItem<Cache>> items) {
    const DecoderConfig& c = weights_.config;
    std::size_t total = 0, logit_rows = 0;
    wanted_.resize(items.size());  // scratch: grows to the largest batch, then no allocation
    positions_.resize(items.size());
    offsets_.resize(items.size());
    std::vector<LogitsWanted>& wanted = wanted_;
    std::vector<std::size_t>& positions = positions_;
    for (std::size_t i = 0; i < items.size(); ++i) {
        const ForwardItem<Cache>& it = items[i];
        if (it.cache == nullptr) throw ConfigError(fmt::format("decoder: batch item {} has no cache", i));
        Cache& cache = *it.cache;
        const std::size_t n = it.tokens.size();
        wanted[i] = check_inputs(it.tokens, it.logits.size());
        detail::check_index("batch row", it.row, cache.batch_size());
        for (std::size_t l = 0; l < c.n_layers; ++l) {
            check_cache_shape(cache.num_layers(), l, l < cache.num_layers() ? cache.num_kv_heads(l) : 0,
                              l < cache.num_layers() ? cache.head_dim(l) : 0);
        }
        const std::size_t pos = cache.seq_len(0, it.row);  // position of tokens[0]
        for (std::size_t l = 1; l < c.n_layers; ++l) {
            if (cache.seq_len(l, it.row) != pos) {
                throw ShapeError(fmt::format("decoder: cache row {} holds {} positions in layer 0 but {} in layer {}",
                                             it.row, pos, cache.seq_len(l, it.row), l));
            }
        }
        if constexpr (BoundedKVCache<Cache>) {
            if (!can_append(cache, 0, it.row, n)) {
                throw CapacityError(fmt::format("decoder: cache row {} holds {} of {} positions; {} more do not fit",
                                                it.row, pos, static_cast<std::size_t>(cache.capacity()), n));
            }
        }
        if constexpr (WindowedKVCache<Cache>) {
            // Every layer attends over c.sliding_window positions: a ring that holds fewer would give another model.
            if (c.sliding_window == 0 || c.sliding_window > cache.window()) {
                throw ConfigError(fmt::format("decoder: a sliding-window cache of window {} needs a model whose "
                                              "attention window is at most that; this model's sliding_window is {} "
                                              "(0: full attention)",
                                              cache.window(), c.sliding_window));
            }
            if (n > cache.max_step()) {
                throw CapacityError(fmt::format("decoder: {} tokens in one step; the sliding-window cache of row {} "
                                                "takes at most max_step = {} (feed a longer prompt in chunks)",
                                                n, it.row, cache.max_step()));
            }
        }
        for (std::size_t j = 0; j < i; ++j) {
            bool same = items[j].cache == it.cache && items[j].row == it.row;
            if constexpr (PooledKVCache<Cache>) {
                same = same || (&items[j].cache->pool() == &cache.pool() && items[j].cache->id() == cache.id());
            }
            if (same) {
                throw ConfigError(fmt::format("decoder: batch items {} and {} continue the same cache row", j, i));
            }
        }
        positions[i] = pos;
        total += n;
        logit_rows += wanted[i] == LogitsWanted::All ? n : (wanted[i] == LogitsWanted::Last ? 1 : 0);
    }
    // Items of one paged pool draw on the same free blocks: each fitting alone is not enough.
    if constexpr (PooledKVCache<Cache>) {
        for (std::size_t i = 0; i < items.size(); ++i) {
            auto& pool = items[i].cache->pool();
            bool first_of_pool = true;
            for (std::size_t j = 0; j < i && first_of_pool; ++j) first_of_pool = &items[j].cache->pool() != &pool;
            if (!first_of_pool) continue;
            std::size_t needed = 0;
            for (std::size_t j = i; j < items.size(); ++j) {
                if (&items[j].cache->pool() == &pool) {
                    needed += pool.blocks_needed(items[j].cache->id(), items[j].tokens.size());
                }
            }
            if (needed > pool.free_blocks()) {
                throw CapacityError(fmt::format("decoder: the batch needs {} free blocks of its pool, which has {}",
                                                needed, pool.free_blocks()));
            }
        }
    }
    return {total, logit_rows};
}

template <KVCacheLike Cache>
void Decoder::write_logits(std::span<const ForwardItem<Cache>> items, std::size_t logit_rows, int threads,
                           MatmulPrecision precision) {
    const DecoderConfig& c = weights_.config;
    // Final norm of the rows whose logits are wanted (every token's or the last), gathered item after item.
    if (logit_rows == 0) return;
    std::size_t row_out = 0;
    // Whether the wanted buffers are one array in item order (one item's; or a scheduler's rows): then the
    // product writes straight into it instead of into scratch and a copy (8 x 49152 floats a step for SmolLM2).
    float* one_array = nullptr;
    bool contiguous = true;
    for (std::size_t i = 0; i < items.size(); ++i) {
        if (wanted_[i] == LogitsWanted::None) continue;
        const std::size_t ni = items[i].tokens.size();
        const std::size_t first = wanted_[i] == LogitsWanted::All ? 0 : ni - 1;
        if (row_out == 0) one_array = items[i].logits.data();
        contiguous = contiguous && items[i].logits.data() == one_array + row_out * c.vocab_size;
        rms_norm(x_.data() + (offsets_[i] + first) * c.d_model, weights_.output_norm.data(), ni - first, c.d_model,
                 c.norm_eps, xb_.data() + row_out * c.d_model);                            // xb (rows, d_model)
        row_out += ni - first;
    }
    if (contiguous) {
        matmul(weights_.output_matrix(), xb_.data(), logit_rows, one_array, threads, precision);
        return;
    }
    matmul(weights_.output_matrix(), xb_.data(), logit_rows, logits_.data(), threads, precision);   // logits (rows, vocab)
    row_out = 0;
    for (std::size_t i = 0; i < items.size(); ++i) {
        if (wanted_[i] == LogitsWanted::None) continue;
        const std::size_t rows = wanted_[i] == LogitsWanted::All ? items[i].tokens.size() : 1;
        std::copy_n(logits_.data() + row_out * c.vocab_size, rows * c.vocab_size, items[i].logits.data());
        row_out += rows;
    }
}

}  // namespace kvcache
