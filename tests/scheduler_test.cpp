// Tests of the continuous-batching scheduler on the random decoder: every request's tokens equal its
// generation alone (greedy and seeded), whoever joins or leaves; cancellation, queue limits, pool
// exhaustion and preemption; stop strings and streaming; kept sequences. (Submission from many threads:
// scheduler_threads_test, which also runs under ThreadSanitizer.)
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>

#include "kvcache/model/scheduler.hpp"
#include "scheduler_test_support.hpp"

using namespace kvcache;
using kvcache::test::alone;
using kvcache::test::numbered_prompt;
using kvcache::test::options;
using kvcache::test::numbered_tokenizer;
using kvcache::test::random_decoder;
using kvcache::test::run_to_end;

namespace {

/// A request that records its result.
struct Recorder {
    std::mutex mutex;
    std::map<RequestId, RequestResult> results;
    std::map<RequestId, int> done_calls;
    std::map<RequestId, std::string> streamed;

    Request make(std::vector<std::int32_t> prompt, RequestOptions o) {
        Request r;
        r.prompt = std::move(prompt);
        r.options = std::move(o);
        auto* self = this;
        r.on_done = [self](const RequestResult& res) {
            std::lock_guard<std::mutex> lock(self->mutex);
            self->results[res.id] = res;
            ++self->done_calls[res.id];
        };
        return r;
    }
    const RequestResult& at(RequestId id) {
        std::lock_guard<std::mutex> lock(mutex);
        REQUIRE(results.count(id) == 1);
        return results.at(id);
    }
};

}  // namespace

TEST_CASE("scheduler: requests joining and leaving give the tokens they give alone") {
    SchedulerOptions so;
    so.max_batch = 4;  // more requests than that: some wait, and join as others leave
    so.prefill_chunk = 16;
    so.threads = 1;
    test::SchedulerRig<> rig(128, 64, so);
    auto& [pool, prefixes, s] = rig;
    Recorder rec;

    struct Case {
        std::vector<std::int32_t> prompt;
        RequestOptions o;
        RequestId id = 0;
    };
    std::vector<Case> cases;
    for (std::uint32_t i = 0; i < 7; ++i) {
        const float temperature = i % 2 ? 0.9f : 0.0f;
        cases.push_back({numbered_prompt(3 + 9 * i, i), options(2 + (5 * i) % 9, temperature, 100 + i)});
    }
    // The sixth prompt starts like the first, which has finished by the time it comes: its prefix comes
    // from the cache.
    cases[5].prompt.insert(cases[5].prompt.begin(), cases[0].prompt.begin(), cases[0].prompt.end());

    for (std::size_t i = 0; i < 3; ++i) cases[i].id = s.submit(rec.make(cases[i].prompt, cases[i].o));
    s.step();
    s.step();
    for (std::size_t i = 3; i < cases.size(); ++i) {
        cases[i].id = s.submit(rec.make(cases[i].prompt, cases[i].o));
        s.step();
    }
    run_to_end(s);

    for (const Case& c : cases) {
        INFO("request " << c.id << ", prompt " << c.prompt.size() << ", max_new " << c.o.max_new_tokens);
        const GenerationResult ref = alone(c.prompt, c.o);
        const RequestResult& r = rec.at(c.id);
        CHECK(rec.done_calls[c.id] == 1);
        CHECK(r.finish == FinishReason::Length);
        CHECK(r.tokens == ref.tokens);
        CHECK(r.text == ref.text);
        CHECK(r.prompt_tokens == c.prompt.size());
    }
    const SchedulerStats st = s.stats();
    CHECK(st.running == 0);
    CHECK(st.queued == 0);
    CHECK(st.finished == cases.size());
    CHECK(st.prompt_tokens_reused > 0);
    // Every block a request held is back, except those the prefix cache keeps.
    CHECK(pool.used_blocks() == prefixes->cached_blocks());
    CHECK(pool.num_sequences() == 0);
}

TEST_CASE("scheduler: a prefix-cache hit gives the same tokens as a cold start") {
    test::SchedulerRig<> rig(64, 64);
    auto& [pool, prefixes, s] = rig;
    Recorder rec;
    const auto prompt = numbered_prompt(40, 5);
    const RequestOptions o = options(5, 0.7f, 9);
    const RequestId first = s.submit(rec.make(prompt, o));
    run_to_end(s);
    const RequestId second = s.submit(rec.make(prompt, o));
    run_to_end(s);
    CHECK(rec.at(first).reused_prompt_tokens == 0);
    CHECK(rec.at(second).reused_prompt_tokens == 39);  // never the last token: its logits are wanted
    CHECK(rec.at(first).tokens == rec.at(second).tokens);
    CHECK(rec.at(first).tokens == alone(prompt, o).tokens);
}

