// PagedKVPool<K, V = K> and PagedSequence<K, V>: a KV cache cut into fixed-size token blocks that many sequences
// share — block tables, reference counts, fork with copy-on-write.
//
// Memory: one allocation made at construction, `num_blocks` blocks of `block_size` positions. A block id covers
// a run of positions in the whole model, every layer, K and V (what a prefix tree needs); in memory each
// (layer, kv head) has its own arena of every block's rows:
//     for each layer l: keys as [kv_head][num_blocks][block_size][head_dim] stored as K, then values likewise as V
//                       (each region starting where its type may start: no padding when K == V)
// so within a block each head's rows are packed (a KVChunk with stride 0), and the rows of blocks b and b + 1
// of one (layer, kv head) are adjacent. A sequence whose blocks have consecutive ids — a prompt appended in one
// go takes them from the free list in order — is one long run per head, which the hardware prefetcher follows:
// with every layer of a block side by side instead, a head's rows were 16-position runs a block apart, and
// attention over eight sequences read them at a third of the bandwidth (bench_attention's BM_DecodeAttentionPaged).
// Nothing is allocated after construction except the block tables (a few bytes per block) and sequence slots.
//
// Sharing: a block may appear in several block tables (fork, prefix reuse); its reference count says in how
// many, plus one for each other holder that called retain() (the prefix cache). A block is written in place
// only while exactly one holder references it; an append into a shared block first copies it to a fresh
// block (copy-on-write), so whoever else holds it never sees the change.
// A context shift (PagedSequence::discard_positions / transform_keys, see cache/context_shift.hpp) rewrites
// the tail of a sequence through the same path: copied out, truncated, appended again.
//
// Errors: an append that needs more free blocks than the pool has throws CapacityError before anything
// changes. Thread safety: none; use one pool per thread or guard it with a lock.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <span>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "kvcache/cache/kv_chunk.hpp"
#include "kvcache/cache/layer_shape.hpp"
#include "kvcache/detail/aligned_buffer.hpp"
#include "kvcache/detail/checked.hpp"
#include "kvcache/detail/format.hpp"
#include "kvcache/element_types.hpp"
#include "kvcache/error.hpp"

namespace kvcache {

/// Index of a block in a PagedKVPool.
using BlockId = std::uint32_t;

/// Names a sequence of a PagedKVPool. The generation tells a freed (and possibly reused) slot from a live
/// one, so a stale id is reported instead of reading someone else's sequence.
struct SequenceId {
    std::uint32_t index = 0;
    std::uint32_t generation = 0;
    friend bool operator==(const SequenceId&, const SequenceId&) = default;
};

template <StorageElement K, StorageElement V>
class PagedSequence;

/// The chunks of one (layer, kv head) of a paged sequence: one KVChunk per block, in position order.
/// Computed on the fly from the block table (no allocation); valid until the sequence changes.
template <StorageElement K, StorageElement V = K>
class PagedChunkRange {
public:
    /// Where one (layer, kv head) of a sequence lives: enough to form its chunk in any block.
    struct Layout {
        const std::byte* base = nullptr;  // the pool's storage
        const BlockId* table = nullptr;   // the sequence's block table
        std::size_t length = 0;           // positions of this layer
        std::size_t block_size = 1;
        std::size_t key_offset = 0;       // bytes from the storage's start to this (layer, head)'s key arena
        std::size_t key_block_bytes = 0;  // bytes of one block's rows in it
        std::size_t value_offset = 0;     // ... and the value arena
        std::size_t value_block_bytes = 0;

        KVChunk<K, V> chunk(std::size_t i) const {
            const std::size_t block = table[i];
            const std::size_t start = i * block_size;
            return KVChunk<K, V>{reinterpret_cast<const K*>(base + key_offset + block * key_block_bytes),
                                 reinterpret_cast<const V*>(base + value_offset + block * value_block_bytes), start,
                                 std::min(block_size, length - start), 0};
        }
    };

    /// Yields chunks by value; holds its own copy of the layout, so it outlives the range it came from.
    class iterator {
    public:
        using value_type = KVChunk<K, V>;
        using difference_type = std::ptrdiff_t;
        using iterator_category = std::forward_iterator_tag;
        iterator() = default;
        iterator(const Layout& layout, std::size_t i) : layout_(layout), i_(i) {}
        KVChunk<K, V> operator*() const { return layout_.chunk(i_); }
        iterator& operator++() {
            ++i_;
            return *this;
        }
        iterator operator++(int) {
            iterator old = *this;
            ++i_;
            return old;
        }
        friend bool operator==(const iterator& a, const iterator& b) { return a.i_ == b.i_; }

