// The helper governor: it probes both ways of running a call on schedule, keeps the way that cost less on the
// same work, weights calls by how often they come, is not moved by one outlier, and changes its mind when the
// machine does. Then the pool with the governor: every task still runs once, errors and nesting behave, whichever
// way a call runs.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <stdexcept>
#include <thread>
#include <vector>

#include "kvcache/detail/helper_governor.hpp"
#include "kvcache/detail/thread_pool.hpp"

using namespace kvcache::detail;
using Way = HelperGovernor::Way;

namespace {

const int kBodyA = 0, kBodyB = 0;  // two distinct addresses standing in for two call sites

const ParallelCallKey kKeyA{&kBodyA, 18, 1, 576 * 576};
const ParallelCallKey kKeyB{&kBodyB, 48, 1, 576 * 1536};

/// A caller's clock: each call's cycle (the call and the caller's work up to the next one) costs what the way it
/// ran costs.
struct Caller {
    HelperGovernor g;
    double now = 0;

    HelperGovernor::Decision call(const ParallelCallKey& key, double helpers_cost, double alone_cost) {
        const auto d = g.next(key, now);
        now += d.way == Way::helpers ? helpers_cost : alone_cost;
        return d;
    }

    /// One period of calls; returns the way the steady part of it ran.
    Way run_period(const ParallelCallKey& key, double helpers_cost, double alone_cost) {
        for (std::uint32_t i = 0; i < HelperGovernor::kPeriod; ++i) call(key, helpers_cost, alone_cost);
        return g.steady_way();
    }
};

}  // namespace

TEST_CASE("size classes: a quarter of a power of two wide; matmuls of different shapes differ") {
    CHECK(ParallelCallKey::size_class(0) == 0);
    CHECK(ParallelCallKey::size_class(1) != 0);
    CHECK(ParallelCallKey::size_class(1000) == ParallelCallKey::size_class(1010));    // growing context: same class
    CHECK(ParallelCallKey::size_class(1024) != ParallelCallKey::size_class(1300));    // a quarter apart: not
    CHECK(ParallelCallKey::size_class(576 * 576) != ParallelCallKey::size_class(576 * 1536));
    CHECK(ParallelCallKey::size_class(std::size_t(1) << 40) > ParallelCallKey::size_class(std::size_t(1) << 39));
    CHECK(kKeyA.same_work(ParallelCallKey{&kBodyA, 18, 1, 576 * 576 + 10}));
    CHECK_FALSE(kKeyA.same_work(ParallelCallKey{&kBodyB, 18, 1, 576 * 576}));  // another call site
    CHECK_FALSE(kKeyA.same_work(ParallelCallKey{&kBodyA, 19, 1, 576 * 576}));  // other tasks
    CHECK_FALSE(kKeyA.same_work(ParallelCallKey{&kBodyA, 18, 2, 576 * 576}));  // other chunk
}

TEST_CASE("the governor's schedule: a helpers probe, an alone probe (warm-ups untimed), then the steady way") {
    Caller c;
    for (std::uint32_t i = 0; i < HelperGovernor::kProbe; ++i) {
        const auto d = c.call(kKeyA, 1, 1);
        CHECK(d.way == Way::helpers);
        CHECK(d.timed == (i >= HelperGovernor::kWarmup));
    }
    for (std::uint32_t i = 0; i < HelperGovernor::kProbe; ++i) {
        const auto d = c.call(kKeyA, 1, 1);
        CHECK(d.way == Way::alone);
        CHECK(d.timed == (i >= HelperGovernor::kWarmup));
    }
    // Both cost the same: a tie goes to the helpers (the caller asked for them).
    for (std::uint32_t i = 2 * HelperGovernor::kProbe; i < HelperGovernor::kPeriod; ++i) {
        CHECK(c.call(kKeyA, 1, 1).way == Way::helpers);
    }
}

TEST_CASE("a call is charged its cycle: up to the next call's start, the caller's work between them included") {
    // The helpers' calls themselves are as fast as working alone, but after each one the caller's own work is
    // slowed down (a polling helper on its core): the cycle shows it.
    Caller c;
    c.run_period(kKeyA, 100 + 30, 100);
    CHECK(c.g.steady_way() == Way::alone);
}

