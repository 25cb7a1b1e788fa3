// Catch2 (v2) matchers for float tensors with tolerances: CHECK_THAT(actual, TensorNear(expected, 1e-5)).
#pragma once

#include <catch2/catch.hpp>

#include <span>
#include <sstream>
#include <vector>

#include "kvcache/testing/compare.hpp"

namespace kvcache::testing {

/// Matches a tensor whose every element is within abs_tol + rel_tol * max|expected| of expected; on failure
/// it names the worst element, its values and the error.
class TensorNearMatcher : public Catch::MatcherBase<std::vector<float>> {
public:
    TensorNearMatcher(std::vector<float> expected, double rel_tol, double abs_tol)
        : expected_(std::move(expected)), rel_tol_(rel_tol), abs_tol_(abs_tol) {}

    bool match(const std::vector<float>& actual) const override {
        last_ = compare_tensors(actual, expected_);
        last_size_ = actual.size();
        last_value_ = last_.shape_mismatch || actual.empty() ? 0.0f : actual[last_.worst_index];
        return last_.within(rel_tol_, abs_tol_);
    }

    std::string describe() const override {
        std::ostringstream out;
        if (last_.shape_mismatch) {
            out << "has " << expected_.size() << " elements (actual has " << last_size_ << ")";
            return out.str();
        }
        out << "is within rel " << rel_tol_ << " / abs " << abs_tol_ << " of the expected tensor; worst element "
            << last_.worst_index << ": " << last_value_ << " vs "
            << (expected_.empty() ? 0.0f : expected_[last_.worst_index]) << " (abs error " << last_.max_abs_error
            << ", relative " << last_.relative_error() << ")";
        return out.str();
    }

private:
    std::vector<float> expected_;
    double rel_tol_, abs_tol_;
    mutable TensorDifference last_;
    mutable std::size_t last_size_ = 0;
    mutable float last_value_ = 0.0f;
};

inline TensorNearMatcher TensorNear(std::vector<float> expected, double rel_tol, double abs_tol = 0.0) {
    return {std::move(expected), rel_tol, abs_tol};
}
inline TensorNearMatcher TensorNear(std::span<const float> expected, double rel_tol, double abs_tol = 0.0) {
    return {std::vector<float>(expected.begin(), expected.end()), rel_tol, abs_tol};
}

}  // namespace kvcache::testing