    private:
        Layout layout_{};
        std::size_t i_ = 0;
    };

    explicit PagedChunkRange(const Layout& layout) : layout_(layout) {}

    iterator begin() const { return iterator(layout_, 0); }
    iterator end() const { return iterator(layout_, size()); }
    /// Chunks (blocks) in the range.
    std::size_t size() const { return (layout_.length + layout_.block_size - 1) / layout_.block_size; }
    KVChunk<K, V> operator[](std::size_t i) const {
        detail::check_index("chunk", i, size());
        return layout_.chunk(i);
    }

private:
    Layout layout_;
};

/// A pool of KV blocks and the sequences (block tables) that use them. Not copyable or movable: the
/// sequence views and a PrefixCache point at it. Keys are stored as K and values as V (V defaults to K).
template <StorageElement K = float, StorageElement V = K>
class PagedKVPool {
public:
    using element_type = K;  // (one type for both when K == V)
    using key_element_type = K;
    using value_element_type = V;
    static constexpr std::size_t kDefaultBlockSize = 16;

    /// `num_blocks` blocks of `block_size` positions, for layers of the given shapes.
    PagedKVPool(std::vector<LayerShape> layers, std::size_t num_blocks, std::size_t block_size = kDefaultBlockSize)
        : shapes_(std::move(layers)), block_size_(block_size), num_blocks_(num_blocks) {
        if (shapes_.empty() || num_blocks == 0 || block_size == 0) {
            throw ConfigError(fmt::format(
                "PagedKVPool needs >= 1 layer, >= 1 block and block size >= 1, got {} layers, {} blocks of {}",
                shapes_.size(), num_blocks, block_size));
        }
        if (num_blocks > std::numeric_limits<BlockId>::max() ||
            block_size > std::numeric_limits<std::uint32_t>::max() / 2) {
            throw ConfigError(fmt::format("PagedKVPool: {} blocks of {} positions is more than block ids can name",
                                          num_blocks, block_size));
        }
        key_offsets_.reserve(shapes_.size());
        value_offsets_.reserve(shapes_.size());
        std::size_t bytes = 0;
        for (std::size_t l = 0; l < shapes_.size(); ++l) {
            if (shapes_[l].kv_heads == 0 || shapes_[l].head_dim == 0) {
                throw ConfigError(fmt::format("PagedKVPool layer {} has {} kv heads of size {}; both must be >= 1", l,
                                              shapes_[l].kv_heads, shapes_[l].head_dim));
            }
            check_fits<K>(l, "keys");
            check_fits<V>(l, "values");
            const std::size_t heads = shapes_[l].kv_heads, dim = shapes_[l].head_dim;
            // keys then values, each region starting where its type may start (no padding when K == V)
            bytes = place(bytes, alignof(K),
                          detail::checked_product<ConfigError>("PagedKVPool", num_blocks, block_size, heads,
                                                               storage_units<K>(dim), sizeof(K)),
                          key_offsets_);
            bytes = place(bytes, alignof(V),
                          detail::checked_product<ConfigError>("PagedKVPool", num_blocks, block_size, heads,
                                                               storage_units<V>(dim), sizeof(V)),
                          value_offsets_);
        }
        block_bytes_ = block_bytes_for(shapes_, block_size);  // what a block holds, for accounting
        storage_ = detail::AlignedBuffer<std::byte>(place(bytes, std::max(alignof(K), alignof(V)), 0, value_offsets_, false));
        refs_.assign(num_blocks, 0);
        free_.reserve(num_blocks);
        for (std::size_t b = num_blocks; b-- > 0;) free_.push_back(static_cast<BlockId>(b));  // block 0 first
    }

    /// Every layer the same shape.
    PagedKVPool(const CacheShape& shape, std::size_t num_blocks, std::size_t block_size = kDefaultBlockSize)
        : PagedKVPool(shape.per_layer(), num_blocks, block_size) {}

    PagedKVPool(const PagedKVPool&) = delete;
    PagedKVPool& operator=(const PagedKVPool&) = delete;

