// PrefixCache<T>: a radix tree over token ids whose nodes are blocks of a PagedKVPool, so a request whose
// prompt starts like an earlier one reuses that part of the earlier request's KV cache.
//
// Shape of the tree: each edge is labelled with the tokens of one block (block_size of them, or fewer for the
// last, partly filled block of a sequence) and leads to a node that holds a reference to the pool block with
// those tokens' K/V. A path from the root spells a token prefix; the blocks along it are that prefix's cache.
// Partly filled blocks are always leaves (the next token would land in the same block).
//
// match(tokens) walks the tree as far as the tokens agree. It ends block-aligned (all blocks along the path
// fully used) or token-exact (the last block is used only up to the first disagreeing token, or is a partly
// filled block). A sequence created from a token-exact match shares that last block; the pool copies it on
// the sequence's first append (copy-on-write), so the cached block is never overwritten.
//
// Memory: the tree holds one pool reference per node; bytes() counts those blocks (shared or not). When it
// exceeds the byte budget, the least recently used leaves whose block nobody else references are evicted
// (a block a live sequence uses is never taken from it). Thread safety: none, like the pool.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <queue>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "kvcache/cache/paged_kv_cache.hpp"
#include "kvcache/error.hpp"

namespace kvcache {

/// Whether a sequence that ends leaves its tokens in the prefix cache (PagedSession::finish,
/// Scheduler::release): CachePrefix::no for one whose tokens no later request should reuse.
enum class CachePrefix : bool { no = false, yes = true };

/// How much of a token sequence a match covers.
enum class PrefixMatchKind {
    None,          ///< nothing cached starts like these tokens
    BlockAligned,  ///< a whole number of blocks, each used fully
    TokenExact,    ///< the last block is used only in part (it is shared copy-on-write)
};

/// The longest cached prefix of some tokens: its length and the blocks that hold it
/// (PagedKVPool::blocks_for(tokens) of them). The blocks are valid until the cache next changes; hand them
/// to PagedKVPool::create_sequence right away.
struct PrefixMatch {
    std::size_t tokens = 0;
    std::vector<BlockId> blocks;
    PrefixMatchKind kind = PrefixMatchKind::None;
    bool block_aligned() const { return kind == PrefixMatchKind::BlockAligned; }
};

/// Hits and misses, by request and by token, and what insertion and eviction did.
struct PrefixCacheStats {
    std::size_t requests = 0;          ///< match() calls
    std::size_t hits = 0;              ///< matches of at least one token
    std::size_t misses = 0;            ///< matches of nothing
    std::size_t tokens_requested = 0;  ///< tokens passed to match()
    std::size_t tokens_matched = 0;    ///< of those, tokens served from the cache
    std::size_t blocks_inserted = 0;   ///< nodes added (or partial blocks replaced by longer ones)
    std::size_t blocks_evicted = 0;    ///< nodes evicted under the budget or on request
    std::size_t tokens_missed() const { return tokens_requested - tokens_matched; }
    double token_hit_rate() const {
        return tokens_requested ? static_cast<double>(tokens_matched) / static_cast<double>(tokens_requested) : 0.0;
    }
};

template <StorageElement T = float>
class PrefixCache {
public:
    /// A cache of `pool`'s blocks holding at most byte_budget bytes of them (enforced at insert() and
    /// trim()). The pool must outlive the cache.
    PrefixCache(PagedKVPool<T>& pool, std::size_t byte_budget) : pool_(&pool), budget_(byte_budget) {}
    ~PrefixCache() { clear(); }
    PrefixCache(const PrefixCache&) = delete;
    PrefixCache& operator=(const PrefixCache&) = delete;

    PagedKVPool<T>& pool() const { return *pool_; }

