// PagedKVPool / PagedSequence: block layout, append and read back, fork and copy-on-write, truncation,
// freeing, pool exhaustion, every error path, and attention over a paged sequence bitwise equal to
// attention over a contiguous cache with the same contents.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <limits>
#include <ranges>
#include <span>
#include <type_traits>
#include <vector>

#include "cache_test_support.hpp"
#include "kvcache/attention/attention.hpp"
#include "kvcache/attention/reference.hpp"
#include "kvcache/cache/concept.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/cache/paged_kv_cache.hpp"
#include "kvcache/testing/random.hpp"

using namespace kvcache;
using cache_test::RowModel;

static_assert(KVCacheLike<PagedSequence<float>>);
static_assert(KVCacheLike<PagedSequence<fp16>>);
static_assert(KVCacheLike<PagedSequence<bf16>>);
static_assert(!ContiguousKVCache<PagedSequence<float>>);  // blocks are not one run of memory
static_assert(std::ranges::forward_range<PagedChunkRange<float>>);
static_assert(!std::is_copy_constructible_v<PagedKVPool<float>>);

namespace {

const std::vector<LayerShape> kShapes{{2, 4}, {1, 7}, {3, 2}};

/// Mismatching elements between what the sequence's chunks hold for (layer) and the model, plus a check
/// that there is one chunk per block with the right start and length.
template <class Seq>
std::size_t paged_mismatches(const Seq& seq, std::size_t layer, const RowModel& model, std::size_t block_size) {
    const std::size_t heads = seq.num_kv_heads(layer), d = seq.head_dim(layer);
    const std::size_t n = model.length();
    if (seq.seq_len(layer, 0) != n) return 1000000 + n;
    std::size_t bad = 0;
    for (std::size_t h = 0; h < heads; ++h) {
        std::size_t expected_start = 0, count = 0;
        for (const auto& chunk : seq.chunks(layer, 0, h)) {
            bad += chunk.start != expected_start;
            bad += chunk.length != std::min(block_size, n - chunk.start);
            bad += chunk.row_stride(d) != d;
            for (std::size_t i = 0; i < chunk.length; ++i) {
                const std::size_t p = chunk.start + i;
                for (std::size_t k = 0; k < d; ++k) {
                    bad += to_float(chunk.keys[i * d + k]) != model.keys[(p * heads + h) * d + k];
                    bad += to_float(chunk.values[i * d + k]) != model.values[(p * heads + h) * d + k];
                }
            }
            expected_start += chunk.length;
            ++count;
        }
        bad += expected_start != n;
        bad += count != PagedKVPool<float>::blocks_for(n, block_size);
    }
    return bad;
}

/// Appends n random tokens to every layer of a paged sequence and to the models.
template <class Seq>
void append_all_layers(Seq& seq, std::vector<RowModel>& models, std::size_t n, std::uint64_t seed) {
    for (std::size_t l = 0; l < seq.num_layers(); ++l) cache_test::append_random(seq, models[l], l, 0, n, seed + l);
}

}  // namespace