TEST_CASE("scheduler: cancellation frees every block, queued or running") {
    SchedulerOptions so;
    so.max_batch = 2;
    so.threads = 1;
    test::SchedulerRig<> rig(64, 0, so);
    auto& [pool, prefixes, s] = rig;
    Recorder rec;
    const RequestId a = s.submit(rec.make(numbered_prompt(20, 1), options(30, 0, 0)));
    const RequestId b = s.submit(rec.make(numbered_prompt(25, 2), options(30, 0, 0)));
    const RequestId c = s.submit(rec.make(numbered_prompt(5, 3), options(4, 0, 0)));  // waits: max_batch 2
    s.step();
    s.step();
    CHECK(pool.used_blocks() > 0);
    CHECK(s.stats().running == 2);
    CHECK(s.cancel(a));
    CHECK(s.cancel(c));  // still queued
    CHECK_FALSE(s.cancel(12345));
    s.step();
    CHECK(rec.at(a).finish == FinishReason::Cancelled);
    CHECK(rec.at(c).finish == FinishReason::Cancelled);
    CHECK(rec.at(c).tokens.empty());
    CHECK_FALSE(s.cancel(a));  // finished: nothing to cancel
    CHECK(s.cancel(b));
    s.step();
    CHECK(rec.at(b).finish == FinishReason::Cancelled);
    CHECK(pool.used_blocks() == 0);
    CHECK(pool.num_sequences() == 0);
    for (RequestId id : {a, b, c}) CHECK(rec.done_calls[id] == 1);
    CHECK(s.stats().cancelled == 3);
    CHECK_FALSE(s.step());
}

TEST_CASE("scheduler: a full queue refuses with QueueFullError and the running requests go on untouched") {
    SchedulerOptions so;
    so.max_batch = 1;
    so.max_queued = 2;
    so.threads = 1;
    test::SchedulerRig<> rig(64, 0, so);
    auto& [pool, prefixes, s] = rig;
    Recorder rec;
    const auto p1 = numbered_prompt(7, 1), p2 = numbered_prompt(9, 2), p3 = numbered_prompt(4, 3);
    const RequestOptions o = options(6, 0.8f, 4);
    const RequestId a = s.submit(rec.make(p1, o));
    const RequestId b = s.submit(rec.make(p2, o));
    CHECK_THROWS_AS(s.submit(rec.make(p3, o)), QueueFullError);
    CHECK_THROWS_AS(s.submit(rec.make(p3, o)), CapacityError);
    s.step();  // a runs; the queue has room again
    const RequestId c = s.submit(rec.make(p3, o));
    run_to_end(s);
    CHECK(rec.at(a).tokens == alone(p1, o).tokens);
    CHECK(rec.at(b).tokens == alone(p2, o).tokens);
    CHECK(rec.at(c).tokens == alone(p3, o).tokens);
    CHECK(s.stats().submitted == 3);
}

TEST_CASE("scheduler: bad requests are refused at submit with typed errors") {
    Decoder& d = random_decoder();
    test::SchedulerRig<> rig(8);
    auto& [pool, prefixes, s] = rig;
    Request empty;
    CHECK_THROWS_AS(s.submit(empty), ConfigError);
    Request cont;
    cont.continue_from = SequenceId{0, 0};
    CHECK_THROWS_AS(s.submit(cont), ConfigError);
    Request bad;
    bad.prompt = {1, 1024};
    CHECK_THROWS_AS(s.submit(bad), IndexError);
    bad.prompt = {-1};
    CHECK_THROWS_AS(s.submit(bad), IndexError);
    Request sampling;
    sampling.prompt = {5};
    sampling.options.sampling.top_p = 0;
    CHECK_THROWS_AS(s.submit(sampling), ConfigError);
    CHECK(s.stats().submitted == 0);

    // A continue_from that is not a kept sequence finishes with an IndexError when it would start.
    Recorder rec;
    Request unknown = rec.make({5, 6}, options(2, 0, 0));
    unknown.continue_from = SequenceId{3, 0};
    const RequestId id = s.submit(std::move(unknown));
    run_to_end(s);
    CHECK(rec.at(id).finish == FinishReason::Error);
    CHECK_THROWS_AS(std::rethrow_exception(rec.at(id).exception), IndexError);
    CHECK_FALSE(rec.at(id).error.empty());

    // Options and pool checks at construction.
    CHECK_THROWS_AS(Scheduler(d, numbered_tokenizer(), pool, nullptr, SchedulerOptions{.max_batch = 0}), ConfigError);
    // An absurd batch is refused before anything is allocated (it was a std::length_error / std::bad_alloc).
    CHECK_THROWS_AS(Scheduler(d, numbered_tokenizer(), pool, nullptr, SchedulerOptions{.max_batch = kMaxBatchLimit + 1}),
                    ConfigError);
    CHECK_THROWS_AS(
        Scheduler(d, numbered_tokenizer(), pool, nullptr, SchedulerOptions{.max_batch = std::size_t(1) << 62}),
        ConfigError);
    CHECK_THROWS_AS(Scheduler(d, numbered_tokenizer(), pool, nullptr, SchedulerOptions{.prefill_chunk = 0}),
                    ConfigError);
    CHECK_THROWS_AS(
        Scheduler(d, numbered_tokenizer(), pool, nullptr, SchedulerOptions{.prefill_tokens_per_decode = 0}),
        ConfigError);
    PagedKVPool<float> other(CacheShape{2, 8, 64}, 8);
    CHECK_THROWS_AS(Scheduler(d, numbered_tokenizer(), other, nullptr), ShapeError);
    PrefixCache<float> foreign(other, 1 << 20);
    CHECK_THROWS_AS(Scheduler(d, numbered_tokenizer(), pool, &foreign), ConfigError);
}

