// PagedSession<T>: the reference decoder serving many sequences from one paged KV pool, reusing cached
// prompt prefixes and branching conversations.
//
//   PagedKVPool<float> pool(model.cache_layers(), /*num_blocks=*/512);         // 16 positions per block
//   PrefixCache<float> prefixes(pool, /*byte_budget=*/256 << 20);
//   PagedSession<float> session(model, pool, &prefixes);
//   auto a = session.start(prompt_a, logits);        // cold: computes the whole prompt
//   ...session.extend(a.sequence, {next}, logits)... // decode steps
//   session.finish(a.sequence);                      // its tokens go into the prefix cache, its blocks back
//   auto b = session.start(prompt_b, logits);        // shares prompt_a's prefix: computes only the rest
//   auto c = session.branch(b.sequence, 40);         // a new conversation from b's first 40 positions
//
// Bitwise: the decoder's logits for a position depend only on the tokens up to it (batch-invariant
// matmul, attention tiled at absolute positions), so a prefix hit, a fork and a cold run give the same
// bits. That is also why the prefix cache may hand one request's blocks to another.
//
// Memory: every sequence's K/V lives in the pool; when it has too few free blocks for a step, the session
// first evicts unreferenced prefix-cache entries, then fails with the pool's CapacityError (the sequence
// is unchanged). Thread safety: none (one session, pool and prefix cache per thread).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "kvcache/cache/paged_kv_cache.hpp"
#include "kvcache/cache/prefix_cache.hpp"
#include "kvcache/error.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/model/generate.hpp"

namespace kvcache {

/// What start() did with a prompt.
struct PagedPrefill {
    SequenceId sequence;                           ///< the new sequence, holding the whole prompt
    std::size_t reused_tokens = 0;                 ///< positions shared from the prefix cache
    std::size_t computed_tokens = 0;               ///< positions run through the model
    PrefixMatchKind match = PrefixMatchKind::None;
};

template <StorageElement T = float>
class PagedSession {
public:
    /// The pool's layers must fit the model (ShapeError otherwise). prefix_cache may be null (no reuse);
    /// if given, it must be over the same pool. Model, pool and cache must outlive the session.
    PagedSession(Decoder& model, PagedKVPool<T>& pool, PrefixCache<T>* prefix_cache = nullptr)
        : model_(&model), pool_(&pool), prefixes_(prefix_cache) {
        const auto layers = model.cache_layers();
        bool fits = layers.size() == pool.num_layers();
        for (std::size_t l = 0; fits && l < layers.size(); ++l) fits = layers[l] == pool.layer_shape(l);
        if (!fits) {
            throw ShapeError(fmt::format("PagedSession: the pool has {} layers of {}x{}, the model needs {} of {}x{}",
                                         pool.num_layers(), pool.num_kv_heads(0), pool.head_dim(0), layers.size(),
                                         layers[0].kv_heads, layers[0].head_dim));
        }
        if (prefix_cache && &prefix_cache->pool() != &pool) {
            throw ConfigError("PagedSession: the prefix cache belongs to another pool");
        }
    }

    Decoder& model() const { return *model_; }
    PagedKVPool<T>& pool() const { return *pool_; }
    PrefixCache<T>* prefix_cache() const { return prefixes_; }

    /// A new sequence holding `prompt`: the longest cached prefix is shared (never the last token — its
    /// logits are wanted), the rest runs through the model in one pass. logits as in Decoder::forward
    /// (vocab_size floats for the last token, or one row per computed token). ConfigError for an empty prompt.
    PagedPrefill start(std::span<const std::int32_t> prompt, std::span<float> logits,
                       const ForwardOptions& options = {}) {
        if (prompt.empty()) throw ConfigError("PagedSession::start: the prompt has no tokens");
        PagedPrefill out;
        SequenceId id;
        if (prefixes_) {
            const PrefixMatch m = prefixes_->match(prompt.first(prompt.size() - 1));
            id = pool_->create_sequence(m.blocks, m.tokens);
            out.reused_tokens = m.tokens;
            out.match = m.kind;
        } else {
            id = pool_->create_sequence();
        }
        try {
            run(id, prompt.subspan(out.reused_tokens), logits, options);
            Entry& e = entry_for(id);
            e.tokens.assign(prompt.begin(), prompt.end());
        } catch (...) {
            pool_->free_sequence(id);
            throw;
        }
        out.sequence = id;
        out.computed_tokens = prompt.size() - out.reused_tokens;
        return out;
    }

    /// Feeds more tokens to a sequence (the token just generated, a new user turn, ...). On failure the
    /// sequence is unchanged.
    void extend(SequenceId id, std::span<const std::int32_t> tokens, std::span<float> logits,
                const ForwardOptions& options = {}) {
        Entry& e = entry(id);
        run(id, tokens, logits, options);
        e.tokens.insert(e.tokens.end(), tokens.begin(), tokens.end());
    }