    /// Blocks needed to hold `positions` positions of one sequence.
    static std::size_t blocks_for(std::size_t positions, std::size_t block_size = kDefaultBlockSize) {
        return (positions + block_size - 1) / block_size;
    }
    /// Bytes of one block of this shape (K and V, all layers): to size a pool before allocating it.
    static std::size_t block_bytes_for(std::span<const LayerShape> layers, std::size_t block_size = kDefaultBlockSize) {
        std::size_t bytes = 0;
        const auto align = [](std::size_t at, std::size_t a) { return (at + a - 1) / a * a; };
        for (const auto& s : layers) {
            bytes = align(bytes, alignof(K)) + block_size * s.kv_heads * storage_units<K>(s.head_dim) * sizeof(K);
            bytes = align(bytes, alignof(V)) + block_size * s.kv_heads * storage_units<V>(s.head_dim) * sizeof(V);
        }
        return align(bytes, std::max(alignof(K), alignof(V)));
    }

    // ---- shape and memory ----
    std::size_t num_layers() const { return shapes_.size(); }
    const LayerShape& layer_shape(std::size_t layer) const {
        detail::check_index("layer", layer, shapes_.size());
        return shapes_[layer];
    }
    std::size_t num_kv_heads(std::size_t layer) const { return layer_shape(layer).kv_heads; }
    std::size_t head_dim(std::size_t layer) const { return layer_shape(layer).head_dim; }
    std::size_t block_size() const { return block_size_; }
    std::size_t num_blocks() const { return num_blocks_; }
    std::size_t free_blocks() const { return free_.size(); }
    std::size_t used_blocks() const { return num_blocks_ - free_.size(); }
    std::size_t block_bytes() const { return block_bytes_; }
    /// The whole pool, allocated at construction.
    std::size_t bytes_allocated() const { return storage_.bytes(); }
    /// Bytes of blocks some holder references now (shared blocks counted once).
    std::size_t bytes_in_use() const { return used_blocks() * block_bytes(); }

    /// How many holders reference a block (0: it is free).
    std::uint32_t ref_count(BlockId block) const {
        detail::check_index("block", block, num_blocks_);
        return refs_[block];
    }
    /// Adds a holder to an allocated block (a prefix cache keeping it). IndexError for a free block.
    void retain(BlockId block) {
        check_allocated(block);
        ++refs_[block];
    }
    /// Drops a holder; the last one returns the block to the pool.
    void release(BlockId block) {
        check_allocated(block);
        if (--refs_[block] == 0) free_.push_back(block);
    }

    // ---- sequences ----
    /// A new, empty sequence.
    SequenceId create_sequence() {
        SequenceId id = new_slot();
        slots_[id.index].lengths.assign(shapes_.size(), 0);
        return id;
    }

    /// A new sequence whose first n_tokens positions (all layers) are the given blocks, shared: e.g. a
    /// prefix cache's match. blocks.size() must be blocks_for(n_tokens); the last block may be only partly
    /// used (positions past n_tokens in it are ignored, and the first append copies it if it is shared).
    SequenceId create_sequence(std::span<const BlockId> blocks, std::size_t n_tokens) {
        if (blocks.size() != blocks_for(n_tokens, block_size_)) {
            throw ShapeError(fmt::format("PagedKVPool: {} positions need {} blocks of {}, got {}", n_tokens,
                                         blocks_for(n_tokens, block_size_), block_size_, blocks.size()));
        }
        if (n_tokens > std::numeric_limits<std::uint32_t>::max()) {
            throw CapacityError(fmt::format("PagedKVPool: {} positions is more than a sequence can hold", n_tokens));
        }
        for (BlockId b : blocks) check_allocated(b);
        std::vector<BlockId> table(blocks.begin(), blocks.end());
        SequenceId id = new_slot();
        Slot& s = slots_[id.index];
        s.table = std::move(table);
        s.lengths.assign(shapes_.size(), static_cast<std::uint32_t>(n_tokens));
        for (BlockId b : s.table) ++refs_[b];
        return id;
    }

    /// A new sequence sharing all of parent's blocks (no data is copied until one of them appends).
    SequenceId fork(SequenceId parent) {
        const Slot& p = slot(parent);
        std::vector<BlockId> table = p.table;
        std::vector<std::uint32_t> lengths = p.lengths;
        SequenceId id = new_slot();
        Slot& s = slots_[id.index];
        s.table = std::move(table);
        s.lengths = std::move(lengths);
        for (BlockId b : s.table) ++refs_[b];
        return id;
    }

    /// A new sequence sharing parent's first `position` positions: a branch from an earlier point.
    /// IndexError if some layer of parent holds fewer positions.
    SequenceId fork(SequenceId parent, std::size_t position) {
        const Slot& p = slot(parent);
        const std::size_t held = *std::min_element(p.lengths.begin(), p.lengths.end());
        if (position > held) {
            throw IndexError(fmt::format("PagedKVPool: cannot fork sequence {} at position {}, it holds {}",
                                         parent.index, position, held));
        }
        return create_sequence(std::span<const BlockId>(p.table).first(blocks_for(position, block_size_)), position);
    }