TEST_CASE("scheduler: pool exhaustion preempts (same tokens after recomputation) or fails only that request") {
    SECTION("two requests that do not fit together: one is preempted, both finish as alone") {
        SchedulerOptions so;
        so.threads = 1;
        so.prefill_chunk = 32;
        test::SchedulerRig<> rig(8, 8, so);  // 128 positions
        auto& [pool, prefixes, s] = rig;
        Recorder rec;
        const auto p1 = numbered_prompt(40, 1), p2 = numbered_prompt(44, 2);
        const RequestOptions o1 = options(30, 0.0f, 0), o2 = options(30, 0.9f, 77);
        const RequestId a = s.submit(rec.make(p1, o1));
        const RequestId b = s.submit(rec.make(p2, o2));
        run_to_end(s);
        CHECK(rec.at(a).finish == FinishReason::Length);
        CHECK(rec.at(b).finish == FinishReason::Length);
        CHECK(rec.at(a).tokens == alone(p1, o1).tokens);
        CHECK(rec.at(b).tokens == alone(p2, o2).tokens);
        CHECK(rec.at(a).preemptions + rec.at(b).preemptions > 0);
        CHECK(s.stats().preempted > 0);
        prefixes->clear();
        CHECK(pool.used_blocks() == 0);
    }
    SECTION("a request larger than the pool fails with PoolExhaustedError; the other one is untouched") {
        SchedulerOptions so;
        so.threads = 1;
        test::SchedulerRig<> rig(8, 0, so);
        auto& [pool, prefixes, s] = rig;
        Recorder rec;
        const auto small = numbered_prompt(10, 3), huge = numbered_prompt(140, 4);
        const RequestOptions o = options(8, 0.5f, 3);
        const RequestId a = s.submit(rec.make(small, o));
        s.step();
        const RequestId b = s.submit(rec.make(huge, o));
        run_to_end(s);
        CHECK(rec.at(b).finish == FinishReason::Error);
        CHECK_THROWS_AS(std::rethrow_exception(rec.at(b).exception), PoolExhaustedError);
        CHECK(rec.at(a).finish == FinishReason::Length);
        CHECK(rec.at(a).tokens == alone(small, o).tokens);
        CHECK(pool.used_blocks() == 0);
        CHECK(s.stats().failed == 1);
    }
}

