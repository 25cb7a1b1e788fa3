// Measures of how far two tensors are apart, shared by the Catch2 matchers and the consistency checker.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>

#include "kvcache/detail/format.hpp"

namespace kvcache::testing {

struct TensorDifference {
    double max_abs_error = 0.0;     ///< max |actual - expected|
    std::size_t worst_index = 0;    ///< where it is
    double max_abs_expected = 0.0;  ///< max |expected|: the scale relative errors are taken against
    bool shape_mismatch = false;
    bool non_finite = false;        ///< NaN or inf in actual where expected is finite

    /// max_abs_error / max_abs_expected (a norm-wise relative error: well defined near zeros).
    double relative_error() const {
        if (max_abs_expected == 0.0) return max_abs_error == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
        return max_abs_error / max_abs_expected;
    }
    /// True when every element is within abs_tol + rel_tol * max|expected|.
    bool within(double rel_tol, double abs_tol = 0.0) const {
        return !shape_mismatch && !non_finite && max_abs_error <= abs_tol + rel_tol * max_abs_expected;
    }
};

inline TensorDifference compare_tensors(std::span<const float> actual, std::span<const float> expected) {
    TensorDifference diff;
    if (actual.size() != expected.size()) {
        diff.shape_mismatch = true;
        return diff;
    }
    for (std::size_t i = 0; i < actual.size(); ++i) {
        const double e = expected[i];
        const double a = actual[i];
        diff.max_abs_expected = std::max(diff.max_abs_expected, std::abs(e));
        if (!std::isfinite(a) && std::isfinite(e)) diff.non_finite = true;
        const double err = std::abs(a - e);
        if (err > diff.max_abs_error || std::isnan(err)) {
            diff.max_abs_error = std::isnan(err) ? std::numeric_limits<double>::infinity() : err;
            diff.worst_index = i;
        }
    }
    return diff;
}

}  // namespace kvcache::testing
