// CacheStore: every operation, limits and LRU order, time-to-live on a fake clock, the sweep thread,
// statistics that add up, and mixed concurrent use from several threads (also run under ThreadSanitizer).
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/store/cache_store.hpp"
#include "kvcache/testing/random.hpp"

using namespace kvcache;
using namespace std::chrono_literals;

namespace {

/// A clock that moves only when told to.
struct FakeClock {
    std::atomic<std::int64_t> ns{1'000'000'000};
    std::chrono::steady_clock::time_point now() const {
        return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(ns.load()));
    }
    void advance(std::chrono::nanoseconds d) { ns += d.count(); }
};

using Store = CacheStore<std::string, std::string>;

Store::Options string_options(FakeClock& clock) {
    Store::Options o;
    o.clock = [&clock] { return clock.now(); };
    o.sizer = [](const std::string& s) { return s.size(); };
    return o;
}

/// The invariants every store keeps, whatever happened.
template <class S>
void check_books(S& store) {
    const CacheStoreStats s = store.stats();
    const std::size_t live = store.size();
    // size() may itself expire entries, so read the stats again after it
    const CacheStoreStats after = store.stats();
    CHECK(after.insertions - after.deletions - after.expirations - after.evictions == live);
    CHECK(after.hits == s.hits);
    CHECK(store.keys().size() == live);
}

}  // namespace

namespace Catch {
template <>
struct StringMaker<CacheStoreStats> {
    static std::string convert(const CacheStoreStats& s) {
        return "{hits " + std::to_string(s.hits) + ", misses " + std::to_string(s.misses) + ", insertions " +
               std::to_string(s.insertions) + ", replacements " + std::to_string(s.replacements) + ", deletions " +
               std::to_string(s.deletions) + ", expirations " + std::to_string(s.expirations) + ", evictions " +
               std::to_string(s.evictions) + "}";
    }
};
}  // namespace Catch

TEST_CASE("CacheStore: get, set, replace, erase, clear, keys, size, bytes, stats", "[cache_store]") {
    FakeClock clock;
    Store store(string_options(clock));
    CHECK(store.get("a") == nullptr);
    const auto a = store.set("a", std::string("alpha"));
    REQUIRE(a);
    CHECK(*a == "alpha");
    store.set("b", std::string("be"));
    CHECK(*store.get("a") == "alpha");
    CHECK(store.get("a") == a);  // the same shared value, not a copy
    CHECK(store.size() == 2);
    CHECK(store.bytes() == 7);
    CHECK(store.keys() == std::vector<std::string>{"a", "b"});  // a was used last

    // replacing keeps the count, updates the bytes, and readers of the old value keep it
    const auto old = store.get("b");
    store.set("b", std::string("beta!"));
    CHECK(*old == "be");
    CHECK(*store.get("b") == "beta!");
    CHECK(store.bytes() == 10);
    CHECK(store.size() == 2);

    // a shared pointer can be stored as is, with or without a time-to-live of its own
    auto shared = std::make_shared<const std::string>("gamma");
    CHECK(store.set("c", shared) == shared);
    CHECK(store.get("c") == shared);
    CHECK(store.set("t", shared, 1s) == shared);
    clock.advance(1s);
    CHECK(store.get("t") == nullptr);  // expired: a miss, counted as an expiration
    CHECK(store.options().max_items == std::numeric_limits<std::size_t>::max());

    CHECK(store.erase("a"));
    CHECK_FALSE(store.erase("a"));
    CHECK_FALSE(store.erase("zzz"));
    CHECK(store.get("a") == nullptr);
    CHECK(store.size() == 2);
    CHECK(store.bytes() == 10);

    CacheStoreStats expected;
    expected.hits = 5;
    expected.misses = 3;
    expected.insertions = 4;
    expected.expirations = 1;
    expected.replacements = 1;
    expected.deletions = 1;
    CHECK(store.stats() == expected);

    store.clear();
    CHECK(store.size() == 0);
    CHECK(store.bytes() == 0);
    CHECK(store.keys().empty());
    CHECK(store.get("b") == nullptr);
    CHECK(*shared == "gamma");  // cleared, but still ours
    expected.deletions = 3;
    expected.misses = 4;
    CHECK(store.stats() == expected);
    check_books(store);
}