TEMPLATE_TEST_CASE("PagedKVPool: construction, sizes and validation", "[paged]", float, fp16, bf16) {
    using Pool = PagedKVPool<TestType>;
    CHECK_THROWS_AS(Pool(std::vector<LayerShape>{}, 4), ConfigError);
    CHECK_THROWS_AS(Pool(kShapes, 0), ConfigError);
    CHECK_THROWS_AS(Pool(kShapes, 4, 0), ConfigError);
    CHECK_THROWS_AS(Pool(std::vector<LayerShape>{{2, 4}, {0, 4}}, 4), ConfigError);
    CHECK_THROWS_AS(Pool(std::vector<LayerShape>{{2, 4}, {2, 0}}, 4), ConfigError);
    CHECK_THROWS_AS(Pool(CacheShape{1, 1, 1}, std::size_t{std::numeric_limits<BlockId>::max()} + 1, 1), ConfigError);
    CHECK_THROWS_AS(Pool(CacheShape{1, 1024, 1024}, 1, std::numeric_limits<std::size_t>::max() / 4), ConfigError);
    try {
        Pool(std::vector<LayerShape>{{2, 4}, {2, 4}, {5, 0}}, 4);
        FAIL("no exception");
    } catch (const ConfigError& e) {
        CHECK_THAT(e.what(), Catch::Contains("layer 2"));
    }

    Pool pool(kShapes, 10, 4);
    CHECK(pool.num_layers() == 3);
    CHECK(pool.block_size() == 4);
    CHECK(pool.num_blocks() == 10);
    CHECK(pool.free_blocks() == 10);
    CHECK(pool.used_blocks() == 0);
    CHECK(pool.num_sequences() == 0);
    for (std::size_t l = 0; l < 3; ++l) {
        CHECK(pool.layer_shape(l) == kShapes[l]);
        CHECK(pool.num_kv_heads(l) == kShapes[l].kv_heads);
        CHECK(pool.head_dim(l) == kShapes[l].head_dim);
    }
    CHECK_THROWS_AS(pool.layer_shape(3), IndexError);
    CHECK_THROWS_AS(pool.num_kv_heads(3), IndexError);
    CHECK_THROWS_AS(pool.head_dim(3), IndexError);
    // a block: 4 positions x (2*4 + 1*7 + 3*2) values, K and V
    const std::size_t block_bytes = 2 * 4 * (8 + 7 + 6) * sizeof(TestType);
    CHECK(pool.block_bytes() == block_bytes);
    CHECK(Pool::block_bytes_for(kShapes, 4) == block_bytes);
    CHECK(pool.bytes_allocated() == 10 * block_bytes);
    CHECK(pool.bytes_in_use() == 0);
    CHECK(Pool::blocks_for(0, 4) == 0);
    CHECK(Pool::blocks_for(1, 4) == 1);
    CHECK(Pool::blocks_for(4, 4) == 1);
    CHECK(Pool::blocks_for(5, 4) == 2);
    CHECK(Pool::blocks_for(32) == 2);  // default block size 16
    CHECK(PagedKVPool<TestType>(CacheShape{1, 1, 8}, 2).block_size() == 16);
}

TEMPLATE_TEST_CASE("PagedKVPool: append and read back across block boundaries, per-layer shapes", "[paged]", float,
                   fp16, bf16) {
    for (std::size_t block_size : {1u, 3u, 4u, 16u}) {
        PagedKVPool<TestType> pool(kShapes, 40, block_size);
        const SequenceId id = pool.create_sequence();
        auto seq = pool.sequence(id);
        CHECK(seq.batch_size() == 1);
        CHECK(seq.num_layers() == 3);
        CHECK(seq.id() == id);
        CHECK(&seq.pool() == &pool);
        std::vector<RowModel> models(3);
        std::size_t total = 0;
        for (std::size_t n : {1u, 2u, 5u, 0u, 9u}) {
            append_all_layers(seq, models, n, 100 * total + block_size);
            total += n;
            for (std::size_t l = 0; l < 3; ++l) {
                INFO("block size " << block_size << " layer " << l << " length " << total);
                CHECK(paged_mismatches(seq, l, models[l], block_size) == 0);
            }
            CHECK(seq.seq_len() == total);
            CHECK(pool.seq_len(id) == total);
            CHECK(pool.block_table(id).size() == PagedKVPool<TestType>::blocks_for(total, block_size));
            CHECK(pool.used_blocks() == PagedKVPool<TestType>::blocks_for(total, block_size));
            CHECK(pool.bytes_in_use() == pool.used_blocks() * pool.block_bytes());
        }
        // indexing a chunk range
        const auto range = seq.chunks(0, 0, 1);
        CHECK(range.size() == PagedKVPool<TestType>::blocks_for(total, block_size));
        CHECK(range[0].keys == (*range.begin()).keys);
        CHECK_THROWS_AS(range[range.size()], IndexError);
    }
}

TEMPLATE_TEST_CASE("PagedKVPool: layers appended separately keep their own lengths and share blocks", "[paged]",
                   float, fp16, bf16) {
    PagedKVPool<TestType> pool(kShapes, 8, 4);
    const SequenceId id = pool.create_sequence();
    auto seq = pool.sequence(id);
    std::vector<RowModel> models(3);
    cache_test::append_random(seq, models[0], 0, 0, 6, 1);  // layer 0 allocates two blocks
    CHECK(pool.used_blocks() == 2);
    CHECK(seq.seq_len(0, 0) == 6);
    CHECK(seq.seq_len(1, 0) == 0);
    CHECK(seq.seq_len() == 0);  // the complete positions
    cache_test::append_random(seq, models[2], 2, 0, 5, 2);   // fits in the same blocks
    cache_test::append_random(seq, models[1], 1, 0, 6, 3);
    CHECK(pool.used_blocks() == 2);
    CHECK(seq.seq_len() == 5);
    for (std::size_t l = 0; l < 3; ++l) CHECK(paged_mismatches(seq, l, models[l], 4) == 0);
}

