// kvcache::server::Engine: the server's paged pool, prefix cache and scheduler for the K/V element type chosen
// at start (--cache-type f32/f16/bf16/q8_0/q4_0/q4_0h), behind the scheduler calls the server makes — so the rest of
// the server is written once for every element type.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "kvcache/cache/paged_kv_cache.hpp"
#include "kvcache/cache/prefix_cache.hpp"
#include "kvcache/model/cache_options.hpp"
#include "kvcache/model/scheduler.hpp"

namespace kvcache::server {

class Engine {
private:  // first: the members below deduce their return types from visit
    template <class T>
    struct Stack {
        // Destroyed in reverse: the scheduler (it frees its kept sequences), then the prefix cache, then the pool.
        std::unique_ptr<PagedKVPool<T>> pool;
        std::unique_ptr<PrefixCache<T>> prefixes;
        std::unique_ptr<BasicScheduler<T>> scheduler;
    };

    template <class F>
    decltype(auto) visit(F&& f) const {
        return std::visit([&](const auto& st) -> decltype(auto) { return f(*st->scheduler); }, stack_);
    }

    CacheElement element_;
    std::variant<std::unique_ptr<Stack<float>>, std::unique_ptr<Stack<fp16>>, std::unique_ptr<Stack<bf16>>,
                 std::unique_ptr<Stack<q8_0>>, std::unique_ptr<Stack<q4_0>>,
                 std::unique_ptr<Stack<q4_0h>>>
        stack_;

public:
    /// A pool of `blocks` blocks of T = `element` for the model's layers, a prefix cache of `prefix_bytes` over
    /// it, and a scheduler. Throws what they throw (ConfigError for bad options, ShapeError, ...).
    Engine(Decoder& model, const Tokenizer& tokenizer, CacheElement element, std::size_t blocks,
           std::size_t prefix_bytes, SchedulerOptions options)
        : element_(element) {
        with_cache_elements(element, element, [&]<class K, class V>(std::type_identity<K>, std::type_identity<V>) {
            auto stack = std::make_unique<Stack<K>>();
            stack->pool = std::make_unique<PagedKVPool<K>>(model.cache_layers(), blocks);
            stack->prefixes = std::make_unique<PrefixCache<K>>(*stack->pool, prefix_bytes);
            stack->scheduler =
                std::make_unique<BasicScheduler<K>>(model, tokenizer, *stack->pool, stack->prefixes.get(), options);
            stack_ = std::move(stack);
        });
    }

    /// Bytes of one pool block (16 positions, K and V of every layer) for `element`: to size the pool.
    static std::size_t block_bytes_for(CacheElement element, std::span<const LayerShape> layers) {
        return with_cache_elements(element, element, [&]<class K, class V>(std::type_identity<K>, std::type_identity<V>) {
            return PagedKVPool<K>::block_bytes_for(layers);
        });
    }

    CacheElement element() const { return element_; }
    std::string_view element_name() const { return cache_element_name(element_); }

    // The scheduler's calls, whatever the element type (see kvcache/model/scheduler.hpp).
    RequestId submit(Request r) { return visit([&](auto& s) { return s.submit(std::move(r)); }); }
    bool cancel(RequestId id) { return visit([&](auto& s) { return s.cancel(id); }); }
    void start() { visit([](auto& s) { s.start(); }); }
    void stop() { visit([](auto& s) { s.stop(); }); }
    SchedulerStats stats() const { return visit([](auto& s) { return s.stats(); }); }
    SequenceId fork(SequenceId from, std::size_t position) { return visit([&](auto& s) { return s.fork(from, position); }); }
    void truncate(SequenceId id, std::size_t n) { visit([&](auto& s) { s.truncate(id, n); }); }
    void release(SequenceId id, CachePrefix cache_prefix = CachePrefix::yes) {
        visit([&](auto& s) { s.release(id, cache_prefix); });
    }
    std::vector<std::int32_t> tokens(SequenceId id) const { return visit([&](auto& s) { return s.tokens(id); }); }
    void adopt(SequenceId id, std::vector<std::int32_t> t) { visit([&](auto& s) { s.adopt(id, std::move(t)); }); }
    bool is_kept(SequenceId id) const { return visit([&](auto& s) { return s.is_kept(id); }); }
    /// f(pool, prefix_cache) under the engine lock; f must accept the pool of every element type (a generic
    /// lambda) and return the same type for all.
    template <class F>
    decltype(auto) exclusive(F&& f) {
        return visit([&](auto& s) -> decltype(auto) { return s.exclusive(f); });
    }
    std::size_t block_size() const { return std::visit([](const auto& st) { return st->pool->block_size(); }, stack_); }
    std::size_t block_bytes() const { return std::visit([](const auto& st) { return st->pool->block_bytes(); }, stack_); }

};

}  // namespace kvcache::server