TEST_CASE("CacheStore: least-recently-used eviction under the item limit", "[cache_store]") {
    FakeClock clock;
    auto options = string_options(clock);
    options.max_items = 3;
    Store store(options);
    store.set("a", std::string("1"));
    store.set("b", std::string("2"));
    store.set("c", std::string("3"));
    store.get("a");                     // order now a, c, b
    store.set("d", std::string("4"));   // evicts b
    CHECK(store.keys() == std::vector<std::string>{"d", "a", "c"});
    store.set("c", std::string("33"));  // a replacement is a use: order c, d, a
    store.set("e", std::string("5"));   // evicts a
    CHECK(store.keys() == std::vector<std::string>{"e", "c", "d"});
    CHECK(store.get("b") == nullptr);
    CHECK(store.get("a") == nullptr);
    CHECK(store.stats().evictions == 2);
    check_books(store);
}

TEST_CASE("CacheStore: the byte limit evicts as many as needed; a value too large is refused", "[cache_store]") {
    FakeClock clock;
    auto options = string_options(clock);
    options.max_bytes = 10;
    Store store(options);
    store.set("a", std::string(4, 'a'));
    store.set("b", std::string(4, 'b'));
    store.set("c", std::string(2, 'c'));
    CHECK(store.bytes() == 10);
    store.set("d", std::string(9, 'd'));  // must evict a, b and c (LRU order) to fit
    CHECK(store.keys() == std::vector<std::string>{"d"});
    CHECK(store.stats().evictions == 3);
    store.set("e", std::string(1, 'e'));
    CHECK(store.bytes() == 10);

    CHECK_THROWS_WITH(store.set("e", std::string(11, 'x')),
                      "CacheStore::set: a value of 11 bytes exceeds the store's max_bytes 10");
    CHECK(*store.get("e") == "e");  // unchanged
    CHECK(store.size() == 2);
    check_books(store);
}

TEST_CASE("CacheStore: time-to-live on a fake clock, expiry on access", "[cache_store]") {
    FakeClock clock;
    auto options = string_options(clock);
    options.default_ttl = 10s;
    Store store(options);
    store.set("default", std::string("d"));           // 10 s
    store.set("short", std::string("s"), 2s);         // 2 s
    store.set("forever", std::string("f"), std::nullopt);
    clock.advance(1s);
    CHECK(store.get("short"));
    clock.advance(1s);  // exactly at its expiry: expired
    CHECK(store.get("short") == nullptr);
    CHECK(store.stats().expirations == 1);
    CHECK(store.stats().misses == 1);
    CHECK(store.keys() == std::vector<std::string>{"forever", "default"});

    // a replacement gets a new time-to-live
    clock.advance(7s);  // t = 9 s
    store.set("default", std::string("d2"));  // now expires at 19 s
    clock.advance(5s);  // t = 14 s
    CHECK(*store.get("default") == "d2");
    // and removing the time-to-live by replacing works too
    store.set("default", std::string("d3"), std::nullopt);
    clock.advance(1h);
    CHECK(store.size() == 2);
    CHECK(*store.get("default") == "d3");

    // size(), bytes(), keys() and erase() all see expiry
    store.set("x", std::string("xx"), 1s);
    store.set("y", std::string("yyy"), 1s);
    store.set("z", std::string("zzzz"), 1s);
    CHECK(store.bytes() == 1 + 2 + 2 + 3 + 4);
    clock.advance(1s);
    CHECK(store.bytes() == 3);  // "f" and "d3"
    CHECK(store.stats().expirations == 4);
    store.set("w", std::string("w"), 1s);
    clock.advance(2s);
    CHECK_FALSE(store.erase("w"));  // expired, so it was not a deletion
    CHECK(store.stats().expirations == 5);
    CHECK(store.stats().deletions == 0);
    check_books(store);
}