    /// The longest cached prefix of `tokens`. Marks the nodes used and counts the request.
    PrefixMatch match(std::span<const std::int32_t> tokens) {
        PrefixMatch m;
        const std::size_t bs = pool_->block_size();
        Node* node = &root_;
        std::size_t pos = 0;
        while (pos < tokens.size()) {
            const auto rest = tokens.subspan(pos, std::min(bs, tokens.size() - pos));
            Node* best = nullptr;
            std::size_t best_common = 0;
            for (const auto& child : node->children_starting_with(rest[0])) {
                const std::size_t common = common_prefix(child->tokens, rest);
                if (common > best_common) {
                    best = child.get();
                    best_common = common;
                }
            }
            if (!best) break;
            touch(*best);
            m.blocks.push_back(best->block);
            pos += best_common;
            if (best_common < bs) break;  // a block used in part: nothing can follow it
            node = best;
        }
        m.tokens = pos;
        m.kind = pos == 0 ? PrefixMatchKind::None
                          : (pos % bs == 0 ? PrefixMatchKind::BlockAligned : PrefixMatchKind::TokenExact);
        ++stats_.requests;
        ++(pos ? stats_.hits : stats_.misses);
        stats_.tokens_requested += tokens.size();
        stats_.tokens_matched += pos;
        return m;
    }

    /// Caches the first tokens.size() positions of a sequence, whose K/V are those tokens' (every layer must
    /// hold them: ShapeError otherwise). Blocks already cached under the same tokens are kept and the
    /// sequence's copies are not added. Then evicts down to the budget. Returns the blocks added.
    std::size_t insert(std::span<const std::int32_t> tokens, SequenceId sequence) {
        const std::size_t held = pool_->seq_len(sequence);
        if (tokens.size() > held) {
            throw ShapeError(fmt::format("PrefixCache::insert: {} tokens given but sequence {} holds only {} "
                                         "positions in every layer",
                                         tokens.size(), sequence.index, held));
        }
        const std::span<const BlockId> table = pool_->block_table(sequence);
        const std::size_t bs = pool_->block_size();
        // Each node takes its block reference as it is linked in, so a failure part way (allocation)
        // leaves a shorter but consistent tree.
        std::size_t added = 0;
        Node* node = &root_;
        for (std::size_t pos = 0, b = 0; pos < tokens.size(); pos += bs, ++b) {
            const auto chunk = tokens.subspan(pos, std::min(bs, tokens.size() - pos));
            const bool full = chunk.size() == bs;
            Node* next = nullptr;
            Node* shorter = nullptr;  // a partial leaf whose tokens begin this chunk
            for (const auto& child : node->children_starting_with(chunk[0])) {
                const std::size_t common = common_prefix(child->tokens, chunk);
                if (common == chunk.size()) {
                    next = child.get();  // the same tokens, or (partial chunk) a longer block starting with them
                    break;
                }
                if (common == child->tokens.size()) shorter = child.get();
            }
            if (next) {
                touch(*next);
                node = next;
                continue;
            }
            if (shorter) {  // a partial block grown longer: the new one supersedes it
                pool_->retain(table[b]);
                pool_->release(shorter->block);
                shorter->block = table[b];
                shorter->tokens.assign(chunk.begin(), chunk.end());
                touch(*shorter);
                ++added;
                ++stats_.blocks_inserted;
                node = shorter;
                if (!full) break;
                continue;
            }
            auto child = std::make_unique<Node>();
            child->tokens.assign(chunk.begin(), chunk.end());
            child->block = table[b];
            child->parent = node;
            Node* raw = child.get();
            node->children[chunk[0]].push_back(std::move(child));
            pool_->retain(raw->block);
            ++nodes_;
            touch(*raw);
            ++added;
            ++stats_.blocks_inserted;
            node = raw;
        }
        trim();
        return added;
    }

    /// Evicts least recently used unreferenced leaves until bytes() <= the budget (or none is left).
    void trim() {
        evict_while([&] { return bytes() > budget_; });
    }