TEMPLATE_TEST_CASE("PagedKVPool: append_elements stores rows bit for bit, like append", "[paged]", float, fp16,
                   bf16) {
    PagedKVPool<TestType> pool(kShapes, 16, 4);
    const SequenceId a = pool.create_sequence(), b = pool.create_sequence();
    auto sa = pool.sequence(a);
    auto sb = pool.sequence(b);
    std::vector<RowModel> models(3);
    append_all_layers(sa, models, 7, 11);
    // read a's rows back as elements, [n][kv_heads][head_dim], and append them to b
    for (std::size_t l = 0; l < 3; ++l) {
        const std::size_t heads = pool.num_kv_heads(l), d = pool.head_dim(l);
        std::vector<TestType> k(7 * heads * d), v(7 * heads * d);
        for (std::size_t h = 0; h < heads; ++h) {
            for (const auto& c : sa.chunks(l, 0, h)) {
                for (std::size_t i = 0; i < c.length; ++i) {
                    std::memcpy(&k[((c.start + i) * heads + h) * d], c.keys + i * d, d * sizeof(TestType));
                    std::memcpy(&v[((c.start + i) * heads + h) * d], c.values + i * d, d * sizeof(TestType));
                }
            }
        }
        sb.append_elements(l, 0, k.data(), v.data(), 3);  // in two pieces, across a block boundary
        sb.append_elements(l, 0, k.data() + 3 * heads * d, v.data() + 3 * heads * d, 4);
        CHECK(paged_mismatches(sb, l, models[l], 4) == 0);
        CHECK_THROWS_AS(sb.append_elements(l, 0, nullptr, v.data(), 1), ShapeError);
        CHECK_THROWS_AS(sb.append_elements(l, 0, k.data(), nullptr, 1), ShapeError);
        CHECK_THROWS_AS(sb.append_elements(l, 1, k.data(), v.data(), 1), IndexError);
        sb.append_elements(l, 0, nullptr, nullptr, 0);  // nothing to read: allowed
        CHECK(sb.seq_len(l, 0) == 7);
    }
    CHECK_THROWS_AS(sb.append_elements(3, 0, nullptr, nullptr, 0), IndexError);
}

TEMPLATE_TEST_CASE("PagedKVPool: a head's rows in consecutive blocks are adjacent; freed blocks come back in order",
                   "[paged]", float, q8_0) {
    using Pool = PagedKVPool<TestType>;
    const std::vector<LayerShape> shapes{{2, 32}, {3, 64}};
    Pool pool(shapes, 12, 4);
    const auto a = pool.create_sequence();
    for (std::size_t l = 0; l < shapes.size(); ++l) {
        const auto rows = testing::random_normal(10 * shapes[l].token_width(), 40 + l);
        pool.append(a, l, rows, rows, 10);  // a prompt in one go: blocks 0, 1, 2
    }
    for (std::size_t l = 0; l < shapes.size(); ++l) {
        const std::size_t row = storage_units<TestType>(shapes[l].head_dim);
        for (std::size_t h = 0; h < shapes[l].kv_heads; ++h) {
            const auto range = pool.chunks(a, l, h);
            REQUIRE(range.size() == 3);
            for (std::size_t i = 1; i < range.size(); ++i) {  // one run per head: where block i - 1 ends, i begins
                CHECK(range[i].keys == range[i - 1].keys + 4 * row);
                CHECK(range[i].values == range[i - 1].values + 4 * row);
            }
        }
    }
    // Freed, the blocks go back so that the next prompt takes them in ascending order again.
    pool.free_sequence(a);
    const auto b = pool.create_sequence();
    const auto rows = testing::random_normal(12 * shapes[0].token_width(), 50);
    pool.append(b, 0, rows, rows, 12);
    const auto range = pool.chunks(b, 0, 1);
    REQUIRE(range.size() == 3);
    for (std::size_t i = 1; i < range.size(); ++i) {
        CHECK(range[i].keys == range[i - 1].keys + 4 * storage_units<TestType>(32));
    }
}

