// Tests of the sampler: each stage on hand-made logits, seeded reproducibility, empirical distribution, errors.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <map>
#include <vector>

#include "kvcache/error.hpp"
#include "kvcache/model/sampling.hpp"

using namespace kvcache;

namespace {

std::map<std::int32_t, float> as_map(const std::vector<TokenProbability>& d) {
    std::map<std::int32_t, float> m;
    for (auto [id, p] : d) m[id] = p;
    return m;
}

std::vector<double> softmax(const std::vector<float>& logits, double t) {
    double mx = -1e30;
    for (float l : logits) mx = std::max(mx, double(l));
    std::vector<double> p(logits.size());
    double s = 0;
    for (std::size_t i = 0; i < logits.size(); ++i) s += p[i] = std::exp((logits[i] - mx) / t);
    for (auto& x : p) x /= s;
    return p;
}

}  // namespace

TEST_CASE("argmax picks the largest logit, ties to the lowest id, skipping NaN") {
    CHECK(argmax(std::vector<float>{1, 3, 2}) == 1);
    CHECK(argmax(std::vector<float>{5, 1, 5}) == 0);
    CHECK(argmax(std::vector<float>{-1, 4, 4, 4}) == 1);
    CHECK(argmax(std::vector<float>{NAN, -2, NAN}) == 1);
    CHECK_THROWS_AS(argmax(std::vector<float>{}), ShapeError);
    CHECK_THROWS_AS(argmax(std::vector<float>{NAN}), ConfigError);
}

TEST_CASE("greedy sampling is argmax and ignores the generator") {
    Sampler s(SamplingOptions{.temperature = 0, .seed = 7});
    std::vector<float> logits{0.1f, 2.0f, 2.0f, -1.0f};
    for (int i = 0; i < 5; ++i) CHECK(s.sample(logits) == 1);
    auto d = s.distribution(logits);
    REQUIRE(d.size() == 1);
    CHECK(d[0].id == 1);
    CHECK(d[0].probability == 1.0f);
}

TEST_CASE("repetition penalty divides positive and multiplies negative logits, once per distinct id") {
    std::vector<float> logits{2.0f, -2.0f, 1.0f, 4.0f};
    std::vector<std::int32_t> history{0, 1, 0, 0};
    apply_repetition_penalty(logits, history, 2.0f);
    CHECK(logits == std::vector<float>{1.0f, -4.0f, 1.0f, 4.0f});

    SECTION("the window limits the penalty to the most recent tokens") {
        std::vector<float> l2{2.0f, 2.0f, 2.0f};
        std::vector<std::int32_t> h2{0, 1, 2};
        apply_repetition_penalty(l2, h2, 2.0f, 1);
        CHECK(l2 == std::vector<float>{2.0f, 2.0f, 1.0f});
    }
    SECTION("it changes the greedy choice") {
        Sampler s(SamplingOptions{.repetition_penalty = 3.0f});
        std::vector<float> l3{3.0f, 2.0f};
        std::vector<std::int32_t> h3{0};
        CHECK(s.sample(l3) == 0);
        CHECK(s.sample(l3, h3) == 1);
    }
    SECTION("history ids outside the vocabulary are IndexError") {
        std::vector<std::int32_t> bad{4};
        CHECK_THROWS_AS(apply_repetition_penalty(logits, bad, 2.0f), IndexError);
        std::vector<std::int32_t> negative{-1};
        CHECK_THROWS_AS(apply_repetition_penalty(logits, negative, 1.0f), IndexError);
    }
}

TEST_CASE("temperature reshapes the softmax") {
    std::vector<float> logits{1.0f, 2.0f, 0.0f, -1.0f};
    for (double t : {0.5, 1.0, 2.0}) {
        Sampler s(SamplingOptions{.temperature = float(t)});
        auto d = as_map(s.distribution(logits));
        auto expected = softmax(logits, t);
        REQUIRE(d.size() == 4);
        for (int i = 0; i < 4; ++i) CHECK(d[i] == Approx(expected[i]).epsilon(1e-5));
    }
}