    /// Returns the sequence's blocks (those nobody else holds go back to the pool); the id becomes invalid.
    void free_sequence(SequenceId id) {
        Slot& s = slot(id);
        // last block first: the free list is a stack, so the next sequence takes these back in ascending order
        // (consecutive ids are one run per head in every arena, see the top of this file)
        for (auto b = s.table.rbegin(); b != s.table.rend(); ++b) release(*b);
        s.table.clear();
        s.lengths.clear();
        s.live = false;
        ++s.generation;  // stale ids of this slot no longer resolve
        free_slots_.push_back(id.index);
        --live_sequences_;
    }

    /// Keeps the first n positions of every layer, returning blocks past them.
    void truncate(SequenceId id, std::size_t n) {
        Slot& s = slot(id);
        std::size_t longest = 0;
        for (auto& length : s.lengths) {
            length = static_cast<std::uint32_t>(std::min<std::size_t>(length, n));
            longest = std::max<std::size_t>(longest, length);
        }
        const std::size_t keep = blocks_for(longest, block_size_);
        while (s.table.size() > keep) {
            release(s.table.back());
            s.table.pop_back();
        }
    }

    /// Rewrites positions [from, length) of every layer of a sequence: drops [from, from + n_drop), hands the keys
    /// of the next n_transform positions to transform(layer, keys, n) — decoded to floats, [n][kv_heads][head_dim]
    /// — and stores what it leaves there (re-encoded), and moves the rest down unchanged (stored objects copied,
    /// never re-quantised). The tail is copied out, the sequence truncated to `from` and the tail appended again,
    /// so blocks that other holders share (forks, a prefix cache) are never written: copy-on-write as for any
    /// append. The copy is a temporary allocation (a context shift is not on the decode path). CapacityError,
    /// before anything changes, if the free blocks plus those the truncation returns cannot take the tail.
    /// The caller checks that every layer holds at least from + n_drop + n_transform positions.
    template <class Transform>
    void rewrite_tail(SequenceId id, std::size_t from, std::size_t n_drop, std::size_t n_transform,
                      Transform&& transform) {
        Slot& s = slot(id);
        std::size_t longest_tail = 0;
        for (const auto length : s.lengths) longest_tail = std::max<std::size_t>(longest_tail, length - from - n_drop);
        const std::size_t kept = blocks_for(from, block_size_);
        std::size_t available = free_.size(), needed = blocks_for(from + longest_tail, block_size_) - kept;
        for (std::size_t b = kept; b < s.table.size(); ++b) available += refs_[s.table[b]] == 1 ? 1 : 0;
        if (longest_tail > 0 && from % block_size_ != 0 && refs_[s.table[from / block_size_]] > 1) ++needed;  // a copy
        if (needed > available) {
            throw CapacityError(fmt::format("PagedKVPool: rewriting {} positions of sequence {} from position {} needs "
                                            "{} blocks, but {} are free or would be freed (the others are shared)",
                                            longest_tail, id.index, from, needed, available));
        }
        struct Tail {
            std::vector<K> keys;    // [n][kv_heads][storage_units<K>(head_dim)]
            std::vector<V> values;  // [n][kv_heads][storage_units<V>(head_dim)]
            std::size_t n = 0;
        };
        std::vector<Tail> tails(shapes_.size());
        std::vector<float> decoded;
        for (std::size_t l = 0; l < shapes_.size(); ++l) {
            const std::size_t heads = shapes_[l].kv_heads;
            const std::size_t dk = storage_units<K>(shapes_[l].head_dim), dv = storage_units<V>(shapes_[l].head_dim);
            Tail& tail = tails[l];
            tail.n = s.lengths[l] - from - n_drop;
            tail.keys.resize(tail.n * heads * dk);
            tail.values.resize(tail.n * heads * dv);
            for (std::size_t t = 0; t < tail.n; ++t) {
                const std::size_t pos = from + n_drop + t;
                for (std::size_t h = 0; h < heads; ++h) {
                    std::memcpy(&tail.keys[(t * heads + h) * dk], key_row(s.table[pos / block_size_], l, h, pos),
                                dk * sizeof(K));
                    std::memcpy(&tail.values[(t * heads + h) * dv], value_row(s.table[pos / block_size_], l, h, pos),
                                dv * sizeof(V));
                }
            }
            if (n_transform > 0) {
                const std::size_t values = n_transform * heads * shapes_[l].head_dim;
                decoded.resize(values);
                convert_to_float(tail.keys.data(), decoded.data(), values);
                transform(l, std::span<float>(decoded), n_transform);
                convert_from_float(decoded.data(), tail.keys.data(), values);
            }
        }
        truncate(id, from);
        for (std::size_t l = 0; l < shapes_.size(); ++l) {
            append_elements(id, l, tails[l].keys.data(), tails[l].values.data(), tails[l].n);
        }
    }

