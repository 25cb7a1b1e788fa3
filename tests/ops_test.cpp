// The per-token operations in model/ops.hpp against direct double-precision formulas: norms, activations,
// residual adds; each row on its own whatever the number of rows.
#include <catch2/catch.hpp>

#include <cmath>
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