TEST_CASE("top-k keeps the k most likely, ties broken towards the lower id") {
    std::vector<float> logits{1.0f, 3.0f, 2.0f, 3.0f, 0.0f};
    Sampler s(SamplingOptions{.temperature = 1, .top_k = 2});
    auto d = s.distribution(logits);
    REQUIRE(d.size() == 2);
    CHECK(d[0].id == 1);
    CHECK(d[1].id == 3);
    CHECK(d[0].probability == Approx(0.5));
    Sampler k3(SamplingOptions{.temperature = 1, .top_k = 3});
    auto m = as_map(k3.distribution(logits));
    REQUIRE(m.size() == 3);
    CHECK(m.count(2) == 1);
    auto e = softmax({3.0f, 2.0f, 3.0f}, 1.0);
    CHECK(m[2] == Approx(e[1]).epsilon(1e-5));
    Sampler big(SamplingOptions{.temperature = 1, .top_k = 100});
    CHECK(big.distribution(logits).size() == 5);
}

TEST_CASE("top-p keeps the smallest set reaching p") {
    // probabilities 0.5, 0.25, 0.125, 0.125 (logits are log2 multiples)
    std::vector<float> logits{std::log(4.0f), std::log(2.0f), 0.0f, 0.0f};
    auto ids = [&](float p) {
        Sampler s(SamplingOptions{.temperature = 1, .top_p = p});
        std::vector<std::int32_t> out;
        for (auto tp : s.distribution(logits)) out.push_back(tp.id);
        return out;
    };
    CHECK(ids(0.4f) == std::vector<std::int32_t>{0});
    CHECK(ids(0.5f) == std::vector<std::int32_t>{0});
    CHECK(ids(0.6f) == std::vector<std::int32_t>{0, 1});
    CHECK(ids(0.8f) == std::vector<std::int32_t>{0, 1, 2});
    CHECK(ids(1.0f) == std::vector<std::int32_t>{0, 1, 2, 3});
    Sampler s(SamplingOptions{.temperature = 1, .top_p = 0.6f});
    auto d = s.distribution(logits);
    CHECK(d[0].probability == Approx(2.0 / 3.0));
    CHECK(d[1].probability == Approx(1.0 / 3.0));

    SECTION("a nucleus larger than the first sorted stretch (64) over a large vocabulary") {
        std::vector<float> flat(1000, 0.0f);
        Sampler f(SamplingOptions{.temperature = 1, .top_p = 0.5f});
        auto fd = f.distribution(flat);
        CHECK(fd.size() == 500);
        CHECK(fd.front().id == 0);
        CHECK(fd.back().id == 499);
    }
}

TEST_CASE("min-p drops tokens below a fraction of the top probability") {
    std::vector<float> logits{std::log(8.0f), std::log(4.0f), std::log(2.0f), 0.0f};
    Sampler s(SamplingOptions{.temperature = 1, .min_p = 0.3f});
    auto d = as_map(s.distribution(logits));
    REQUIRE(d.size() == 2);
    CHECK(d[0] == Approx(2.0 / 3.0));
    CHECK(d[1] == Approx(1.0 / 3.0));
    Sampler s2(SamplingOptions{.temperature = 1, .min_p = 0.25f});
    CHECK(s2.distribution(logits).size() == 3);
}

TEST_CASE("stages compose in the documented order") {
    // After top-k=3 the survivors are 0,1,2 with p 4/7, 2/7, 1/7; top-p 0.8 keeps 0,1 (6/7 >= 0.8);
    // min-p 0.6 then drops 1 (2/7 < 0.6 * 4/7). Had min-p run first, it would also leave {0} but via a
    // different path; the repetition penalty on 0 runs before all and flips the order.
    std::vector<float> logits{std::log(4.0f), std::log(2.0f), 0.0f, -5.0f};
    Sampler s(SamplingOptions{.temperature = 1, .top_k = 3, .top_p = 0.8f});
    auto d = s.distribution(logits);
    REQUIRE(d.size() == 2);
    CHECK(d[0].probability == Approx(4.0 / 6.0));
    Sampler s2(SamplingOptions{.temperature = 1, .top_k = 3, .top_p = 0.8f, .min_p = 0.6f});
    CHECK(s2.distribution(logits).size() == 1);
    Sampler s3(SamplingOptions{.temperature = 1, .top_k = 1, .repetition_penalty = 100.0f});
    std::vector<std::int32_t> h{0};
    CHECK(s3.sample(logits, h) == 1);
}