TEST_CASE("a pause longer than kMaxCycle (no call for a while) is not charged to the call before it") {
    Caller c;
    for (std::uint32_t i = 0; i < HelperGovernor::kPeriod; ++i) {
        // The last call of the helpers probe is followed by a long pause: were it charged, alone would win.
        const bool pause = i == HelperGovernor::kProbe - 1;
        c.call(kKeyA, pause ? 10 * HelperGovernor::kMaxCycle : 60, 100);
    }
    CHECK(c.g.steady_way() == Way::helpers);
}

TEST_CASE("the governor keeps the cheaper way, and ties go to the helpers") {
    SECTION("helpers cheaper") {
        Caller c;
        CHECK(c.run_period(kKeyA, 60, 100) == Way::helpers);
    }
    SECTION("alone cheaper (helpers on busy cores)") {
        Caller c;
        CHECK(c.run_period(kKeyA, 118, 100) == Way::alone);
    }
    SECTION("within the tie margin") {
        Caller c;
        CHECK(c.run_period(kKeyA, 100, 100 * (1 - HelperGovernor::kTieMargin / 2)) == Way::helpers);
    }
}

TEST_CASE("the governor prices each kind of call by how often it comes") {
    Caller c;
    // Key A comes 7 times in 8 and is faster with helpers (60 vs 100); key B comes once in 8 and is faster alone
    // (150 vs 100). Over a period: helpers 7*60 + 150 = 570 against alone 7*100 + 100 = 800.
    for (std::uint32_t i = 0; i < HelperGovernor::kPeriod; ++i) {
        if (i % 8 == 7) {
            c.call(kKeyB, 150, 100);
        } else {
            c.call(kKeyA, 60, 100);
        }
    }
    CHECK(c.g.steady_way() == Way::helpers);
}