TEST_CASE("CacheStore: expired entries go before live ones are evicted", "[cache_store]") {
    FakeClock clock;
    auto options = string_options(clock);
    options.max_items = 2;
    Store store(options);
    store.set("old", std::string("o"));
    store.set("mortal", std::string("m"), 5s);
    store.get("mortal");  // most recently used, but about to expire
    clock.advance(5s);
    store.set("new", std::string("n"));
    CHECK(store.keys() == std::vector<std::string>{"new", "old"});
    CHECK(store.stats().expirations == 1);
    CHECK(store.stats().evictions == 0);
}

TEST_CASE("CacheStore: sweep() and the background sweep thread", "[cache_store]") {
    FakeClock clock;
    SECTION("sweep() on demand") {
        Store store(string_options(clock));
        store.set("a", std::string("a"), 1s);
        store.set("b", std::string("b"), 3s);
        store.set("c", std::string("c"));
        CHECK(store.sweep() == 0);
        clock.advance(2s);
        CHECK(store.sweep() == 1);
        clock.advance(2s);
        CHECK(store.sweep() == 1);
        CHECK(store.stats().expirations == 2);
        CHECK(store.stats().hits + store.stats().misses == 0);  // sweeping is not an access
    }
    SECTION("the thread expires entries without anyone touching the store") {
        auto options = string_options(clock);
        options.sweep_interval = 1ms;
        Store store(options);
        store.set("a", std::string("a"), 10s);
        store.set("b", std::string("b"));
        clock.advance(11s);
        const auto deadline = std::chrono::steady_clock::now() + 10s;
        while (store.stats().expirations == 0 && std::chrono::steady_clock::now() < deadline) {
            std::this_thread::sleep_for(1ms);
        }
        CHECK(store.stats().expirations == 1);  // stats() itself never expires anything
        CHECK(store.keys() == std::vector<std::string>{"b"});
    }
    SECTION("the destructor stops a sleeping sweep thread at once") {
        auto options = string_options(clock);
        options.sweep_interval = 1h;
        const auto start = std::chrono::steady_clock::now();
        {
            Store store(options);
            store.set("a", std::string("a"));
            std::this_thread::sleep_for(5ms);  // let the thread reach its wait
        }
        CHECK(std::chrono::steady_clock::now() - start < 5s);
    }
}

TEST_CASE("CacheStore: options and argument errors", "[cache_store]") {
    FakeClock clock;
    auto options = string_options(clock);
    options.max_items = 0;
    CHECK_THROWS_AS(Store(options), ConfigError);
    options = string_options(clock);
    options.max_bytes = 0;
    CHECK_THROWS_AS(Store(options), ConfigError);
    options = string_options(clock);
    options.default_ttl = 0s;
    CHECK_THROWS_AS(Store(options), ConfigError);
    options = string_options(clock);
    options.sweep_interval = -1s;
    CHECK_THROWS_AS(Store(options), ConfigError);
    options = string_options(clock);
    options.sizer = nullptr;  // std::string has no size member: a sizer is required
    CHECK_THROWS_WITH(Store(options), Catch::Contains("pass a sizer"));

    Store store(string_options(clock));
    CHECK_THROWS_AS(store.set("k", Store::ValuePtr{}), ConfigError);
    CHECK_THROWS_AS(store.set("k", std::string("v"), -1s), ConfigError);
    CHECK_THROWS_AS(store.set("k", std::string("v"), 0s), ConfigError);
    CHECK(store.size() == 0);
    CHECK(store.stats() == CacheStoreStats{});
}

