// The per-token operations in model/ops.hpp against direct double-precision formulas: norms, activations,
// residual adds; each row on its own whatever the number of rows.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kvcache/model/ops.hpp"

using namespace kvcache;

namespace {

std::vector<float> rows(std::size_t n, std::size_t dim) {
    std::vector<float> x(n * dim);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(std::sin(0.7 * double(i)) * 3.0 + 0.25 * double(i % 5));
    return x;
}

}  // namespace

TEST_CASE("layer_norm: (x - mean) / sqrt(var + eps) * weight + bias per row, in place too", "[ops]") {
    const std::size_t n = 3, dim = 10;
    const auto x = rows(n, dim);
    std::vector<float> weight(dim), bias(dim);
    for (std::size_t i = 0; i < dim; ++i) {
        weight[i] = 0.5f + 0.1f * float(i);
        bias[i] = -0.2f + 0.05f * float(i);
    }
    const float eps = 1e-5f;
    std::vector<float> out(n * dim);
    layer_norm(x.data(), weight.data(), bias.data(), n, dim, eps, out.data());
    for (std::size_t t = 0; t < n; ++t) {
        double mean = 0, var = 0;
        for (std::size_t i = 0; i < dim; ++i) mean += x[t * dim + i];
        mean /= dim;
        for (std::size_t i = 0; i < dim; ++i) var += (x[t * dim + i] - mean) * (x[t * dim + i] - mean);
        var /= dim;  // biased, as nn.LayerNorm
        for (std::size_t i = 0; i < dim; ++i) {
            const double want = (x[t * dim + i] - mean) / std::sqrt(var + eps) * weight[i] + bias[i];
            CHECK(out[t * dim + i] == Approx(want).margin(1e-5));
        }
    }
    // a row's result does not depend on the other rows; out may alias x
    std::vector<float> second(dim);
    layer_norm(x.data() + dim, weight.data(), bias.data(), 1, dim, eps, second.data());
    CHECK(std::vector<float>(out.begin() + dim, out.begin() + 2 * dim) == second);
    auto in_place = x;
    layer_norm(in_place.data(), weight.data(), bias.data(), n, dim, eps, in_place.data());
    CHECK(in_place == out);
    // a constant row normalises to the bias (variance 0: eps keeps it finite)
    std::vector<float> constant(dim, 4.0f), y(dim);
    layer_norm(constant.data(), weight.data(), bias.data(), 1, dim, eps, y.data());
    CHECK(y == bias);
}

TEST_CASE("activate: ReLU and the exact (erf) GELU", "[ops]") {
    const std::vector<float> x = {-3.0f, -1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 3.0f};
    auto relu = x;
    activate(Activation::ReLU, relu.data(), relu.size());
    CHECK(relu == std::vector<float>{0, 0, 0, 0, 0.5f, 1.0f, 3.0f});
    auto gelu = x;
    activate(Activation::GELU, gelu.data(), gelu.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
        const double want = 0.5 * x[i] * (1.0 + std::erf(x[i] / std::sqrt(2.0)));
        CHECK(gelu[i] == Approx(want).margin(1e-6));
    }
    CHECK(gelu[5] == Approx(0.8413447).margin(1e-6));  // GELU(1) = Phi(1), not the tanh form's 0.841192
}

TEST_CASE("rms_norm, swiglu, add_into, add_bias against their formulas", "[ops]") {
    const std::size_t n = 2, dim = 6;
    const auto x = rows(n, dim);
    const std::vector<float> w = {1.0f, 0.5f, 2.0f, 1.5f, 0.25f, 1.0f};
    std::vector<float> out(n * dim);
    rms_norm(x.data(), w.data(), n, dim, 1e-6f, out.data());
    for (std::size_t t = 0; t < n; ++t) {
        double ss = 0;
        for (std::size_t i = 0; i < dim; ++i) ss += double(x[t * dim + i]) * x[t * dim + i];
        for (std::size_t i = 0; i < dim; ++i)
            CHECK(out[t * dim + i] == Approx(x[t * dim + i] / std::sqrt(ss / dim + 1e-6) * w[i]).margin(1e-5));
    }
    std::vector<float> gate = {-1.0f, 0.0f, 2.0f}, up = {2.0f, 3.0f, 0.5f};
    swiglu(gate.data(), up.data(), gate.size());
    CHECK(gate[0] == Approx(-1.0 / (1.0 + std::exp(1.0)) * 2.0));
    CHECK(gate[1] == 0.0f);
    CHECK(gate[2] == Approx(2.0 / (1.0 + std::exp(-2.0)) * 0.5));
    std::vector<float> acc = {1, 2, 3, 4};
    add_into(acc.data(), std::vector<float>{1, 1, 1, 1}.data(), 4);
    CHECK(acc == std::vector<float>{2, 3, 4, 5});
    add_bias(acc.data(), std::vector<float>{10, 20}.data(), 2, 2);
    CHECK(acc == std::vector<float>{12, 23, 14, 25});
}

