// The threading policy and the pool: every task runs exactly once, errors reach the caller as thrown, nested
// and concurrent calls work, and a caller finishes even when every helper is busy elsewhere.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <stdexcept>
#include <thread>
#include <vector>

#include "kvcache/detail/thread_pool.hpp"
#include "kvcache/error.hpp"

using namespace kvcache;
using detail::kMinParallelBytes;

namespace {

/// Runs parallel_for and counts how often each task ran (Catch2's macros are not thread-safe: no CHECK inside).
std::vector<int> run_counts(std::size_t tasks, std::size_t chunk, int threads) {
    std::vector<std::atomic<int>> counts(tasks);
    std::atomic<int> bad_ranges{0};
    detail::parallel_for(tasks, chunk, threads, [&](std::size_t begin, std::size_t end) {
        if (begin >= end || end > tasks) bad_ranges.fetch_add(1);
        for (std::size_t i = begin; i < end && i < tasks; ++i) counts[i].fetch_add(1, std::memory_order_relaxed);
    });
    CHECK(bad_ranges.load() == 0);
    std::vector<int> out;
    for (auto& c : counts) out.push_back(c.load());
    return out;
}

}  // namespace

TEST_CASE("thread_count: the one policy — requested, capped by the hardware, the tasks and the work size") {
    const int hw = detail::hardware_threads();
    REQUIRE(hw >= 1);
    REQUIRE(detail::default_threads() >= 1);
    REQUIRE(detail::default_threads() <= hw);
    CHECK(detail::thread_count(1, 1000, kMinParallelBytes * 100) == 1);
    CHECK(detail::thread_count(2, 1000, kMinParallelBytes * 100) == std::min(2, hw));
    CHECK(detail::thread_count(0, 1000, kMinParallelBytes * 100) == detail::default_threads());
    CHECK(detail::thread_count(-3, 1000, kMinParallelBytes * 100) == detail::default_threads());
    CHECK(detail::thread_count(1000, 1000, kMinParallelBytes * 100) == hw);  // no oversubscription
    CHECK(detail::thread_count(8, 1, kMinParallelBytes * 100) == 1);          // one task: one thread
    CHECK(detail::thread_count(8, 0, kMinParallelBytes * 100) == 1);
    CHECK(detail::thread_count(8, 1000, kMinParallelBytes - 1) == 1);         // too small to pay for a helper
    CHECK(detail::thread_count(8, 2, kMinParallelBytes) == std::min(2, hw));
}

TEST_CASE("parallel_for runs every task exactly once, for any task count, chunk and thread count") {
    for (const int threads : {1, 2, 3, 8}) {
        for (const std::size_t tasks : {0u, 1u, 2u, 7u, 64u, 1001u}) {
            for (const std::size_t chunk : {0u, 1u, 3u, 16u, 5000u}) {
                const auto counts = run_counts(tasks, chunk, threads);
                CHECK(counts == std::vector<int>(tasks, 1));
            }
        }
    }
}

TEST_CASE("parallel_for: a task's exception reaches the caller as the original kvcache::Error") {
    for (const int threads : {1, 2, 4}) {
        std::atomic<int> ran{0};
        try {
            detail::parallel_for(100, 1, threads, [&](std::size_t begin, std::size_t end) {
                for (std::size_t i = begin; i < end; ++i) {
                    ran.fetch_add(1);
                    if (i == 37) throw ShapeError("task 37 has shape [3][4], wanted [4][3]");
                }
            });
            FAIL("no exception");
        } catch (const ShapeError& e) {
            CHECK(std::string(e.what()) == "task 37 has shape [3][4], wanted [4][3]");
        }
        CHECK(ran.load() >= 1);
        CHECK(ran.load() <= 100);
        // The pool is still usable afterwards.
        CHECK(run_counts(500, 1, threads) == std::vector<int>(500, 1));
    }
    // Any type, not only kvcache errors, and from several tasks at once: the caller gets one of them.
    CHECK_THROWS_AS(detail::parallel_for(64, 1, 2, [](std::size_t, std::size_t) { throw std::out_of_range("x"); }),
                    std::out_of_range);
}

TEST_CASE("parallel_for nested inside a task runs inline on that thread and covers its tasks") {
    CHECK_FALSE(detail::inside_parallel_for());
    std::vector<std::atomic<int>> counts(40 * 30);
    std::atomic<int> not_inside{0};
    std::atomic<int> moved_thread{0};
    detail::parallel_for(40, 1, 2, [&](std::size_t begin, std::size_t end) {
        if (!detail::inside_parallel_for()) not_inside.fetch_add(1);
        for (std::size_t outer = begin; outer < end; ++outer) {
            const auto self = std::this_thread::get_id();
            detail::parallel_for(30, 1, 2, [&](std::size_t b, std::size_t e) {
                if (std::this_thread::get_id() != self) moved_thread.fetch_add(1);
                for (std::size_t inner = b; inner < e; ++inner) counts[outer * 30 + inner].fetch_add(1);
            });
        }
    });
    CHECK(not_inside.load() == 0);
    CHECK(moved_thread.load() == 0);
    CHECK_FALSE(detail::inside_parallel_for());
    for (auto& c : counts) CHECK(c.load() == 1);
}

TEST_CASE("parallel_for from many threads at once: every caller gets all its tasks") {
    constexpr int kCallers = 8;
    constexpr std::size_t kTasks = 257;
    std::vector<std::thread> callers;
    std::vector<int> wrong(kCallers, 0);
    for (int c = 0; c < kCallers; ++c) {
        callers.emplace_back([&, c] {
            for (int round = 0; round < 50; ++round) {
                std::vector<std::size_t> out(kTasks, 0);
                detail::parallel_for(kTasks, 1 + std::size_t(c % 3), 2, [&](std::size_t b, std::size_t e) {
                    for (std::size_t i = b; i < e; ++i) out[i] = i * 7 + std::size_t(c);
                });
                for (std::size_t i = 0; i < kTasks; ++i) wrong[c] += out[i] != i * 7 + std::size_t(c);
            }
        });
    }
    for (auto& t : callers) t.join();
    CHECK(wrong == std::vector<int>(kCallers, 0));
}

TEST_CASE("a caller finishes its work alone when every helper is busy: it never waits for one to start") {
    // Thread A's job blocks every thread that takes one of its tasks (the caller A and, if any, the helpers)
    // until the main thread's own parallel_for has finished. If the main thread's call needed a helper, it
    // would wait forever.
    const int hw = detail::hardware_threads();
    std::atomic<bool> main_done{false};
    std::atomic<int> blocked{0};
    std::thread a([&] {
        detail::parallel_for(std::size_t(hw), 1, hw, [&](std::size_t, std::size_t) {
            blocked.fetch_add(1);
            while (!main_done.load()) std::this_thread::yield();
        });
    });
    while (blocked.load() < 1) std::this_thread::yield();  // A's caller is inside; helpers may be too
    std::vector<int> out(1000, 0);
    detail::parallel_for(out.size(), 1, hw, [&](std::size_t b, std::size_t e) {
        for (std::size_t i = b; i < e; ++i) out[i] = int(i);
    });
    main_done.store(true);
    a.join();
    for (std::size_t i = 0; i < out.size(); ++i) CHECK(out[i] == int(i));
}