TEST_CASE("CacheStore: KV caches sized by bytes_allocated(), and trivially copyable values by sizeof",
          "[cache_store]") {
    CacheStore<int, MultiLayerKVCache<float>>::Options options;
    options.max_bytes = 3 * MultiLayerKVCache<float>::bytes_for(std::vector<LayerShape>(2, LayerShape{2, 8}), 1, 16);
    CacheStore<int, MultiLayerKVCache<float>> caches(options);
    for (int i = 0; i < 4; ++i) {
        MultiLayerKVCache<float> cache(CacheShape{2, 2, 8}, 1, 16);
        const auto k = testing::random_uniform(16, static_cast<std::uint64_t>(i));
        cache.append(0, 0, k, k, 1);
        caches.set(i, std::move(cache));
    }
    CHECK(caches.size() == 3);
    CHECK(caches.bytes() == 3 * 2 * 2 * 1 * 2 * 16 * 8 * sizeof(float));
    CHECK(caches.get(0) == nullptr);
    const auto held = caches.get(1);
    REQUIRE(held);
    caches.erase(1);
    CHECK(held->seq_len(0) == 1);  // erased from the store, alive for its reader

    CacheStore<int, double>::Options number_options;
    number_options.max_bytes = 2 * sizeof(double);
    CacheStore<int, double> numbers(number_options);
    numbers.set(1, 1.0);
    numbers.set(2, 2.0);
    numbers.set(3, 3.0);
    CHECK(numbers.keys() == std::vector<int>{3, 2});
}

TEST_CASE("CacheStore: mixed concurrent set/get/erase loses nothing and the statistics add up", "[cache_store]") {
    // Each value carries its key and writer so a torn or misplaced value would show. Shared keys see
    // contention; each thread's private keys (never erased, never evicted) must end with its last write.
    struct Value {
        std::string key;
        int writer = 0;
        int seq = 0;
        std::size_t bytes_used() const { return 64; }
    };
    using S = CacheStore<std::string, Value>;
    FakeClock clock;
    const int threads = 4, ops = 50000, shared_keys = 32;

    for (const bool limited : {false, true}) {
        S::Options options;
        options.clock = [&clock] { return clock.now(); };
        options.sweep_interval = 1ms;
        if (limited) options.max_items = 64;  // far fewer than the 432 keys: evictions all the time
        S store(options);
        std::atomic<std::uint64_t> gets{0}, sets{0}, erased{0}, bad{0};
        std::vector<std::vector<int>> last_write(threads, std::vector<int>(100, -1));  // per thread, per own key
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t) {
            pool.emplace_back([&, t] {
                testing::Rng rng(static_cast<std::uint64_t>(t) + (limited ? 100 : 0));
                std::vector<int>& last = last_write[static_cast<std::size_t>(t)];
                for (int i = 0; i < ops; ++i) {
                    const std::uint64_t r = rng.next_u64();
                    const std::string key = "shared" + std::to_string(r % shared_keys);
                    const int k = i % 100;
                    const std::string own = "own" + std::to_string(t) + "_" + std::to_string(k);
                    switch ((r >> 8) % 8) {
                        case 0:
                        case 1:
                        case 2: {
                            ++gets;
                            const auto v = store.get(key);
                            if (v && v->key != key) ++bad;
                            break;
                        }
                        case 3:
                            ++sets;
                            store.set(key, Value{key, t, i});
                            break;
                        case 4:
                            ++sets;
                            store.set(key, Value{key, t, i}, std::chrono::milliseconds((r >> 20) % 50 + 1));
                            break;
                        case 5:
                            erased += store.erase(key) ? 1 : 0;
                            break;
                        case 6:
                            ++sets;
                            store.set(own, Value{own, t, i});
                            last[static_cast<std::size_t>(k)] = i;
                            break;
                        default: {  // no one else writes this thread's keys: a read sees its last write
                            if (t == 0) clock.advance(1ms);  // time passes while the others work
                            (void)store.keys();
                            ++gets;
                            const auto v = store.get(own);
                            const int expect = last[static_cast<std::size_t>(k)];
                            if (v && (v->key != own || v->seq != expect)) ++bad;
                            if (!v && expect >= 0 && !limited) ++bad;  // lost without a limit to evict it
                        }
                    }
                }
            });
        }
        for (auto& th : pool) th.join();

        CHECK(bad == 0);
        const CacheStoreStats s = store.stats();
        CHECK(s.hits + s.misses == gets);
        CHECK(s.insertions + s.replacements == sets);
        CHECK(s.deletions == erased);
        CHECK(s.insertions - s.deletions - s.expirations - s.evictions == store.size());
        CHECK(store.size() <= options.max_items);
        CHECK(s.expirations > 0);
        CHECK((s.evictions > 0) == limited);
        // private keys hold their thread's last write (all of them when nothing could be evicted)
        std::size_t found = 0;
        for (int t = 0; t < threads; ++t) {
            for (int k = 0; k < 100; ++k) {
                const auto v = store.get("own" + std::to_string(t) + "_" + std::to_string(k));
                if (!v) continue;
                ++found;
                CHECK(v->writer == t);
                CHECK(v->seq == last_write[static_cast<std::size_t>(t)][static_cast<std::size_t>(k)]);
            }
        }
        if (!limited) CHECK(found == static_cast<std::size_t>(threads) * 100);
        check_books(store);
    }
}