TEST_CASE("one outlier (the caller descheduled for a time slice) does not move the decision") {
    Caller c;
    for (std::uint32_t i = 0; i < HelperGovernor::kPeriod; ++i) {
        const bool outlier = i == HelperGovernor::kProbe - 1;  // the helpers probe's last call: 400x its cost
        c.call(kKeyA, outlier ? 24'000 : 60, 100);
    }
    CHECK(c.g.steady_way() == Way::helpers);
}

TEST_CASE("the governor changes its mind when the machine changes, within its longest probe interval") {
    Caller c;
    for (int p = 0; p < 40; ++p) CHECK(c.run_period(kKeyA, 60, 100) == Way::helpers);  // quiet for a while
    CHECK(c.g.probe_interval() == HelperGovernor::kMaxProbeInterval);
    int periods = 0;
    for (Way way = Way::helpers; way == Way::helpers && periods < 100; ++periods) {
        way = c.run_period(kKeyA, 130, 100);  // another program took the helpers' core
    }
    CHECK(periods <= int(HelperGovernor::kMaxProbeInterval) + 2);
    CHECK(c.g.probe_interval() == 1);  // a changed decision probes every period again
    periods = 0;
    for (Way way = Way::alone; way == Way::alone && periods < 100; ++periods) {
        way = c.run_period(kKeyA, 60, 100);  // it ended
    }
    CHECK(periods <= 4);
}

TEST_CASE("while the decision holds, the losing way is probed less and less often") {
    Caller c;
    for (int p = 0; p < 40; ++p) c.run_period(kKeyA, 130, 100);  // alone wins, period after period
    CHECK(c.g.steady_way() == Way::alone);
    CHECK(c.g.probe_interval() == HelperGovernor::kMaxProbeInterval);
    // Over the next kMaxProbeInterval periods the helpers are offered only kProbe calls (one probe).
    std::uint32_t with_helpers = 0;
    for (std::uint32_t i = 0; i < HelperGovernor::kMaxProbeInterval * HelperGovernor::kPeriod; ++i) {
        with_helpers += c.call(kKeyA, 130, 100).way == Way::helpers;
    }
    CHECK(with_helpers == HelperGovernor::kProbe);
}

TEST_CASE("a governor remembers a bounded number of call kinds and never fails on more") {
    Caller c;
    std::vector<int> bodies(4 * HelperGovernor::kSlots);
    for (std::uint32_t i = 0; i < 3 * HelperGovernor::kPeriod; ++i) {
        c.call(ParallelCallKey{&bodies[i % bodies.size()], 8, 1, 4096}, 60, 100);
    }
    CHECK(c.g.steady_way() == Way::helpers);
}

TEST_CASE("parallel_for under the governor: every task once, in every phase of its schedule") {
    // A new thread has a new governor: 3 periods of calls cover both probes and the steady part.
    std::atomic<int> wrong{0};
    std::atomic<int> not_inside{0};
    std::thread caller([&] {
        for (std::uint32_t call = 0; call < 3 * HelperGovernor::kPeriod; ++call) {
            std::vector<int> runs(64, 0);
            parallel_for(runs.size(), 1, 2, {.size = std::size_t(1) << 20}, [&](std::size_t b, std::size_t e) {
                if (!inside_parallel_for()) not_inside.fetch_add(1);
                for (std::size_t i = b; i < e; ++i) ++runs[i];
            });
            for (int r : runs) wrong += r != 1;
        }
    });
    caller.join();
    CHECK(wrong.load() == 0);
    CHECK(not_inside.load() == 0);  // a nested call inside runs inline, however the call ran
}

TEST_CASE("parallel_for under the governor: a task's exception reaches the caller in every phase") {
    std::atomic<int> caught{0};
    std::thread caller([&] {
        for (std::uint32_t call = 0; call < 2 * HelperGovernor::kProbe + 8; ++call) {
            try {
                parallel_for(16, 1, 2, [](std::size_t b, std::size_t e) {
                    if (b <= 7 && 7 < e) throw std::out_of_range("task 7");
                });
            } catch (const std::out_of_range&) {
                caught.fetch_add(1);
            }
        }
    });
    caller.join();
    CHECK(caught.load() == int(2 * HelperGovernor::kProbe + 8));
}

TEST_CASE("HelperUse::always offers every call to the helpers, through the governor's alone probe too") {
    // Task 0 waits (up to 100 ms) for task 1 to be run by another thread: with the caller alone that never
    // happens, with a helper it does. The calls span the governor's alone probe (calls 32-63 of a new thread).
    if (hardware_threads() < 2) return;
    constexpr int kCalls = 2 * int(HelperGovernor::kProbe) + 8;
    int helped = 0;
    std::thread caller([&] {
        for (int call = 0; call < kCalls; ++call) {
            std::atomic<bool> other_ran{false};
            const auto me = std::this_thread::get_id();
            parallel_for(2, 1, 2, {.helpers = HelperUse::always}, [&](std::size_t b, std::size_t e) {
                for (std::size_t task = b; task < e; ++task) {
                    if (task == 1 && std::this_thread::get_id() != me) other_ran = true;
                    if (task != 0) continue;
                    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
                    while (!other_ran.load() && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
                }
            });
            helped += other_ran.load();
        }
    });
    caller.join();
    CHECK(helped >= kCalls / 2);  // a loaded machine may starve the helper now and then, never half the time
}

TEST_CASE("new work (a prompt's chunks, then one-token steps) is probed at once, not at the period's end") {
    Caller c;
    for (std::uint32_t i = 0; i < 2 * HelperGovernor::kProbe + 10; ++i) c.call(kKeyA, 60, 100);  // the prompt
    CHECK(c.g.steady_way() == Way::helpers);
    // The steps: a new kind of call, cheaper alone. Within a quarter period plus the probes, alone runs.
    std::uint32_t calls = 0;
    while (c.g.steady_way() == Way::helpers && calls < HelperGovernor::kPeriod) {
        c.call(kKeyB, 130, 100);
        ++calls;
    }
    CHECK(calls <= HelperGovernor::kPeriod / 4 + 2 * HelperGovernor::kProbe + 1);
}

TEST_CASE("work that never repeats is probed at most once per quarter period") {
    Caller c;
    std::vector<int> bodies(HelperGovernor::kSlots);
    std::uint32_t with_helpers = 0, alone = 0;
    for (std::uint32_t i = 0; i < 8 * HelperGovernor::kPeriod; ++i) {
        // 64 kinds in turn, cheaper alone; each kind comes once per 64 calls, so probes price it slowly.
        const auto d = c.call(ParallelCallKey{&bodies[i % bodies.size()], 8, 1, 4096}, 130, 100);
        (d.way == Way::helpers ? with_helpers : alone) += 1;
    }
    CHECK(with_helpers <= 8 * HelperGovernor::kPeriod / 4);  // never more than one probe of helpers in 4 calls
    CHECK(c.g.steady_way() == Way::alone);
}