TEST_CASE("scheduler: stop strings cut the text, and streaming holds back what may start one") {
    test::SchedulerRig<> rig(32);
    auto& [pool, prefixes, s] = rig;
    const auto prompt = numbered_prompt(6, 8);
    RequestOptions o = options(12, 1.0f, 5);
    const GenerationResult ref = alone(prompt, o);
    REQUIRE(ref.tokens.size() == 12);
    // The text stops where the fifth token's value first appears.
    const auto first = std::find(ref.tokens.begin(), ref.tokens.end(), ref.tokens[4]);
    // Stop at the text of the fifth generated token ("<id>"), or at a string starting with its first part.
    std::string fifth = "<";
    fifth += std::to_string(ref.tokens[4]);
    fifth += '>';
    const std::size_t at = ref.text.find(fifth);
    REQUIRE(at != std::string::npos);
    std::string almost = fifth.substr(0, 3);
    almost += "@@";
    o.stop = {"", "never there", almost, fifth};
    std::string streamed;
    std::vector<std::int32_t> streamed_tokens;
    RequestResult result;
    Request r;
    r.prompt = prompt;
    r.options = o;
    r.on_token = [&](std::int32_t t, std::string_view piece) {
        streamed += piece;
        streamed_tokens.push_back(t);
        return true;
    };
    r.on_done = [&](const RequestResult& res) { result = res; };
    s.submit(std::move(r));
    run_to_end(s);
    CHECK(result.finish == FinishReason::Stop);
    CHECK(result.text == ref.text.substr(0, at));
    CHECK(streamed == result.text);
    CHECK(result.tokens == std::vector<std::int32_t>(ref.tokens.begin(), first + 1));

    // Without a stop string the stream is the whole text; on_token returning false cancels.
    std::string all;
    Request plain;
    plain.prompt = prompt;
    plain.options = options(12, 0, 0);
    int calls = 0;
    plain.on_token = [&](std::int32_t, std::string_view piece) {
        all += piece;
        return ++calls < 3;
    };
    plain.on_done = [&](const RequestResult& res) { result = res; };
    s.submit(std::move(plain));
    run_to_end(s);
    CHECK(result.finish == FinishReason::Cancelled);
    CHECK(result.tokens.size() == 3);
    CHECK(all == result.text);
    CHECK(pool.used_blocks() == 0);
}

TEST_CASE("scheduler: EOS stops a request like generate_with_cache does") {
    test::SchedulerRig<> rig(64);
    auto& [pool, prefixes, s] = rig;
    Recorder rec;
    // Hot sampling over many seeds: some hit token 2 (EOS) before 40 tokens.
    std::vector<std::pair<RequestId, std::uint64_t>> ids;
    const auto prompt = numbered_prompt(5, 1);
    for (std::uint64_t seed = 0; seed < 6; ++seed) {
        RequestOptions o = options(40, 3.0f, seed);
        o.sampling.top_k = 0;
        o.stop_at_eos = true;
        ids.emplace_back(s.submit(rec.make(prompt, o)), seed);
    }
    run_to_end(s);
    for (auto [id, seed] : ids) {
        RequestOptions o = options(40, 3.0f, seed);
        o.sampling.top_k = 0;
        o.stop_at_eos = true;
        const GenerationResult ref = alone(prompt, o);
        CHECK(rec.at(id).tokens == ref.tokens);
        CHECK(rec.at(id).text == ref.text);
        const bool stopped = !ref.tokens.empty() && ref.tokens.back() == 2;
        CHECK(rec.at(id).finish == (stopped ? FinishReason::Stop : FinishReason::Length));
    }
}