TEST_CASE("CacheStore: a time-to-live of Duration::max() saturates instead of expiring at once", "[cache_store][issue9]") {
    FakeClock clock;
    auto options = string_options(clock);
    options.default_ttl = Store::Duration::max();
    Store store(options);
    store.set("default", std::string("d"));
    store.set("explicit", std::string("e"), Store::Duration::max());
    store.set("almost", std::string("a"), Store::Duration::max() - 1s);
    CHECK(store.get("default"));  // was nullptr: now + ttl wrapped to the past
    CHECK(store.get("explicit"));
    CHECK(store.get("almost"));
    clock.advance(std::chrono::hours(24 * 365 * 100));
    CHECK(store.size() == 3);
    CHECK(store.stats().expirations == 0);
    // The real clock too (its now() is the machine's uptime).
    Store::Options real;
    real.sizer = [](const std::string& s) { return s.size(); };
    real.default_ttl = Store::Duration::max();
    Store real_store(real);
    real_store.set("k", std::string("v"));
    CHECK(real_store.get("k"));
}

namespace {
/// How many sweeps the background thread runs over `window` with this interval: every sweep reads the store's
/// clock once, from the sweep thread, so the calls made from other threads are not counted.
std::size_t sweeps_in(Store::Duration interval, std::chrono::milliseconds window) {
    std::atomic<std::size_t> sweeps{0};
    const auto test_thread = std::this_thread::get_id();
    Store::Options options;
    options.sizer = [](const std::string& v) { return v.size(); };
    options.clock = [&] {
        if (std::this_thread::get_id() != test_thread) sweeps.fetch_add(1, std::memory_order_relaxed);
        return std::chrono::steady_clock::now();
    };
    options.sweep_interval = interval;
    const auto start = std::chrono::steady_clock::now();
    {
        Store store(options);
        store.set("k", std::string("v"));
        std::this_thread::sleep_for(window);
        CHECK(store.get("k"));
    }  // the destructor wakes and joins the sleeping sweeper at once
    CHECK(std::chrono::steady_clock::now() - start < window + 5s);
    return sweeps.load();
}
}  // namespace

TEST_CASE("CacheStore: a sweep interval of Duration::max() sleeps instead of spinning", "[cache_store][issue9]") {
    // The sweeper waits interval past now(): with Duration::max() that sum overflowed into the past and the thread
    // swept without pause (a core spinning, ~10^5 sweeps in this window). Counting sweeps, not CPU time, makes
    // the failure independent of how busy the machine is.
    CHECK(sweeps_in(Store::Duration::max(), 300ms) == 0);
    CHECK(sweeps_in(std::chrono::hours(24 * 365 * 200), 300ms) == 0);
    // The count is real: a 20 ms interval sweeps about 15 times in the same window (at least once, at most 15).
    const std::size_t regular = sweeps_in(20ms, 300ms);
    CHECK(regular >= 1);
    CHECK(regular <= 15);
}