    bool contains(SequenceId id) const {
        return id.index < slots_.size() && slots_[id.index].live && slots_[id.index].generation == id.generation;
    }
    std::size_t num_sequences() const { return live_sequences_; }

    /// Positions (layer, sequence) holds.
    std::size_t seq_len(SequenceId id, std::size_t layer) const {
        const Slot& s = slot(id);
        detail::check_index("layer", layer, shapes_.size());
        return s.lengths[layer];
    }
    /// Positions every layer of the sequence holds (the complete ones).
    std::size_t seq_len(SequenceId id) const {
        const Slot& s = slot(id);
        return *std::min_element(s.lengths.begin(), s.lengths.end());
    }
    /// The sequence's blocks in position order.
    std::span<const BlockId> block_table(SequenceId id) const { return slot(id).table; }

    /// Free blocks an append of n_tokens to every layer of the sequence takes: new blocks past its table
    /// plus copies of shared blocks it would write into.
    std::size_t blocks_needed(SequenceId id, std::size_t n_tokens) const {
        const Slot& s = slot(id);
        std::size_t needed = 0;
        for (std::size_t l = 0; l < shapes_.size(); ++l) {
            needed = std::max(needed, blocks_needed_for(s, s.lengths[l], n_tokens));
        }
        return needed;
    }
    /// The most positions layer 0 of the sequence can grow by with the free blocks there are now.
    std::size_t appendable(SequenceId id) const {
        const Slot& s = slot(id);
        const std::size_t length = s.lengths[0];
        std::size_t budget = free_.size(), room = 0;
        for (std::size_t b = length / block_size_; b < s.table.size(); ++b) {
            const std::size_t in_block = block_size_ - std::max(length, b * block_size_) % block_size_;
            if (refs_[s.table[b]] > 1) {
                if (budget == 0) return room;
                --budget;
            }
            room += in_block;
        }
        return room + budget * block_size_;
    }

    /// Appends n_tokens positions to one layer of a sequence: keys and values are [n_tokens][kv_heads *
    /// head_dim] floats, converted to K and V. CapacityError (nothing changed) if the pool lacks free blocks.
    void append(SequenceId id, std::size_t layer, std::span<const float> keys, std::span<const float> values,
                std::size_t n_tokens) {
        write(id, layer, keys.size(), values.size(), n_tokens, [&](std::size_t t, std::size_t h, K* krow, V* vrow) {
            const std::size_t d = shapes_[layer].head_dim;
            const std::size_t at = (t * shapes_[layer].kv_heads + h) * d;
            convert_from_float(keys.data() + at, krow, d);
            convert_from_float(values.data() + at, vrow, d);
        });
    }
    /// The same with rows already in the element type (no conversion): keys and values each hold
    /// [n_tokens][kv_heads][storage_units<K or V>(head_dim)] objects (n_tokens * kv_heads * head_dim for float/fp16/bf16).
    void append_elements(SequenceId id, std::size_t layer, const K* keys, const V* values, std::size_t n_tokens) {
        if (n_tokens > 0 && (keys == nullptr || values == nullptr)) {
            throw ShapeError(fmt::format("PagedKVPool::append_elements: null rows for {} tokens", n_tokens));
        }
        const std::size_t width = layer < shapes_.size() ? shapes_[layer].token_width() : 0;
        write(id, layer, n_tokens * width, n_tokens * width, n_tokens,
              [&](std::size_t t, std::size_t h, K* krow, V* vrow) {
                  const std::size_t dk = storage_units<K>(shapes_[layer].head_dim);
                  const std::size_t dv = storage_units<V>(shapes_[layer].head_dim);
                  const std::size_t row = t * shapes_[layer].kv_heads + h;
                  std::memcpy(krow, keys + row * dk, dk * sizeof(K));
                  std::memcpy(vrow, values + row * dv, dv * sizeof(V));
              });
    }