TEST_CASE("the same seed gives the same tokens; another seed gives others; reseed restarts") {
    std::vector<float> logits(50);
    for (std::size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(float(i));
    SamplingOptions o{.temperature = 1.0f, .top_p = 0.95f, .seed = 1234};
    Sampler a(o), b(o);
    std::vector<std::int32_t> ta, tb, tc;
    for (int i = 0; i < 200; ++i) {
        ta.push_back(a.sample(logits));
        tb.push_back(b.sample(logits));
    }
    CHECK(ta == tb);
    o.seed = 1235;
    Sampler c(o);
    for (int i = 0; i < 200; ++i) tc.push_back(c.sample(logits));
    CHECK(ta != tc);
    a.reseed(1234);
    std::vector<std::int32_t> again;
    for (int i = 0; i < 200; ++i) again.push_back(a.sample(logits));
    CHECK(again == ta);
    // Pin the platform-independent sequence: mt19937_64's output is fixed by the standard.
    Sampler pinned(SamplingOptions{.temperature = 1.0f, .seed = 42});
    std::vector<float> four{0, 0, 0, 0};
    std::vector<std::int32_t> seq;
    for (int i = 0; i < 8; ++i) seq.push_back(pinned.sample(four));
    std::mt19937_64 reference(42);
    std::vector<std::int32_t> expected;
    for (int i = 0; i < 8; ++i) expected.push_back(std::int32_t((reference() >> 11) * 0x1.0p-53 * 4));
    CHECK(seq == expected);
}

TEST_CASE("empirical frequencies match the filtered distribution") {
    std::vector<float> logits{2.0f, 1.0f, 0.5f, 0.0f, -1.0f, -3.0f};
    SamplingOptions o{.temperature = 0.8f, .top_k = 5, .top_p = 0.95f, .seed = 99};
    Sampler s(o);
    auto expected = as_map(s.distribution(logits));
    const int draws = 200000;
    std::map<std::int32_t, int> counts;
    for (int i = 0; i < draws; ++i) counts[s.sample(logits)]++;
    for (auto [id, n] : counts) REQUIRE(expected.count(id) == 1);  // never draws a filtered token
    for (auto [id, p] : expected) {
        double f = double(counts[id]) / draws;
        // 5 standard deviations of a binomial proportion: false failures ~1e-6.
        double tol = 5 * std::sqrt(p * (1 - p) / draws);
        CHECK(std::abs(f - p) <= tol);
    }
}

TEST_CASE("invalid options are ConfigError") {
    CHECK_THROWS_AS(Sampler(SamplingOptions{.temperature = -0.1f}), ConfigError);
    CHECK_THROWS_AS(Sampler(SamplingOptions{.temperature = NAN}), ConfigError);
    CHECK_THROWS_AS(Sampler(SamplingOptions{.temperature = INFINITY}), ConfigError);
    CHECK_THROWS_AS(Sampler(SamplingOptions{.top_k = -1}), ConfigError);
    CHECK_THROWS_AS(Sampler(SamplingOptions{.top_p = 0.0f}), ConfigError);
    CHECK_THROWS_AS(Sampler(SamplingOptions{.top_p = 1.5f}), ConfigError);
    CHECK_THROWS_AS(Sampler(SamplingOptions{.min_p = -0.5f}), ConfigError);
    CHECK_THROWS_AS(Sampler(SamplingOptions{.min_p = 2.0f}), ConfigError);
    CHECK_THROWS_AS(Sampler(SamplingOptions{.repetition_penalty = 0.0f}), ConfigError);
    CHECK_THROWS_AS(Sampler(SamplingOptions{.repetition_penalty = NAN}), ConfigError);
    CHECK_NOTHROW(validate(SamplingOptions{.temperature = 0.7f, .top_k = 40, .top_p = 0.9f, .min_p = 0.05f}));
}

TEST_CASE("bad logits are reported") {
    Sampler s(SamplingOptions{.temperature = 1});
    CHECK_THROWS_AS(s.sample(std::vector<float>{}), ShapeError);
    CHECK_THROWS_AS(s.sample(std::vector<float>{-INFINITY, NAN}), ConfigError);
    std::vector<std::int32_t> bad{3};
    CHECK_THROWS_AS(s.sample(std::vector<float>{1, 2}, bad), IndexError);
    // -inf logits are never drawn
    std::vector<float> masked{-INFINITY, 0.0f, -INFINITY};
    for (int i = 0; i < 50; ++i) CHECK(s.sample(masked) == 1);
}

TEST_CASE("temperatures so small that 1/T is infinite sample the top token (was back() on an empty vector)") {
    const std::vector<float> logits{0.5f, 3.0f, -2.0f, 3.0f, 1.0f};
    for (const float t : {1e-45f, std::numeric_limits<float>::denorm_min(), 2e-39f, 1e-30f}) {
        INFO("temperature " << t);
        Sampler s(SamplingOptions{.temperature = t, .top_k = 3, .top_p = 0.5f, .min_p = 0.1f, .seed = 3});
        for (int i = 0; i < 20; ++i) {
            const auto id = s.sample(logits);
            CHECK((id == 1 || id == 3));  // the two tied top logits
        }
        const auto d = s.distribution(logits);
        REQUIRE_FALSE(d.empty());
        CHECK(d.front().id == 1);
    }
    // Logits whose differences overflow a float (3e38 - -3e38) at a tiny temperature.
    Sampler s(SamplingOptions{.temperature = 1e-45f});
    CHECK(s.sample(std::vector<float>{-3e38f, 3e38f, 0.0f}) == 1);
    Sampler hot(SamplingOptions{.temperature = 1e30f});  // the other end: all but uniform, still a distribution
    const auto d = hot.distribution(std::vector<float>{-3e38f, 3e38f});
    REQUIRE(d.size() >= 1);
}

TEST_CASE("non-finite logits mean the same to greedy and sampled decoding", "[issue9]") {
    const std::vector<float> with_inf{1.0f, INFINITY, 50.0f, INFINITY, -INFINITY};
    Sampler greedy;
    CHECK(greedy.sample(with_inf) == 1);  // the first +inf
    Sampler s(SamplingOptions{.temperature = 0.8f, .seed = 5});
    int drawn[5] = {};
    for (int i = 0; i < 200; ++i) ++drawn[s.sample(with_inf)];
    CHECK(drawn[0] + drawn[2] + drawn[4] == 0);  // were the only ones drawn: +inf dropped out as "not finite"
    CHECK(drawn[1] > 50);
    CHECK(drawn[3] > 50);
    const auto d = s.distribution(with_inf);
    REQUIRE(d.size() == 2);
    CHECK((d[0].id == 1 && d[0].probability == 0.5f && d[1].id == 3 && d[1].probability == 0.5f));
    Sampler top1(SamplingOptions{.temperature = 1e-45f, .top_k = 1});
    CHECK(top1.sample(with_inf) == 1);
    Sampler penalised(SamplingOptions{.temperature = 1, .repetition_penalty = 1.3f});
    const std::vector<std::int32_t> history{1, 3};
    for (int i = 0; i < 20; ++i) {
        const auto id = penalised.sample(with_inf, history);
        CHECK((id == 1 || id == 3));  // inf / 1.3 is still inf
    }

    const std::vector<float> with_nan{1.0f, NAN, 2.0f};
    CHECK_THROWS_AS(greedy.sample(with_nan), ConfigError);  // greedy skipped it, sampling dropped it
    CHECK_THROWS_WITH(greedy.sample(with_nan), Catch::Contains("token 1 is NaN"));
    CHECK_THROWS_AS(s.sample(with_nan), ConfigError);
    CHECK_THROWS_AS(s.distribution(with_nan), ConfigError);

    const std::vector<float> masked(3, -INFINITY);
    CHECK_THROWS_WITH(greedy.sample(masked), Catch::Contains("every logit is -inf"));  // greedy picked token 0
    CHECK_THROWS_WITH(s.sample(masked), Catch::Contains("every logit is -inf"));
}