TEMPLATE_TEST_CASE("PagedKVPool: fork shares blocks; copy-on-write leaves the parent unchanged", "[paged]", float,
                   fp16, bf16) {
    PagedKVPool<TestType> pool(kShapes, 20, 4);
    const SequenceId parent = pool.create_sequence();
    auto ps = pool.sequence(parent);
    std::vector<RowModel> parent_models(3);
    append_all_layers(ps, parent_models, 6, 21);  // blocks: [0..4) full, [4..6) half
    const std::vector<BlockId> parent_table(pool.block_table(parent).begin(), pool.block_table(parent).end());
    REQUIRE(parent_table.size() == 2);

    const SequenceId child = pool.fork(parent);
    CHECK(pool.num_sequences() == 2);
    CHECK(std::vector<BlockId>(pool.block_table(child).begin(), pool.block_table(child).end()) == parent_table);
    for (BlockId b : parent_table) CHECK(pool.ref_count(b) == 2);
    CHECK(pool.used_blocks() == 2);  // nothing copied yet

    // appending 1 token to the child writes into the shared half block: it is copied first
    auto cs = pool.sequence(child);
    std::vector<RowModel> child_models = parent_models;
    CHECK(pool.blocks_needed(child, 1) == 1);
    append_all_layers(cs, child_models, 1, 22);
    CHECK(pool.used_blocks() == 3);
    CHECK(pool.block_table(child)[0] == parent_table[0]);  // the full block is still shared
    CHECK(pool.block_table(child)[1] != parent_table[1]);  // the half block is the child's copy
    CHECK(pool.ref_count(parent_table[0]) == 2);
    CHECK(pool.ref_count(parent_table[1]) == 1);
    CHECK(pool.ref_count(pool.block_table(child)[1]) == 1);
    for (std::size_t l = 0; l < 3; ++l) {
        CHECK(paged_mismatches(ps, l, parent_models[l], 4) == 0);  // the parent is unchanged
        CHECK(paged_mismatches(cs, l, child_models[l], 4) == 0);
    }
    // now the parent appends too: its block is no longer shared, so it writes in place
    CHECK(pool.blocks_needed(parent, 2) == 0);
    append_all_layers(ps, parent_models, 2, 23);
    CHECK(pool.used_blocks() == 3);
    CHECK(pool.block_table(parent)[1] == parent_table[1]);
    for (std::size_t l = 0; l < 3; ++l) {
        CHECK(paged_mismatches(ps, l, parent_models[l], 4) == 0);
        CHECK(paged_mismatches(cs, l, child_models[l], 4) == 0);
    }

    // a fork of a block-aligned sequence copies nothing when it appends (a new block is taken)
    const SequenceId aligned = pool.fork(parent);  // parent holds 8 = 2 full blocks
    auto as = pool.sequence(aligned);
    std::vector<RowModel> aligned_models = parent_models;
    CHECK(pool.blocks_needed(aligned, 3) == 1);
    append_all_layers(as, aligned_models, 3, 24);
    CHECK(pool.used_blocks() == 4);
    for (std::size_t l = 0; l < 3; ++l) {
        CHECK(paged_mismatches(ps, l, parent_models[l], 4) == 0);
        CHECK(paged_mismatches(as, l, aligned_models[l], 4) == 0);
    }

    // freeing the parent keeps blocks the children still use
    pool.free_sequence(parent);
    CHECK_FALSE(pool.contains(parent));
    for (std::size_t l = 0; l < 3; ++l) {
        CHECK(paged_mismatches(cs, l, child_models[l], 4) == 0);
        CHECK(paged_mismatches(as, l, aligned_models[l], 4) == 0);
    }
    CHECK(pool.ref_count(parent_table[0]) == 2);  // child and aligned
    pool.free_sequence(child);
    pool.free_sequence(aligned);
    CHECK(pool.used_blocks() == 0);
    CHECK(pool.free_blocks() == 20);
    CHECK(pool.ref_count(parent_table[0]) == 0);
}