    /// Evicts least recently used unreferenced leaves until the pool has `blocks` more free blocks than now
    /// (or none is left); returns how many blocks went back to the pool. What a caller does when the pool
    /// runs out.
    std::size_t evict_for(std::size_t blocks) {
        const std::size_t before = pool_->free_blocks();
        evict_while([&] { return pool_->free_blocks() < before + blocks; });
        return pool_->free_blocks() - before;
    }

    /// Drops every entry (blocks that sequences use stay with them).
    void clear() {
        release_subtree(root_);
        root_.children.clear();
        nodes_ = 0;
    }

    std::size_t byte_budget() const { return budget_; }
    /// Changes the budget and evicts down to it.
    void set_byte_budget(std::size_t bytes) {
        budget_ = bytes;
        trim();
    }
    /// Blocks the tree references, and their bytes.
    std::size_t cached_blocks() const { return nodes_; }
    std::size_t bytes() const { return nodes_ * pool_->block_bytes(); }

    const PrefixCacheStats& stats() const { return stats_; }
    void reset_stats() { stats_ = {}; }

private:
    struct Node {
        std::vector<std::int32_t> tokens;  // this block's tokens (block_size, or fewer for a partial leaf)
        BlockId block = 0;
        Node* parent = nullptr;
        std::unordered_map<std::int32_t, std::vector<std::unique_ptr<Node>>> children;  // by first token
        std::uint64_t last_used = 0;

        const std::vector<std::unique_ptr<Node>>& children_starting_with(std::int32_t token) const {
            static const std::vector<std::unique_ptr<Node>> none;
            const auto it = children.find(token);
            return it == children.end() ? none : it->second;
        }
        bool is_leaf() const { return children.empty(); }
    };

    static std::size_t common_prefix(const std::vector<std::int32_t>& a, std::span<const std::int32_t> b) {
        const std::size_t n = std::min(a.size(), b.size());
        std::size_t i = 0;
        while (i < n && a[i] == b[i]) ++i;
        return i;
    }

    void touch(Node& n) { n.last_used = ++clock_; }

    bool evictable(const Node& n) const { return n.is_leaf() && pool_->ref_count(n.block) == 1; }

    /// Evicts the least recently used evictable leaf while more() says so; a parent left childless joins
    /// the candidates.
    template <class More>
    void evict_while(More&& more) {
        if (!more()) return;
        using Entry = std::pair<std::uint64_t, Node*>;
        std::priority_queue<Entry, std::vector<Entry>, std::greater<>> candidates;
        collect_evictable(root_, candidates);
        while (more() && !candidates.empty()) {
            Node* victim = candidates.top().second;
            candidates.pop();
            Node* parent = victim->parent;
            remove_leaf(*victim);
            if (parent != &root_ && evictable(*parent)) candidates.emplace(parent->last_used, parent);
        }
    }

    template <class Queue>
    void collect_evictable(Node& n, Queue& out) {
        for (auto& [token, list] : n.children) {
            for (auto& c : list) {
                if (evictable(*c)) out.emplace(c->last_used, c.get());
                collect_evictable(*c, out);
            }
        }
    }

    void remove_leaf(Node& leaf) {
        Node& parent = *leaf.parent;
        pool_->release(leaf.block);
        auto it = parent.children.find(leaf.tokens[0]);
        auto& list = it->second;
        list.erase(std::find_if(list.begin(), list.end(), [&](const auto& p) { return p.get() == &leaf; }));
        if (list.empty()) parent.children.erase(it);
        --nodes_;
        ++stats_.blocks_evicted;
    }

    void release_subtree(Node& n) {
        for (auto& [token, list] : n.children) {
            for (auto& c : list) {
                release_subtree(*c);
                pool_->release(c->block);
            }
        }
    }

    PagedKVPool<T>* pool_;
    std::size_t budget_;
    Node root_;
    std::size_t nodes_ = 0;
    std::uint64_t clock_ = 0;
    PrefixCacheStats stats_;
};

}  // namespace kvcache