TEST_CASE("swiglu: an element's bits do not depend on where it falls (vector, tail) or on the count", "[ops]") {
    // A token's row of d_ff values is a tail when alone and the middle of a vector in a batch: every element
    // must come out the same either way (batched == alone).
    const std::size_t count = 53;  // 3 x 16 + 5: AVX-512, AVX2 and tail steps
    std::vector<float> gate(count), up(count);
    for (std::size_t i = 0; i < count; ++i) {
        gate[i] = static_cast<float>(std::sin(1.3 * double(i)) * 12.0 - 2.0);
        up[i] = static_cast<float>(std::cos(0.4 * double(i)) * 1.5);
    }
    gate[7] = -100.0f;  // e^100 is clamped to e^88.38: silu is about -4e-37 (true value -3.7e-42)
    gate[8] = 100.0f;   // e^-100 underflows to 0: silu(g) = g
    gate[9] = std::numeric_limits<float>::quiet_NaN();
    auto all = gate;
    swiglu(all.data(), up.data(), count);
    for (std::size_t i = 0; i < count; ++i) {
        float one = gate[i];
        swiglu(&one, &up[i], 1);
        INFO("element " << i);
        REQUIRE(std::memcmp(&one, &all[i], sizeof one) == 0);
        if (i == 9) {
            CHECK(std::isnan(one));
        } else {
            const double g = gate[i];
            CHECK(one == Approx(g / (1.0 + std::exp(-g)) * up[i]).margin(1e-6).epsilon(1e-6));
        }
    }
    CHECK(all[8] == 100.0f * up[8]);
    CHECK(std::fabs(all[7]) < 1e-30f);
}

TEST_CASE("apply_rope from a rope_table gives the bits of apply_rope from positions, both styles", "[ops]") {
    const std::size_t n = 3, heads = 2, head_dim = 8, rope_dim = 6, first = 41;
    const std::vector<double> inv_freq = {1.0, 0.1, 0.01};
    for (const RopeStyle style : {RopeStyle::Interleaved, RopeStyle::Neox}) {
        const auto x = rows(n * heads, head_dim);
        auto from_positions = x, from_table = x;
        apply_rope(from_positions.data(), n, heads, head_dim, rope_dim, first, inv_freq.data(), style);
        std::vector<float> cos(n * rope_dim / 2), sin(n * rope_dim / 2);
        rope_table(n, rope_dim, first, inv_freq.data(), cos.data(), sin.data());
        CHECK(cos[1 * 3 + 2] == static_cast<float>(std::cos(42 * 0.01)));  // token 1 is at position 42
        CHECK(sin[2 * 3 + 0] == static_cast<float>(std::sin(43 * 1.0)));
        apply_rope(from_table.data(), n, heads, head_dim, rope_dim, cos.data(), sin.data(), style);
        CHECK(std::memcmp(from_table.data(), from_positions.data(), x.size() * sizeof(float)) == 0);
        // the rotation itself: a pair (a, b) turns by the angle; dimensions past rope_dim stay as they were
        const std::size_t a = style == RopeStyle::Interleaved ? 2 : 1, b = style == RopeStyle::Interleaved ? 3 : 4;
        const double angle = 41 * 0.1, x0 = x[a], x1 = x[b];
        CHECK(from_table[a] == Approx(x0 * std::cos(angle) - x1 * std::sin(angle)).margin(1e-5));
        CHECK(from_table[b] == Approx(x0 * std::sin(angle) + x1 * std::cos(angle)).margin(1e-5));
        CHECK(from_table[6] == x[6]);
        CHECK(from_table[7] == x[7]);
    }
}

TEST_CASE("rms_norm: a row's bits do not depend on the other rows, at widths with and without a tail", "[ops]") {
    for (const std::size_t dim : {std::size_t{3}, std::size_t{8}, std::size_t{13}, std::size_t{576}}) {
        const std::size_t n = 4;
        const auto x = rows(n, dim);
        std::vector<float> w(dim), out(n * dim), one(dim);
        for (std::size_t i = 0; i < dim; ++i) w[i] = 0.5f + 0.01f * float(i);
        rms_norm(x.data(), w.data(), n, dim, 1e-5f, out.data());
        for (std::size_t t = 0; t < n; ++t) {
            rms_norm(x.data() + t * dim, w.data(), 1, dim, 1e-5f, one.data());
            REQUIRE(std::memcmp(one.data(), out.data() + t * dim, dim * sizeof(float)) == 0);
            double ss = 0;
            for (std::size_t i = 0; i < dim; ++i) ss += double(x[t * dim + i]) * x[t * dim + i];
            for (std::size_t i = 0; i < dim; ++i) {
                CHECK(one[i] == Approx(x[t * dim + i] / std::sqrt(ss / double(dim) + 1e-5) * w[i]).margin(1e-5));
            }
        }
        auto in_place = x;
        rms_norm(in_place.data(), w.data(), n, dim, 1e-5f, in_place.data());
        CHECK(in_place == out);
    }
}
