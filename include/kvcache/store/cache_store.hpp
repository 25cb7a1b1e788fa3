// CacheStore: a thread-safe keyed store of immutable shared values (KV caches or anything else) under an
// item and a byte limit, with per-entry time-to-live, least-recently-used eviction and statistics.
#pragma once

#include <chrono>
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "kvcache/error.hpp"

namespace kvcache {

/// Counters of a CacheStore since construction. They add up: the live entries number
/// insertions - deletions - expirations - evictions, and every get() is one hit or one miss.
struct CacheStoreStats {
    std::uint64_t hits = 0;          ///< get() found a live entry
    std::uint64_t misses = 0;        ///< get() found nothing (or an expired entry, which it removed)
    std::uint64_t insertions = 0;    ///< set() of a key not in the store
    std::uint64_t replacements = 0;  ///< set() of a key already in the store (the count of entries is unchanged)
    std::uint64_t deletions = 0;     ///< entries removed by erase() or clear()
    std::uint64_t expirations = 0;   ///< entries removed because their time-to-live had passed
    std::uint64_t evictions = 0;     ///< least-recently-used entries removed to stay within the limits
    friend bool operator==(const CacheStoreStats&, const CacheStoreStats&) = default;
};

namespace detail {
/// The byte size of a value when no sizer is given: its bytes_allocated() (a cache's real footprint),
/// else bytes_used(), else sizeof for a trivially copyable value (which owns no other memory).
template <class V>
constexpr bool has_default_size = requires(const V& v) {
    { v.bytes_allocated() } -> std::convertible_to<std::size_t>;
} || requires(const V& v) {
    { v.bytes_used() } -> std::convertible_to<std::size_t>;
} || std::is_trivially_copyable_v<V>;

template <class V>
std::size_t default_size(const V& v) {
    if constexpr (requires { { v.bytes_allocated() } -> std::convertible_to<std::size_t>; }) {
        return static_cast<std::size_t>(v.bytes_allocated());
    } else if constexpr (requires { { v.bytes_used() } -> std::convertible_to<std::size_t>; }) {
        return static_cast<std::size_t>(v.bytes_used());
    } else {
        return sizeof(V);
    }
}
}  // namespace detail

/// A thread-safe map from Key to shared_ptr<const Value>. Readers get shared pointers, so an entry that is
/// evicted, expired or replaced stays valid for whoever still holds it; a value is freed when its last
/// holder lets go (and never while the store's lock is held, so freeing a large cache blocks no one).
///
/// Limits: at most max_items entries and max_bytes bytes (sizes from Options::sizer, measured once at set);
/// a set() that exceeds them evicts least-recently-used entries (get() and set() count as use).
/// Expiry: an entry may have a time-to-live; expired entries are removed when touched (get, set, erase,
/// keys, size, bytes), by sweep(), and every sweep_interval by a background thread if one is asked for.
/// All members may be called concurrently; one mutex guards the store (every operation is O(1) or
/// O(log n) apart from keys() and clear()).
template <class Key, class Value, class Hash = std::hash<Key>, class KeyEqual = std::equal_to<Key>>
class CacheStore {
public:
    using Clock = std::chrono::steady_clock;
    using TimePoint = Clock::time_point;
    using Duration = Clock::duration;
    using ValuePtr = std::shared_ptr<const Value>;

    struct Options {
        std::size_t max_items = std::numeric_limits<std::size_t>::max();
        std::size_t max_bytes = std::numeric_limits<std::size_t>::max();
        /// Time-to-live of entries set without one; none: they live until evicted or erased.
        std::optional<Duration> default_ttl;
        /// > 0: a background thread removes expired entries this often (real time). 0: no thread.
        Duration sweep_interval = Duration::zero();
        /// The time expiry is measured in; Clock::now when empty. Tests inject a fake to skip the waiting.
        std::function<TimePoint()> clock;
        /// Bytes a value takes; when empty, bytes_allocated(), bytes_used() or sizeof (see default_size).
        std::function<std::size_t(const Value&)> sizer;
    };

    explicit CacheStore(Options options = {}) : options_(std::move(options)) {
        if (options_.max_items == 0 || options_.max_bytes == 0) {
            throw ConfigError(fmt::format("CacheStore needs max_items >= 1 and max_bytes >= 1, got {} and {}",
                                          options_.max_items, options_.max_bytes));
        }
        if (options_.default_ttl && *options_.default_ttl <= Duration::zero()) {
            throw ConfigError("CacheStore: default_ttl must be positive");
        }
        if (options_.sweep_interval < Duration::zero()) throw ConfigError("CacheStore: sweep_interval is negative");
        if (!options_.clock) options_.clock = [] { return Clock::now(); };
        if (!options_.sizer) {
            if constexpr (detail::has_default_size<Value>) {
                options_.sizer = [](const Value& v) { return detail::default_size(v); };
            } else {
                throw ConfigError("CacheStore: this value type has no bytes_allocated() or bytes_used(); pass a sizer");
            }
        }
        if (options_.sweep_interval > Duration::zero()) {
            sweeper_ = std::jthread([this](std::stop_token stop) { sweep_loop(stop); });
        }
    }