TEMPLATE_TEST_CASE("PagedKVPool: fork at a position, truncate, and sequences made from shared blocks", "[paged]",
                   float, fp16, bf16) {
    PagedKVPool<TestType> pool(kShapes, 20, 4);
    const SequenceId parent = pool.create_sequence();
    auto ps = pool.sequence(parent);
    std::vector<RowModel> models(3);
    append_all_layers(ps, models, 10, 31);

    // branch at 5: shares two blocks, the second in part
    const SequenceId branch = pool.fork(parent, 5);
    CHECK(pool.seq_len(branch) == 5);
    CHECK(pool.block_table(branch).size() == 2);
    CHECK(pool.ref_count(pool.block_table(parent)[1]) == 2);
    CHECK(pool.ref_count(pool.block_table(parent)[2]) == 1);
    auto bs = pool.sequence(branch);
    std::vector<RowModel> branch_models = models;
    for (auto& m : branch_models) m.truncate(5);
    append_all_layers(bs, branch_models, 4, 32);  // rewrites positions 5..9 in a copy
    for (std::size_t l = 0; l < 3; ++l) {
        CHECK(paged_mismatches(ps, l, models[l], 4) == 0);
        CHECK(paged_mismatches(bs, l, branch_models[l], 4) == 0);
    }
    CHECK(pool.seq_len(pool.fork(parent, 0)) == 0);
    CHECK_THROWS_AS(pool.fork(parent, 11), IndexError);

    // truncate returns whole blocks past the new end; a truncated sequence appends in place again
    const std::size_t used = pool.used_blocks();
    bs.truncate(2);
    CHECK(pool.seq_len(branch) == 2);
    CHECK(pool.block_table(branch).size() == 1);
    CHECK(pool.used_blocks() == used - 2);  // its copy of block 1 and its block 2
    for (auto& m : branch_models) m.truncate(2);
    append_all_layers(bs, branch_models, 1, 33);  // block 0 is shared with parent: copied
    for (std::size_t l = 0; l < 3; ++l) {
        CHECK(paged_mismatches(ps, l, models[l], 4) == 0);
        CHECK(paged_mismatches(bs, l, branch_models[l], 4) == 0);
    }
    pool.truncate(branch, 100);  // longer than it is: nothing changes
    CHECK(pool.seq_len(branch) == 3);
    pool.truncate(branch, 0);
    CHECK(pool.block_table(branch).empty());

    // create_sequence from blocks: shares them, last one in part
    const std::vector<BlockId> blocks(pool.block_table(parent).begin(), pool.block_table(parent).begin() + 2);
    const SequenceId made = pool.create_sequence(blocks, 7);
    CHECK(pool.seq_len(made) == 7);
    CHECK(pool.ref_count(blocks[0]) >= 2);
    auto ms = pool.sequence(made);
    std::vector<RowModel> made_models = models;
    for (auto& m : made_models) m.truncate(7);
    for (std::size_t l = 0; l < 3; ++l) CHECK(paged_mismatches(ms, l, made_models[l], 4) == 0);
    append_all_layers(ms, made_models, 3, 34);
    for (std::size_t l = 0; l < 3; ++l) {
        CHECK(paged_mismatches(ps, l, models[l], 4) == 0);
        CHECK(paged_mismatches(ms, l, made_models[l], 4) == 0);
    }
    CHECK(pool.seq_len(pool.create_sequence({}, 0)) == 0);
    CHECK_THROWS_AS(pool.create_sequence(blocks, 9), ShapeError);   // 9 positions need 3 blocks
    CHECK_THROWS_AS(pool.create_sequence(blocks, 4), ShapeError);   // 4 need 1
    const std::vector<BlockId> out_of_range{BlockId{20}};
    CHECK_THROWS_AS(pool.create_sequence(out_of_range, 1), IndexError);
    BlockId free_block = 0;
    while (pool.ref_count(free_block) != 0) ++free_block;
    const std::vector<BlockId> free_one{free_block};
    const std::size_t sequences = pool.num_sequences();
    CHECK_THROWS_AS(pool.create_sequence(free_one, 1), IndexError);
    CHECK(pool.num_sequences() == sequences);  // a failed create leaves no sequence behind
}