    /// A new sequence that continues `parent` exactly as it is (its blocks are shared until either appends).
    SequenceId branch(SequenceId parent) { return branch(parent, entry(parent).tokens.size()); }
    /// A new sequence holding parent's first `position` tokens: a conversation branching from an earlier
    /// point. IndexError if parent holds fewer.
    SequenceId branch(SequenceId parent, std::size_t position) {
        const std::vector<std::int32_t>& from = entry(parent).tokens;
        const SequenceId id = pool_->fork(parent, position);
        try {
            // copied before entry_for, which may grow entries_ and move `from`
            std::vector<std::int32_t> prefix(from.begin(), from.begin() + static_cast<std::ptrdiff_t>(position));
            entry_for(id).tokens = std::move(prefix);
        } catch (...) {
            pool_->free_sequence(id);
            throw;
        }
        return id;
    }

    /// The tokens a sequence holds (prompt and everything fed since).
    std::span<const std::int32_t> tokens(SequenceId id) const { return entry(id).tokens; }
    /// The sequence as a cache (for attention or a direct Decoder::forward — then tokens() no longer
    /// describes it; prefer extend()).
    PagedSequence<T> cache(SequenceId id) {
        (void)entry(id);
        return pool_->sequence(id);
    }

    /// Ends a sequence: its tokens go into the prefix cache (if there is one and cache_prefix is
    /// CachePrefix::yes), then its blocks are released and the cache is trimmed to its budget.
    void finish(SequenceId id, CachePrefix cache_prefix = CachePrefix::yes) {
        Entry& e = entry(id);
        if (prefixes_ && cache_prefix == CachePrefix::yes) prefixes_->insert(e.tokens, id);
        pool_->free_sequence(id);
        e.tokens.clear();
        e.live = false;
        if (prefixes_) prefixes_->trim();
    }

    /// Generation as generate_with_cache does it (same options, sampling, stopping, streaming), but over the
    /// pool: the prompt reuses the prefix cache, and at the end prompt + generated tokens are cached.
    /// options.cache_capacity is ignored (the pool is the limit). result.reused_prompt_tokens says how
    /// much of the prompt came from the prefix cache.
    GenerationResult generate(const Tokenizer& tokenizer, std::span<const std::int32_t> prompt,
                              const GenerateOptions& options) {
        bool started = false;
        SequenceId id;
        std::size_t reused = 0;
        const ForwardOptions forward_options{.threads = options.threads, .precision = options.precision};
        try {
            GenerationResult result = generate_with_step(
                *model_, tokenizer, prompt, options,
                [&](std::span<const std::int32_t> sequence, std::span<float> logits) {
                    if (!started) {
                        const PagedPrefill p = start(sequence, logits, forward_options);
                        id = p.sequence;
                        reused = p.reused_tokens;
                        started = true;
                    } else {
                        extend(id, sequence.subspan(entry(id).tokens.size()), logits, forward_options);
                    }
                });
            result.reused_prompt_tokens = reused;
            result.cache_bytes = pool_->bytes_in_use();
            finish(id);
            return result;
        } catch (...) {
            if (started && pool_->contains(id)) finish(id, CachePrefix::no);
            throw;
        }
    }

private:
    struct Entry {
        std::uint32_t generation = 0;
        bool live = false;
        std::vector<std::int32_t> tokens;
    };

    /// Runs tokens through the model into the sequence, making room in the pool first.
    void run(SequenceId id, std::span<const std::int32_t> tokens, std::span<float> logits,
             const ForwardOptions& options) {
        const std::size_t needed = pool_->blocks_needed(id, tokens.size());
        if (prefixes_ && needed > pool_->free_blocks()) prefixes_->evict_for(needed - pool_->free_blocks());
        PagedSequence<T> cache = pool_->sequence(id);
        model_->forward(tokens, cache, 0, logits, options);
    }

    Entry& entry_for(SequenceId id) {
        if (entries_.size() <= id.index) entries_.resize(id.index + 1);
        Entry& e = entries_[id.index];
        e.generation = id.generation;
        e.live = true;
        e.tokens.clear();
        return e;
    }
    const Entry& entry(SequenceId id) const {
        if (id.index >= entries_.size() || !entries_[id.index].live || entries_[id.index].generation != id.generation ||
            !pool_->contains(id)) {
            throw IndexError(fmt::format("PagedSession: sequence {} (generation {}) is not one of this session's",
                                         id.index, id.generation));
        }
        return entries_[id.index];
    }
    Entry& entry(SequenceId id) { return const_cast<Entry&>(std::as_const(*this).entry(id)); }

    Decoder* model_;
    PagedKVPool<T>* pool_;
    PrefixCache<T>* prefixes_;
    std::vector<Entry> entries_;  // by SequenceId::index
};

}  // namespace kvcache
