// Submission and cancellation from 8 threads at once while the engine thread runs: every request finishes
// exactly once, with the tokens it gives alone, and every block comes back. Also run under ThreadSanitizer
// (scripts/run-tsan.sh): the random decoder runs one thread, so no OpenMP region is on this path.
#include <catch2/catch.hpp>

#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "kvcache/model/scheduler.hpp"
#include "scheduler_test_support.hpp"

using namespace kvcache;
using kvcache::test::alone;
using kvcache::test::numbered_prompt;
using kvcache::test::numbered_tokenizer;
using kvcache::test::options;
using kvcache::test::random_decoder;

TEST_CASE("scheduler: submission and cancellation from 8 threads while the engine thread runs") {
    SchedulerOptions so;
    so.max_batch = 8;
    so.max_queued = 64;
    so.prefill_chunk = 32;
    so.threads = 1;
    test::SchedulerRig<> rig(256, 64, so);
    auto& [pool, prefixes, s] = rig;
    s.start();
    CHECK_THROWS_AS(s.start(), ConfigError);
    CHECK_THROWS_AS(s.step(), ConfigError);  // the engine steps by itself

    constexpr int kThreads = 8, kPerThread = 3;
    std::mutex mutex;
    std::condition_variable all_done;
    int done = 0;
    std::map<RequestId, RequestResult> results;
    std::map<RequestId, std::pair<int, int>> which;  // id -> (prompt kind, seed)
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < kPerThread; ++i) {
                const int kind = (t + i) % 3;
                Request r;
                r.prompt = numbered_prompt(4 + 6 * static_cast<std::size_t>(kind), static_cast<std::uint32_t>(kind));
                r.options = options(4, 0.8f, static_cast<std::uint64_t>(t));
                r.on_token = [](std::int32_t, std::string_view) { return true; };
                r.on_done = [&](const RequestResult& res) {
                    std::lock_guard<std::mutex> lock(mutex);
                    results[res.id] = res;
                    ++done;
                    all_done.notify_all();
                };
                const RequestId id = s.submit(std::move(r));
                {
                    std::lock_guard<std::mutex> lock(mutex);
                    which[id] = {kind, t};
                }
                if (i == kPerThread - 1 && t % 4 == 0) s.cancel(id);  // some are cancelled, wherever they are
                (void)s.stats();
            }
        });
    }
    for (auto& th : threads) th.join();
    {
        std::unique_lock<std::mutex> lock(mutex);
        all_done.wait(lock, [&] { return done == kThreads * kPerThread; });
    }
    s.stop();
    CHECK(results.size() == static_cast<std::size_t>(kThreads * kPerThread));
    for (const auto& [id, res] : results) {
        const auto [kind, seed] = which.at(id);
        INFO("request " << id << " kind " << kind << " seed " << seed);
        if (res.finish == FinishReason::Cancelled) continue;
        CHECK(res.finish == FinishReason::Length);
        const auto prompt = numbered_prompt(4 + 6 * static_cast<std::size_t>(kind), static_cast<std::uint32_t>(kind));
        CHECK(res.tokens == alone(prompt, options(4, 0.8f, static_cast<std::uint64_t>(seed))).tokens);
    }
    CHECK(pool.num_sequences() == 0);
    CHECK(pool.used_blocks() == prefixes->cached_blocks());
}

