// The small random decoder the model tests build: DecoderConfig::small_test_model with a chosen depth and
// seeded weights, on one thread (tests that compare bits must not depend on the machine's core count).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcache/model/decoder.hpp"

namespace kvcache::test {

/// small_test_model with `layers` layers and DecoderWeights::random(config, seed): the same weights on every
/// platform for a seed, one thread.
inline Decoder small_random_decoder(std::size_t layers, std::uint64_t seed) {
    DecoderConfig c = DecoderConfig::small_test_model();
    c.n_layers = layers;
    return Decoder(DecoderWeights::random(c, seed), 1);
}

}  // namespace kvcache::test
