// Small tokenizer vocabularies shared by tokenizer_test and the tokenizer fuzz target.
#pragma once

#include <cstdio>

#include "kvcache/model/tokenizer.hpp"

namespace kvcache::testing {

/// The start of a SentencePiece-style vocabulary (model "llama"): <unk>, <s>, </s> (ids 0..2), then the 256
/// byte-fallback tokens <0x00>..<0xFF> (ids 3..258), all scored 0. Callers append their scored pieces.
inline TokenizerSpec sentencepiece_byte_spec() {
    TokenizerSpec spec;
    spec.model = "llama";
    spec.tokens = {"<unk>", "<s>", "</s>"};
    spec.token_types = {2, 3, 3};
    spec.scores = {0, 0, 0};
    for (int b = 0; b < 256; ++b) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        spec.tokens.push_back(name);
        spec.token_types.push_back(6);
        spec.scores.push_back(0);
    }
    return spec;
}

}  // namespace kvcache::testing