    /// Stops and joins the sweep thread (it wakes at once, not at its next interval).
    ~CacheStore() {
        if (sweeper_.joinable()) {
            sweeper_.request_stop();
            sweeper_.join();
        }
    }
    CacheStore(const CacheStore&) = delete;
    CacheStore& operator=(const CacheStore&) = delete;

    /// The value under key, or nullptr if there is none or it has expired. A hit makes it most recently used.
    ValuePtr get(const Key& key) {
        std::vector<ValuePtr> released;  // destroyed after the lock is released (declared before it)
        std::lock_guard lock(mutex_);
        const TimePoint now = options_.clock();
        const auto found = index_.find(key);
        if (found == index_.end()) {
            ++stats_.misses;
            return nullptr;
        }
        if (is_expired(*found->second, now)) {
            remove(found->second, stats_.expirations, released);
            ++stats_.misses;
            return nullptr;
        }
        lru_.splice(lru_.begin(), lru_, found->second);
        ++stats_.hits;
        return found->second->value;
    }

    /// Stores value under key (replacing what was there) with the default time-to-live; returns the stored
    /// pointer. Throws CapacityError, changing nothing, if the value alone exceeds max_bytes.
    ValuePtr set(const Key& key, Value value) { return set(key, std::make_shared<const Value>(std::move(value)), options_.default_ttl); }
    /// Same with a time-to-live of its own (std::nullopt: never expires).
    ValuePtr set(const Key& key, Value value, std::optional<Duration> ttl) {
        return set(key, std::make_shared<const Value>(std::move(value)), ttl);
    }
    /// Stores a value someone already shares.
    ValuePtr set(const Key& key, ValuePtr value) { return set(key, std::move(value), options_.default_ttl); }
    ValuePtr set(const Key& key, ValuePtr value, std::optional<Duration> ttl) {
        if (!value) throw ConfigError("CacheStore::set: null value");
        if (ttl && *ttl <= Duration::zero()) throw ConfigError("CacheStore::set: time-to-live must be positive");
        const std::size_t bytes = options_.sizer(*value);  // outside the lock: a sizer may be slow
        if (bytes > options_.max_bytes) {
            throw CapacityError(fmt::format("CacheStore::set: a value of {} bytes exceeds the store's max_bytes {}",
                                            bytes, options_.max_bytes));
        }
        std::vector<ValuePtr> released;
        std::lock_guard lock(mutex_);
        const TimePoint now = options_.clock();
        expire(now, released);  // expired entries go before any live one is evicted
        const std::optional<TimePoint> expires = ttl ? std::optional<TimePoint>(saturating_add(now, *ttl)) : std::nullopt;
        const auto found = index_.find(key);
        if (found != index_.end()) {
            Node& node = *found->second;
            set_expiry(found->second, expires);
            released.push_back(node.value);
            bytes_ = bytes_ - node.bytes + bytes;
            node.value = value;
            node.bytes = bytes;
            lru_.splice(lru_.begin(), lru_, found->second);
            ++stats_.replacements;
        } else {
            lru_.push_front(Node{key, value, bytes, std::nullopt, {}});
            try {  // all or nothing if an allocation fails
                index_.emplace(key, lru_.begin());
                try {
                    set_expiry(lru_.begin(), expires);
                } catch (...) {
                    index_.erase(key);
                    throw;
                }
            } catch (...) {
                lru_.pop_front();
                throw;
            }
            bytes_ += bytes;
            ++stats_.insertions;
        }
        // The new entry is at the front and fits alone, so this stops before reaching it.
        while (lru_.size() > options_.max_items || bytes_ > options_.max_bytes) {
            remove(std::prev(lru_.end()), stats_.evictions, released);
        }
        return value;
    }

    /// Removes key; true if a live entry was there (an expired one counts as an expiration, not a deletion).
    bool erase(const Key& key) {
        std::vector<ValuePtr> released;
        std::lock_guard lock(mutex_);
        const auto found = index_.find(key);
        if (found == index_.end()) return false;
        const bool live = !is_expired(*found->second, options_.clock());
        remove(found->second, live ? stats_.deletions : stats_.expirations, released);
        return live;
    }