    /// The chunks attention reads for (sequence, layer, kv head): one per block.
    PagedChunkRange<K, V> chunks(SequenceId id, std::size_t layer, std::size_t head) const {
        const Slot& s = slot(id);
        detail::check_index("layer", layer, shapes_.size());
        detail::check_index("kv head", head, shapes_[layer].kv_heads);
        const std::size_t dim = shapes_[layer].head_dim;
        const std::size_t key_row_bytes = storage_units<K>(dim) * sizeof(K);
        const std::size_t value_row_bytes = storage_units<V>(dim) * sizeof(V);
        return PagedChunkRange<K, V>(typename PagedChunkRange<K, V>::Layout{
            storage_.data(), s.table.data(), s.lengths[layer], block_size_,
            key_offsets_[layer] + arena_row(0, head, 0) * key_row_bytes, block_size_ * key_row_bytes,
            value_offsets_[layer] + arena_row(0, head, 0) * value_row_bytes, block_size_ * value_row_bytes});
    }

    /// A view of one sequence that satisfies KVCacheLike (attention and the decoder take it).
    PagedSequence<K, V> sequence(SequenceId id) {
        (void)slot(id);  // reject a stale id now rather than at first use
        return PagedSequence<K, V>(*this, id);
    }

private:
    struct Slot {
        std::vector<BlockId> table;
        std::vector<std::uint32_t> lengths;  // per layer
        std::uint32_t generation = 0;
        bool live = false;
    };

    SequenceId new_slot() {
        std::uint32_t index;
        if (!free_slots_.empty()) {
            index = free_slots_.back();
            free_slots_.pop_back();
        } else {
            if (slots_.size() >= std::numeric_limits<std::uint32_t>::max()) {
                throw CapacityError("PagedKVPool: too many sequences");
            }
            index = static_cast<std::uint32_t>(slots_.size());
            slots_.emplace_back();
        }
        Slot& s = slots_[index];
        s.live = true;
        ++live_sequences_;
        return SequenceId{index, s.generation};
    }
    const Slot& slot(SequenceId id) const {
        if (!contains(id)) {
            throw IndexError(fmt::format("PagedKVPool: sequence {} (generation {}) does not exist (freed or never "
                                         "created)",
                                         id.index, id.generation));
        }
        return slots_[id.index];
    }
    Slot& slot(SequenceId id) { return const_cast<Slot&>(std::as_const(*this).slot(id)); }
    void check_allocated(BlockId block) const {
        detail::check_index("block", block, num_blocks_);
        if (refs_[block] == 0) throw IndexError(fmt::format("PagedKVPool: block {} is free, not allocated", block));
    }

    /// Blocks an append of n positions at `length` takes (new ones and copies of shared ones).
    std::size_t blocks_needed_for(const Slot& s, std::size_t length, std::size_t n) const {
        if (n == 0) return 0;
        const std::size_t first = length / block_size_, last = (length + n - 1) / block_size_;
        std::size_t needed = 0;
        for (std::size_t b = first; b <= last; ++b) {
            if (b >= s.table.size() || refs_[s.table[b]] > 1) ++needed;
        }
        return needed;
    }

    BlockId take_block() {
        const BlockId b = free_.back();
        free_.pop_back();
        refs_[b] = 1;
        return b;
    }

    /// Checks everything, makes blocks [length, length + n) writable (allocate, copy-on-write), then
    /// calls put(token, head, key_row, value_row) for every row. All checks and allocations happen before
    /// the first write, so a failed append changes nothing.
    template <class Put>
    void write(SequenceId id, std::size_t layer, std::size_t key_elements, std::size_t value_elements,
               std::size_t n_tokens, Put&& put) {
        Slot& s = slot(id);
        detail::check_index("layer", layer, shapes_.size());
        const LayerShape& shape = shapes_[layer];
        detail::check_rows("keys", key_elements, n_tokens, shape.token_width());
        detail::check_rows("values", value_elements, n_tokens, shape.token_width());
        if (n_tokens == 0) return;
        const std::size_t length = s.lengths[layer];
        if (n_tokens > std::numeric_limits<std::uint32_t>::max() - length) {
            throw CapacityError(fmt::format("PagedKVPool: {} + {} positions is more than a sequence can hold",
                                            length, n_tokens));
        }
        const std::size_t needed = blocks_needed_for(s, length, n_tokens);
        if (needed > free_.size()) {
            throw CapacityError(fmt::format(
                "PagedKVPool: appending {} tokens to sequence {} layer {} at position {} needs {} free blocks, but "
                "{} of {} are free (block size {})",
                n_tokens, id.index, layer, length, needed, free_.size(), num_blocks_, block_size_));
        }
        const std::size_t last = (length + n_tokens - 1) / block_size_;
        // The only allocation, made before any block changes hands; geometric, so a decode loop allocates
        // O(log n) times in all rather than once per block.
        if (s.table.capacity() < last + 1) s.table.reserve(std::max(last + 1, 2 * s.table.capacity()));
        for (std::size_t b = length / block_size_; b <= last; ++b) {
            if (b >= s.table.size()) {
                s.table.push_back(take_block());
            } else if (refs_[s.table[b]] > 1) {  // copy-on-write: the other holders keep the original
                const BlockId copy = take_block();
                copy_block(s.table[b], copy);
                --refs_[s.table[b]];
                s.table[b] = copy;
            }
        }
        for (std::size_t t = 0; t < n_tokens; ++t) {
            const std::size_t pos = length + t;
            const BlockId b = s.table[pos / block_size_];
            for (std::size_t h = 0; h < shape.kv_heads; ++h) put(t, h, key_row(b, layer, h, pos), value_row(b, layer, h, pos));
        }
        s.lengths[layer] = static_cast<std::uint32_t>(length + n_tokens);
    }

