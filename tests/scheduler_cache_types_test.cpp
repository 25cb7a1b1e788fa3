// The scheduler over pools of every element type a cache can be chosen with at run time (f16, bf16, q8_0,
// q4_0): requests joining, leaving and being preempted give the tokens generate_with_cache gives them alone
// over a cache of the same type. And the per-step prompt budget while streams decode.
#include <catch2/catch.hpp>

#include <type_traits>

#include "kvcache/model/cache_options.hpp"
#include "kvcache/model/scheduler.hpp"
#include "scheduler_test_support.hpp"

using namespace kvcache;
using kvcache::test::alone_options;
using kvcache::test::numbered_prompt;
using kvcache::test::numbered_tokenizer;
using kvcache::test::options;
using kvcache::test::random_decoder;
using kvcache::test::run_to_end;

namespace {

template <class T>
CacheElement element_of() {
    if constexpr (std::is_same_v<T, fp16>) return CacheElement::F16;
    if constexpr (std::is_same_v<T, bf16>) return CacheElement::BF16;
    if constexpr (std::is_same_v<T, q8_0>) return CacheElement::Q8_0;
    if constexpr (std::is_same_v<T, q4_0>) return CacheElement::Q4_0;
    return CacheElement::F32;
}

/// What a request gives alone: generate_with_cache over a fresh cache whose keys and values are T.
template <class T>
GenerationResult alone_as(const std::vector<std::int32_t>& prompt, const RequestOptions& o) {
    GenerateOptions g = alone_options(o);
    g.cache.keys = g.cache.values = element_of<T>();
    return generate_with_cache(random_decoder(), numbered_tokenizer(), prompt, g);
}

}  // namespace

TEMPLATE_TEST_CASE("scheduler over a quantised or half-precision pool: every request gives its tokens alone",
                   "[scheduler]", fp16, bf16, q8_0, q4_0) {
    SchedulerOptions so;
    so.max_batch = 3;  // six requests: some wait and join as others leave
    so.prefill_chunk = 16;
    so.prefill_tokens_per_decode = 3;
    so.threads = 1;
    test::SchedulerRig<TestType> rig(128, 64, so);
    auto& [pool, prefixes, s] = rig;

    struct Case {
        std::vector<std::int32_t> prompt;
        RequestOptions o;
        RequestResult result;
        int done = 0;
    };
    std::vector<Case> cases;
    for (std::uint32_t i = 0; i < 6; ++i) {
        cases.push_back({numbered_prompt(5 + 11 * i, 40 + i), options(3 + (4 * i) % 7, i % 2 ? 0.8f : 0.0f, 7 + i), {}, 0});
    }
    // The last prompt extends the first: its prefix comes from the prefix cache once the first has finished.
    cases[5].prompt.insert(cases[5].prompt.begin(), cases[0].prompt.begin(), cases[0].prompt.end());
    for (std::size_t i = 0; i < cases.size(); ++i) {
        Request r;
        r.prompt = cases[i].prompt;
        r.options = cases[i].o;
        Case* c = &cases[i];
        r.on_done = [c](const RequestResult& res) {
            c->result = res;
            ++c->done;
        };
        s.submit(std::move(r));
        if (i % 2 == 1) s.step();  // later requests join a running batch
    }
    run_to_end(s);
    for (const Case& c : cases) {
        INFO("prompt " << c.prompt.size() << ", max_new " << c.o.max_new_tokens);
        CHECK(c.done == 1);
        CHECK(c.result.finish == FinishReason::Length);
        const GenerationResult ref = alone_as<TestType>(c.prompt, c.o);
        CHECK(c.result.tokens == ref.tokens);
        CHECK(c.result.text == ref.text);
    }
    CHECK(s.stats().prompt_tokens_reused > 0);
    CHECK(pool.used_blocks() == prefixes->cached_blocks());
    CHECK(pool.num_sequences() == 0);
}

TEMPLATE_TEST_CASE("scheduler over a quantised pool: preemption under pool exhaustion keeps the tokens",
                   "[scheduler]", q8_0, q4_0) {
    SchedulerOptions so;
    so.threads = 1;
    so.prefill_chunk = 32;
    test::SchedulerRig<TestType> rig(8, 8, so);  // 128 positions: two requests of ~70 do not fit together
    auto& [pool, prefixes, s] = rig;
    const auto p1 = numbered_prompt(40, 1), p2 = numbered_prompt(44, 2);
    const RequestOptions o1 = options(30, 0.0f, 0), o2 = options(30, 0.9f, 77);
    RequestResult r1, r2;
    Request a;
    a.prompt = p1;
    a.options = o1;
    a.on_done = [&](const RequestResult& r) { r1 = r; };
    Request b;
    b.prompt = p2;
    b.options = o2;
    b.on_done = [&](const RequestResult& r) { r2 = r; };
    s.submit(std::move(a));
    s.submit(std::move(b));
    run_to_end(s);
    CHECK(r1.finish == FinishReason::Length);
    CHECK(r2.finish == FinishReason::Length);
    CHECK(r1.preemptions + r2.preemptions > 0);
    CHECK(r1.tokens == alone_as<TestType>(p1, o1).tokens);
    CHECK(r2.tokens == alone_as<TestType>(p2, o2).tokens);
    prefixes->clear();
    CHECK(pool.used_blocks() == 0);
}

TEST_CASE("scheduler: prompts get prefill_chunk tokens a step alone, prefill_tokens_per_decode per decoding stream") {
    SchedulerOptions so;
    so.threads = 1;
    so.prefill_chunk = 40;
    so.prefill_tokens_per_decode = 3;
    test::SchedulerRig<> rig(64, 0, so);
    auto& [pool, prefixes, s] = rig;

    // Nothing decodes: the first prompt goes in 40 tokens a step.
    Request first;
    first.prompt = numbered_prompt(90, 5);
    first.options = options(60, 0.0f, 0);
    s.submit(std::move(first));
    s.step();
    CHECK(s.stats().prompt_tokens_computed == 40);
    s.step();
    s.step();  // 40 + 40 + 10: the prompt is in and the first token sampled
    CHECK(s.stats().prompt_tokens_computed == 90);
    CHECK(s.stats().generated_tokens == 1);

    // One stream decodes: a second prompt is fed 3 tokens a step beside it.
    Request second;
    second.prompt = numbered_prompt(20, 6);
    second.options = options(30, 0.0f, 0);
    s.submit(std::move(second));
    for (std::uint64_t step = 1; step <= 3; ++step) {
        s.step();
        CHECK(s.stats().prompt_tokens_computed == 90 + 3 * step);
        CHECK(s.stats().generated_tokens == 1 + step);  // the stream did not wait
    }
    for (int step = 0; step < 4; ++step) s.step();  // 21 of the 20 + ... : the second prompt is in, it decodes
    CHECK(s.stats().prompt_tokens_computed == 110);

    // Two streams decode: a third prompt gets 2 x 3 = 6 tokens a step.
    Request third;
    third.prompt = numbered_prompt(30, 7);
    third.options = options(2, 0.0f, 0);
    s.submit(std::move(third));
    s.step();
    CHECK(s.stats().prompt_tokens_computed == 116);
    s.step();
    CHECK(s.stats().prompt_tokens_computed == 122);
    run_to_end(s);
    CHECK(s.stats().prompt_tokens_computed == 140);
}