TEST_CASE("scheduler: kept sequences continue, fork, truncate and release") {
    Decoder& d = random_decoder();
    test::SchedulerRig<> rig(64, 64);
    auto& [pool, prefixes, s] = rig;
    Recorder rec;
    const auto prompt = numbered_prompt(12, 4);
    const RequestOptions o = options(5, 0.0f, 0);
    Request first = rec.make(prompt, o);
    first.keep_sequence = true;
    const RequestId a = s.submit(std::move(first));
    run_to_end(s);
    REQUIRE(rec.at(a).sequence.has_value());
    const SequenceId slot = *rec.at(a).sequence;
    CHECK(s.is_kept(slot));
    std::vector<std::int32_t> held = prompt;
    held.insert(held.end(), rec.at(a).tokens.begin(), rec.at(a).tokens.end() - 1);  // the last was never fed
    CHECK(s.tokens(slot) == held);
    CHECK(s.stats().kept_sequences == 1);

    // Continue with a new turn: the same tokens as generating over the whole conversation alone.
    const auto turn = numbered_prompt(4, 9);
    Request next = rec.make(turn, o);
    next.continue_from = slot;
    next.keep_sequence = true;
    const RequestId b = s.submit(std::move(next));
    s.step();
    CHECK_FALSE(s.is_kept(slot));  // the running request has taken it over
    CHECK_THROWS_AS(s.tokens(slot), IndexError);
    CHECK_THROWS_AS(s.release(slot), IndexError);
    run_to_end(s);
    std::vector<std::int32_t> conversation = held;
    conversation.insert(conversation.end(), turn.begin(), turn.end());
    CHECK(rec.at(b).tokens == alone(conversation, o).tokens);
    CHECK(rec.at(b).reused_prompt_tokens == 0);
    REQUIRE(rec.at(b).sequence.has_value());
    const SequenceId slot2 = *rec.at(b).sequence;
    CHECK(s.tokens(slot2).size() == conversation.size() + o.max_new_tokens - 1);

    // Fork at the end of the first turn, then continue the fork with the same turn: same tokens again.
    const SequenceId branch = s.fork(slot2, held.size());
    CHECK(s.tokens(branch) == held);
    Request again = rec.make(turn, o);
    again.continue_from = branch;
    const RequestId e = s.submit(std::move(again));
    run_to_end(s);
    CHECK(rec.at(e).tokens == rec.at(b).tokens);
    CHECK_FALSE(s.is_kept(branch));  // not kept at the end: finished into the prefix cache

    s.truncate(slot2, 5);
    CHECK(s.tokens(slot2) == std::vector<std::int32_t>(prompt.begin(), prompt.begin() + 5));
    s.truncate(slot2, 50);  // holds fewer: nothing changes
    CHECK(s.tokens(slot2).size() == 5);
    CHECK_THROWS_AS(s.fork(slot2, 6), IndexError);
    s.release(slot2);
    CHECK_FALSE(s.is_kept(slot2));
    CHECK_THROWS_AS(s.tokens(slot2), IndexError);
    CHECK_THROWS_AS(s.release(slot2), IndexError);
    CHECK_THROWS_AS(s.truncate(slot2, 1), IndexError);
    CHECK(s.stats().kept_sequences == 0);
    s.exclusive([](PagedKVPool<float>&, PrefixCache<float>* cache) { cache->clear(); });
    CHECK(pool.used_blocks() == 0);

    // adopt: a sequence made in the pool under the engine lock becomes a kept sequence.
    const SequenceId made = s.exclusive([&](PagedKVPool<float>& p, PrefixCache<float>*) {
        const SequenceId id = p.create_sequence();
        std::vector<float> logits(d.config().vocab_size);
        auto cache = p.sequence(id);
        d.forward(std::span<const std::int32_t>(prompt), cache, 0, logits);
        return id;
    });
    CHECK_THROWS_AS(s.adopt(made, {1, 2}), ShapeError);
    s.adopt(made, prompt);
    CHECK_THROWS_AS(s.adopt(made, prompt), IndexError);
    CHECK(s.tokens(made) == prompt);
    s.release(made, CachePrefix::no);
    CHECK(pool.used_blocks() == 0);
    CHECK_THROWS_AS(s.adopt(made, prompt), IndexError);
}

TEST_CASE("scheduler: a prompt-only request (max_new_tokens 0) fills a kept sequence") {
    test::SchedulerRig<> rig(16);
    auto& [pool, prefixes, s] = rig;
    Recorder rec;
    const auto prompt = numbered_prompt(20, 2);
    Request r = rec.make(prompt, options(0, 0, 0));
    r.keep_sequence = true;
    const RequestId id = s.submit(std::move(r));
    run_to_end(s);
    CHECK(rec.at(id).finish == FinishReason::Length);
    CHECK(rec.at(id).tokens.empty());
    REQUIRE(rec.at(id).sequence);
    CHECK(s.tokens(*rec.at(id).sequence) == prompt);
}

TEST_CASE("scheduler: stop() cancels what is left; the destructor frees kept sequences") {
    Decoder& d = random_decoder();
    PagedKVPool<float> pool(d.cache_layers(), 32);
    {
        Scheduler s(d, numbered_tokenizer(), pool, nullptr, SchedulerOptions{.max_batch = 1, .threads = 1});
        Recorder rec;
        Request keep = rec.make(numbered_prompt(5, 1), options(2, 0, 0));
        keep.keep_sequence = true;
        const RequestId k = s.submit(std::move(keep));
        run_to_end(s);
        REQUIRE(rec.at(k).sequence);
        const RequestId a = s.submit(rec.make(numbered_prompt(5, 2), options(50, 0, 0)));
        const RequestId b = s.submit(rec.make(numbered_prompt(5, 3), options(50, 0, 0)));
        s.step();
        s.stop();
        CHECK(rec.at(a).finish == FinishReason::Cancelled);
        CHECK(rec.at(b).finish == FinishReason::Cancelled);
        CHECK(s.is_kept(*rec.at(k).sequence));
        s.stop();  // idempotent
        CHECK(pool.num_sequences() == 1);
        CHECK(finish_reason_name(FinishReason::Cancelled) == "cancelled");
        CHECK(finish_reason_name(FinishReason::Length) == "length");
        CHECK(finish_reason_name(FinishReason::Stop) == "stop");
        CHECK(finish_reason_name(FinishReason::Error) == "error");
    }
    CHECK(pool.num_sequences() == 0);
    CHECK(pool.used_blocks() == 0);
}