TEMPLATE_TEST_CASE("PagedKVPool: an exhausted pool throws CapacityError and changes nothing", "[paged]", float, fp16,
                   bf16) {
    PagedKVPool<TestType> pool(kShapes, 3, 4);
    const SequenceId a = pool.create_sequence();
    auto sa = pool.sequence(a);
    std::vector<RowModel> models(3);
    append_all_layers(sa, models, 10, 41);  // 3 blocks: the pool is full
    CHECK(pool.free_blocks() == 0);
    CHECK(pool.appendable(a) == 2);
    CHECK(sa.capacity() == 12);
    append_all_layers(sa, models, 2, 42);  // fills the last block
    CHECK(pool.appendable(a) == 0);
    CHECK(pool.blocks_needed(a, 1) == 1);
    const std::vector<BlockId> table(pool.block_table(a).begin(), pool.block_table(a).end());
    const std::vector<float> k(8, 1.0f);  // one token of layer 0 (2 heads of 4)
    try {
        sa.append(0, 0, k, k, 1);
        FAIL("no exception");
    } catch (const CapacityError& e) {
        CHECK_THAT(e.what(), Catch::Contains("needs 1 free blocks") && Catch::Contains("0 of 3 are free"));
    }
    CHECK(pool.seq_len(a, 0) == 12);
    CHECK(std::vector<BlockId>(pool.block_table(a).begin(), pool.block_table(a).end()) == table);
    for (std::size_t l = 0; l < 3; ++l) CHECK(paged_mismatches(sa, l, models[l], 4) == 0);

    // a fork cannot copy its shared partial block when nothing is free; a multi-block append that does not
    // fit fails as a whole
    pool.truncate(a, 10);  // still 3 blocks, the last one in part
    const SequenceId b = pool.fork(a);
    CHECK(pool.appendable(b) == 0);
    CHECK_THROWS_AS(pool.sequence(b).append(1, 0, std::vector<float>(7), std::vector<float>(7), 1), CapacityError);
    CHECK(pool.seq_len(b, 1) == 10);
    pool.free_sequence(b);
    pool.truncate(a, 3);  // frees 2 blocks
    CHECK(pool.free_blocks() == 2);
    CHECK(pool.appendable(a) == 9);
    CHECK(pool.blocks_needed(a, 10) == 3);
    std::vector<RowModel> before = models;
    for (auto& m : before) m.truncate(3);
    CHECK_THROWS_AS(sa.append(0, 0, std::vector<float>(10 * 8), std::vector<float>(10 * 8), 10), CapacityError);
    CHECK(pool.free_blocks() == 2);
    CHECK(pool.block_table(a).size() == 1);
    for (std::size_t l = 0; l < 3; ++l) CHECK(paged_mismatches(sa, l, before[l], 4) == 0);
    // the shared case of appendable: with one free block, a fork's copy gives block_size - fill positions
    pool.truncate(a, 2);
    const SequenceId c = pool.fork(a);
    CHECK(pool.appendable(c) == 2 + 4);  // copy of block 0 (2 free rows) + one more free block
}

TEMPLATE_TEST_CASE("PagedKVPool: errors for stale ids, bad layers, heads, rows and sizes", "[paged]", float, fp16,
                   bf16) {
    PagedKVPool<TestType> pool(kShapes, 8, 4);
    const SequenceId a = pool.create_sequence();
    auto sa = pool.sequence(a);
    const std::vector<float> k8(8), k7(7), k16(16);
    CHECK_THROWS_AS(sa.append(0, 0, k16, k8, 1), ShapeError);
    CHECK_THROWS_AS(sa.append(0, 0, k8, k16, 1), ShapeError);
    CHECK_THROWS_AS(sa.append(3, 0, k8, k8, 1), IndexError);
    CHECK_THROWS_AS(sa.append(0, 1, k8, k8, 1), IndexError);
    CHECK_THROWS_AS(sa.chunks(0, 0, 2), IndexError);
    CHECK_THROWS_AS(sa.chunks(3, 0, 0), IndexError);
    CHECK_THROWS_AS(sa.chunks(0, 1, 0), IndexError);
    CHECK_THROWS_AS(sa.seq_len(0, 1), IndexError);
    CHECK_THROWS_AS(sa.seq_len(3, 0), IndexError);
    CHECK(pool.used_blocks() == 0);
    sa.append(1, 0, k7, k7, 1);

    CHECK_THROWS_AS(pool.ref_count(8), IndexError);
    CHECK_THROWS_AS(pool.retain(8), IndexError);
    CHECK_THROWS_AS(pool.release(8), IndexError);
    CHECK_THROWS_AS(pool.retain(5), IndexError);   // free block
    CHECK_THROWS_AS(pool.release(5), IndexError);
    const BlockId used = pool.block_table(a)[0];
    pool.retain(used);
    CHECK(pool.ref_count(used) == 2);
    pool.release(used);
    CHECK(pool.ref_count(used) == 1);

    pool.free_sequence(a);
    CHECK_FALSE(pool.contains(a));
    CHECK_THROWS_AS(pool.free_sequence(a), IndexError);
    CHECK_THROWS_AS(pool.sequence(a), IndexError);
    CHECK_THROWS_AS(sa.append(1, 0, k7, k7, 1), IndexError);  // the old view
    CHECK_THROWS_AS(sa.seq_len(0, 0), IndexError);
    CHECK_THROWS_AS(pool.fork(a), IndexError);
    CHECK_THROWS_AS(pool.fork(a, 0), IndexError);
    CHECK_THROWS_AS(pool.truncate(a, 0), IndexError);
    CHECK_THROWS_AS(pool.seq_len(a), IndexError);
    CHECK_THROWS_AS(pool.block_table(a), IndexError);
    CHECK_THROWS_AS(pool.blocks_needed(a, 1), IndexError);
    CHECK_THROWS_AS(pool.appendable(a), IndexError);
    CHECK_THROWS_AS(pool.chunks(a, 0, 0), IndexError);
    CHECK_THROWS_AS(pool.sequence(SequenceId{99, 0}), IndexError);
    try {
        pool.seq_len(a);
        FAIL("no exception");
    } catch (const IndexError& e) {
        CHECK_THAT(e.what(), Catch::Contains("sequence 0 (generation 0)"));
    }
    // the slot is reused under a new generation; the old id still does not resolve
    const SequenceId b = pool.create_sequence();
    CHECK(b.index == a.index);
    CHECK(b.generation != a.generation);
    CHECK(pool.contains(b));
    CHECK_FALSE(pool.contains(a));
    CHECK(pool.seq_len(b) == 0);
    CHECK_THROWS_AS(pool.seq_len(b, 3), IndexError);
}