    /// Removes every entry (expired ones count as expirations, the others as deletions).
    void clear() {
        std::list<Node> dropped;  // freed after the lock is released, like `released`
        std::vector<ValuePtr> released;
        std::lock_guard lock(mutex_);
        expire(options_.clock(), released);
        stats_.deletions += lru_.size();
        index_.clear();
        expiry_.clear();
        bytes_ = 0;
        dropped.splice(dropped.begin(), lru_);
    }

    /// The live keys, most recently used first.
    std::vector<Key> keys() {
        std::vector<ValuePtr> released;
        std::lock_guard lock(mutex_);
        expire(options_.clock(), released);
        std::vector<Key> out;
        out.reserve(lru_.size());
        for (const Node& node : lru_) out.push_back(node.key);
        return out;
    }

    /// Live entries.
    std::size_t size() {
        std::vector<ValuePtr> released;
        std::lock_guard lock(mutex_);
        expire(options_.clock(), released);
        return lru_.size();
    }

    /// Bytes of the live entries, by the sizer.
    std::size_t bytes() {
        std::vector<ValuePtr> released;
        std::lock_guard lock(mutex_);
        expire(options_.clock(), released);
        return bytes_;
    }

    /// Removes every expired entry now; returns how many.
    std::size_t sweep() {
        std::vector<ValuePtr> released;
        std::lock_guard lock(mutex_);
        return expire(options_.clock(), released);
    }

    CacheStoreStats stats() const {
        std::lock_guard lock(mutex_);
        return stats_;
    }

    const Options& options() const { return options_; }

private:
    struct Node {
        Key key;
        ValuePtr value;
        std::size_t bytes = 0;
        std::optional<TimePoint> expires;
        typename std::multimap<TimePoint, Key>::iterator expiry_entry;
    };
    using NodeIt = typename std::list<Node>::iterator;

    static bool is_expired(const Node& node, TimePoint now) { return node.expires && *node.expires <= now; }

    void set_expiry(NodeIt it, std::optional<TimePoint> expires) {
        typename std::multimap<TimePoint, Key>::iterator entry{};
        if (expires) entry = expiry_.emplace(*expires, it->key);  // the only step that can throw: first
        if (it->expires) expiry_.erase(it->expiry_entry);
        it->expires = expires;
        it->expiry_entry = entry;
    }

    // Unlinks an entry, counting it in `counter`; its value goes to `released` to be freed after unlocking.
    void remove(NodeIt it, std::uint64_t& counter, std::vector<ValuePtr>& released) {
        released.push_back(std::move(it->value));  // may throw (allocation) before anything is unlinked
        if (it->expires) expiry_.erase(it->expiry_entry);
        index_.erase(it->key);
        bytes_ -= it->bytes;
        lru_.erase(it);
        ++counter;
    }

    // Removes the entries whose time has come, earliest first: O(log n) each, nothing for live ones.
    std::size_t expire(TimePoint now, std::vector<ValuePtr>& released) {
        std::size_t removed = 0;
        while (!expiry_.empty() && expiry_.begin()->first <= now) {
            remove(index_.find(expiry_.begin()->second)->second, stats_.expirations, released);
            ++removed;
        }
        return removed;
    }

    /// now + ttl, or the largest time point where that would overflow (a TTL of Duration::max() means "as long
    /// as possible", not an entry that expires at once because the sum wrapped to the past).
    static TimePoint saturating_add(TimePoint now, Duration ttl) {
        if (now.time_since_epoch() > Duration::zero() && ttl > TimePoint::max() - now) return TimePoint::max();
        return now + ttl;
    }

    void sweep_loop(std::stop_token stop) {
        // wait_for adds the interval to the clock's now: Duration::max() would overflow into the past and the
        // thread would spin on a core. A century is "never" for a sweep and leaves ample headroom.
        const Duration interval = std::min<Duration>(options_.sweep_interval, std::chrono::hours(24 * 365 * 100));
        while (!stop.stop_requested()) {
            std::vector<ValuePtr> released;
            {
                std::unique_lock lock(mutex_);
                // Returns early only when stop is requested (the predicate is never true otherwise).
                if (wake_.wait_for(lock, stop, interval, [] { return false; }) || stop.stop_requested()) {
                    return;
                }
                expire(options_.clock(), released);
            }
        }
    }

    Options options_;
    mutable std::mutex mutex_;
    std::condition_variable_any wake_;              // the sweep thread sleeps on it; stop requests wake it
    std::list<Node> lru_;                           // most recently used first
    std::unordered_map<Key, NodeIt, Hash, KeyEqual> index_;
    std::multimap<TimePoint, Key> expiry_;          // entries with a time-to-live, soonest first
    std::size_t bytes_ = 0;
    CacheStoreStats stats_;
    std::jthread sweeper_;  // last: stopped and joined before the members it uses are destroyed
};

}  // namespace kvcache