    /// Row index of (kv head, block b, position) in a layer's [kv_head][num_blocks][block_size] arena.
    std::size_t arena_row(BlockId b, std::size_t head, std::size_t pos) const {
        return (head * num_blocks_ + b) * block_size_ + pos % block_size_;
    }
    /// The key row of (layer, kv head, position) in block b, which holds that position.
    K* key_row(BlockId b, std::size_t layer, std::size_t head, std::size_t pos) {
        const std::size_t d = storage_units<K>(shapes_[layer].head_dim);
        return reinterpret_cast<K*>(storage_.data() + key_offsets_[layer]) + arena_row(b, head, pos) * d;
    }
    V* value_row(BlockId b, std::size_t layer, std::size_t head, std::size_t pos) {
        const std::size_t d = storage_units<V>(shapes_[layer].head_dim);
        return reinterpret_cast<V*>(storage_.data() + value_offsets_[layer]) + arena_row(b, head, pos) * d;
    }
    /// Every row of block `from` (all layers and heads, K and V) into block `to`.
    void copy_block(BlockId from, BlockId to) {
        for (std::size_t l = 0; l < shapes_.size(); ++l) {
            const std::size_t dk = storage_units<K>(shapes_[l].head_dim), dv = storage_units<V>(shapes_[l].head_dim);
            for (std::size_t h = 0; h < shapes_[l].kv_heads; ++h) {
                std::memcpy(key_row(to, l, h, 0), key_row(from, l, h, 0), block_size_ * dk * sizeof(K));
                std::memcpy(value_row(to, l, h, 0), value_row(from, l, h, 0), block_size_ * dv * sizeof(V));
            }
        }
    }

    template <StorageElement T>
    void check_fits(std::size_t l, const char* what) const {
        if (!fits_blocks<T>(shapes_[l].head_dim)) {
            throw ConfigError(fmt::format("PagedKVPool layer {}: head size {} is not a multiple of the {}-value "
                                          "blocks of {} ({})",
                                          l, shapes_[l].head_dim, block_values_v<T>, element_name<T>(), what));
        }
    }
    /// Places a region of `size` bytes at the first multiple of `align` from `at` (recording where, if `record`);
    /// returns where it ends. ConfigError if the block's size overflows.
    static std::size_t place(std::size_t at, std::size_t align, std::size_t size, std::vector<std::size_t>& offsets,
                             bool record = true) {
        const std::size_t start = detail::checked_add(at, align - 1, "PagedKVPool: block bytes") / align * align;
        if (record) offsets.push_back(start);
        return detail::checked_add(start, size, "PagedKVPool: block bytes");
    }

    std::vector<LayerShape> shapes_;
    std::size_t block_size_;
    std::size_t num_blocks_;
    std::vector<std::size_t> key_offsets_;    // bytes from the storage's start to layer l's keys [kv_head][num_blocks][block_size][row]
    std::vector<std::size_t> value_offsets_;  // ... and to its values
    std::size_t block_bytes_ = 0;             // bytes one block holds over all the arenas
    detail::AlignedBuffer<std::byte> storage_;  // every layer's key and value arenas
    std::vector<std::uint32_t> refs_;         // per block; 0 = free
    std::vector<BlockId> free_;               // free blocks, the next one to take at the back
    std::vector<Slot> slots_;
    std::vector<std::uint32_t> free_slots_;
    std::size_t live_sequences_ = 0;
};

/// One sequence of a pool seen as a KVCacheLike cache with a single batch row: attention, the decoder and
/// any other cache code read and append to it unchanged. A cheap handle (pool pointer + id); copies refer
/// to the same sequence. It does not own the sequence: free it through the pool.
template <StorageElement K, StorageElement V = K>
class PagedSequence {
public:
    using element_type = K;  // (one type for both when K == V)
    using key_element_type = K;
    using value_element_type = V;