namespace {

/// Fills a paged sequence and a MultiLayerKVCache with the same random K/V, in the given chunk sizes.
template <class T>
void fill_both(PagedSequence<T>& paged, MultiLayerKVCache<T>& flat, const std::vector<std::size_t>& pieces,
               std::uint64_t seed) {
    for (std::size_t l = 0; l < flat.num_layers(); ++l) {
        const std::size_t width = flat.num_kv_heads(l) * flat.head_dim(l);
        for (std::size_t i = 0; i < pieces.size(); ++i) {
            const auto k = testing::random_uniform(pieces[i] * width, seed + 17 * i + l, -2.0f, 2.0f);
            const auto v = testing::random_uniform(pieces[i] * width, seed + 31 * i + l + 7, -2.0f, 2.0f);
            paged.append(l, 0, k, v, pieces[i]);
            flat.append(l, 0, k, v, pieces[i]);
        }
    }
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

TEMPLATE_TEST_CASE("attention over a paged sequence equals attention over a contiguous cache, bit for bit",
                   "[paged][attention]", float, fp16, bf16) {
    // GQA: 8 query heads over 2 kv heads of 64; contexts that cross tiles (64) and segments (1024)
    const std::vector<LayerShape> shapes{{2, 64}, {1, 32}};
    for (std::size_t block_size : {16u, 7u}) {
        for (std::size_t context : {1u, 15u, 64u, 100u, 1100u}) {
            PagedKVPool<TestType> pool(shapes, PagedKVPool<TestType>::blocks_for(context, block_size) + 1, block_size);
            auto paged = pool.sequence(pool.create_sequence());
            MultiLayerKVCache<TestType> flat(shapes, 1, context);
            std::vector<std::size_t> pieces{context / 3, context - context / 3};
            fill_both(paged, flat, pieces, context + block_size);
            for (std::size_t l = 0; l < 2; ++l) {
                const std::size_t d = shapes[l].head_dim, q_heads = 4 * shapes[l].kv_heads;
                for (std::size_t n : {std::size_t{1}, std::min<std::size_t>(context, 37)}) {
                    INFO("block " << block_size << " context " << context << " layer " << l << " queries " << n);
                    const auto q = testing::random_uniform(n * q_heads * d, context * 3 + n, -1.0f, 1.0f);
                    std::vector<float> a(q.size()), b(q.size()), ra(q.size()), rb(q.size());
                    for (int threads : {1, 2}) {
                        attention(paged, l, 0, q, n, q_heads, a, {.threads = threads});
                        attention(flat, l, 0, q, n, q_heads, b, {.threads = threads});
                        CHECK(same_bits(a, b));
                    }
                    attention(paged, l, 0, q, n, q_heads, a, {.window = 20});
                    attention(flat, l, 0, q, n, q_heads, b, {.window = 20});
                    CHECK(same_bits(a, b));
                    attention_reference(paged, l, 0, q, n, q_heads, ra);
                    attention_reference(flat, l, 0, q, n, q_heads, rb);
                    CHECK(same_bits(ra, rb));
                    attention(paged, l, 0, q, n, q_heads, a, {.causal = false});
                    attention(flat, l, 0, q, n, q_heads, b, {.causal = false});
                    CHECK(same_bits(a, b));
                }
            }
        }
    }
}

TEMPLATE_TEST_CASE("attention over runs of consecutive blocks broken anywhere equals the contiguous cache",
                   "[paged][attention]", float, q8_0) {
    // Attention reads chunks that continue each other in memory as one run. Two sequences grown by turns in
    // pieces of uneven length give runs of one, two or more consecutive blocks, broken at every offset within a
    // 64-position tile, so tiles go through the stride, through gathered rows, and across run boundaries.
    const std::vector<LayerShape> shapes{{2, 64}};
    for (std::size_t block_size : {16u, 7u}) {
        const std::size_t context = 300;
        PagedKVPool<TestType> pool(shapes, 2 * PagedKVPool<TestType>::blocks_for(context, block_size) + 2, block_size);
        const SequenceId a_id = pool.create_sequence(), b_id = pool.create_sequence();
        auto paged = pool.sequence(a_id);
        MultiLayerKVCache<TestType> flat(shapes, 1, context);
        const std::size_t width = 2 * 64;
        std::size_t held = 0, turn = 0;
        while (held < context) {
            const std::size_t piece = std::min(context - held, std::size_t{5 + (turn * 23) % 41});
            const auto k = testing::random_uniform(piece * width, 100 + turn, -2.0f, 2.0f);
            const auto v = testing::random_uniform(piece * width, 200 + turn, -2.0f, 2.0f);
            paged.append(0, 0, k, v, piece);
            flat.append(0, 0, k, v, piece);
            const auto other = testing::random_uniform((turn % 3) * block_size * width, 300 + turn, -1.0f, 1.0f);
            pool.append(b_id, 0, other, other, (turn % 3) * block_size);  // takes the next ids, breaking the run
            held += piece;
            ++turn;
        }
        std::size_t runs = 1;
        const auto chunks = pool.chunks(a_id, 0, 0);
        for (std::size_t i = 1; i < chunks.size(); ++i) {
            runs += chunks[i].keys != chunks[i - 1].keys + chunks[i - 1].length * storage_units<TestType>(64);
        }
        INFO("block " << block_size << ": " << chunks.size() << " blocks in " << runs << " runs");
        REQUIRE(runs > 3);
        REQUIRE(runs < chunks.size());  // some runs are longer than a block
        for (const ScorePrecision scores : {ScorePrecision::f32, ScorePrecision::int8}) {
            for (std::size_t n : {std::size_t{1}, std::size_t{37}}) {
                const auto q = testing::random_uniform(n * 6 * 64, 7 * n + block_size, -1.0f, 1.0f);
                std::vector<float> a(q.size()), b(q.size());
                attention(paged, 0, 0, q, n, 6, a, {.scores = scores});
                attention(flat, 0, 0, q, n, 6, b, {.scores = scores});
                CHECK(same_bits(a, b));
            }
        }
    }
}

TEST_CASE("attention over a fork reads the shared blocks and its own copy", "[paged][attention]") {
    const std::vector<LayerShape> shapes{{2, 32}};
    PagedKVPool<float> pool(shapes, 16, 16);
    const SequenceId parent = pool.create_sequence();
    auto ps = pool.sequence(parent);
    MultiLayerKVCache<float> flat(shapes, 1, 64);
    fill_both(ps, flat, {40}, 5);
    const SequenceId child = pool.fork(parent);
    auto cs = pool.sequence(child);
    auto flat_child = flat.copy();
    fill_both(cs, flat_child, {9}, 6);  // copies the half block at 32..48
    const auto q = testing::random_uniform(3 * 4 * 32, 7, -1.0f, 1.0f);
    std::vector<float> a(q.size()), b(q.size());
    attention(cs, 0, 0, q, 3, 4, a);
    attention(flat_child, 0, 0, q, 3, 4, b);
    CHECK(same_bits(a, b));
    attention(ps, 0, 0, q, 3, 4, a);
    attention(flat, 0, 0, q, 3, 4, b);
    CHECK(same_bits(a, b));
}