    PagedSequence(PagedKVPool<K, V>& pool, SequenceId id) : pool_(&pool), id_(id) {}

    SequenceId id() const { return id_; }
    PagedKVPool<K, V>& pool() const { return *pool_; }

    std::size_t num_layers() const { return pool_->num_layers(); }
    std::size_t batch_size() const { return 1; }
    std::size_t num_kv_heads(std::size_t layer) const { return pool_->num_kv_heads(layer); }
    std::size_t head_dim(std::size_t layer) const { return pool_->head_dim(layer); }
    std::size_t seq_len(std::size_t layer, std::size_t row) const {
        detail::check_index("batch row", row, 1);
        return pool_->seq_len(id_, layer);
    }
    /// Positions every layer holds.
    std::size_t seq_len() const { return pool_->seq_len(id_); }
    /// Positions layer 0 can reach with the pool's free blocks now (what the decoder checks before a
    /// forward pass, so that an exhausted pool fails before any layer is appended to).
    std::size_t capacity() const { return pool_->seq_len(id_, 0) + pool_->appendable(id_); }

    PagedChunkRange<K, V> chunks(std::size_t layer, std::size_t row, std::size_t head) const {
        detail::check_index("batch row", row, 1);
        return pool_->chunks(id_, layer, head);
    }

    void append(std::size_t layer, std::size_t row, std::span<const float> keys, std::span<const float> values,
                std::size_t n_tokens) {
        detail::check_index("batch row", row, 1);
        pool_->append(id_, layer, keys, values, n_tokens);
    }
    /// Rows already in the element type, [n_tokens][kv_heads * head_dim] each (fast loading).
    void append_elements(std::size_t layer, std::size_t row, const K* keys, const V* values, std::size_t n_tokens) {
        detail::check_index("batch row", row, 1);
        pool_->append_elements(id_, layer, keys, values, n_tokens);
    }

    /// Keeps the first n positions.
    void truncate(std::size_t n) { pool_->truncate(id_, n); }

    /// Drops positions [n_keep, n_keep + n_discard) of every layer and moves the rest down: the first half of a
    /// context shift (cache/context_shift.hpp), as MultiLayerKVCache's. ConfigError unless n_discard >= 1 and
    /// every layer holds n_keep + n_discard positions; CapacityError if shared blocks leave too few free ones to
    /// rewrite the tail (PagedKVPool::rewrite_tail). Either way nothing changes.
    void discard_positions(std::size_t row, std::size_t n_keep, std::size_t n_discard) {
        detail::check_index("batch row", row, 1);
        for (std::size_t l = 0; l < num_layers(); ++l) {
            const std::size_t n = pool_->seq_len(id_, l);
            if (n_discard == 0 || n_keep > n || n_discard > n - n_keep) {
                throw ConfigError(fmt::format("discard_positions: cannot drop {} positions after the first {} of layer "
                                              "{} of sequence {}, which holds {}",
                                              n_discard, n_keep, l, id_.index, n));
            }
        }
        pool_->rewrite_tail(id_, n_keep, n_discard, 0, [](std::size_t, std::span<float>, std::size_t) {});
    }

    /// Calls f(layer, keys, n) with positions [from, to) of the keys of every layer decoded to floats as
    /// [n][kv_heads][head_dim] and stores what f leaves there (re-encoded): how a context shift re-rotates keys.
    /// Blocks shared with other holders are copied, not written. IndexError unless to <= every layer's length.
    template <class F>
    void transform_keys(std::size_t row, std::size_t from, std::size_t to, F&& f) {
        detail::check_index("batch row", row, 1);
        for (std::size_t l = 0; l < num_layers(); ++l) {
            if (from > to || to > pool_->seq_len(id_, l)) {
                throw IndexError(fmt::format("transform_keys: positions [{}, {}) of layer {} of sequence {}, which "
                                             "holds {}",
                                             from, to, l, id_.index, pool_->seq_len(id_, l)));
            }
        }
        if (from < to) pool_->rewrite_tail(id_, from, 0, to - from, std::forward<F>(f));
    }

private:
    PagedKVPool<K, V>* pool_;
    SequenceId id_;
};

}  // namespace kvcache
