// SQuAD's answer scoring: exact match and token F1 after its official normalisation (lower case, punctuation
// and the articles a/an/the removed, white space collapsed); the best over all gold answers.
#pragma once

#include <span>
#include <string>
#include <string_view>

namespace kvcache {

/// Lower case (ASCII), ASCII punctuation removed, the words a/an/the removed, white space collapsed to
/// single spaces and trimmed — as SQuAD's evaluation script normalises answers.
std::string normalize_answer(std::string_view text);

/// 1 if the normalised prediction equals a normalised gold answer, else 0. No gold answers (a SQuAD 2.0
/// unanswerable question) counts as one empty answer.
double exact_match(std::string_view prediction, std::span<const std::string> gold_answers);

/// 1 if a normalised gold answer occurs, as whole words, in the normalised prediction ("The mayor is Orla Venn."
/// contains "Orla Venn"), else 0. Not a SQuAD metric: it says whether a sentence-long answer holds the fact.
/// No gold answers: 1 only for an empty prediction.
double answer_contains(std::string_view prediction, std::span<const std::string> gold_answers);

/// The best token F1 (harmonic mean of precision and recall of the normalised words, counted with
/// multiplicity) against any gold answer. Two empty answers score 1; one empty answer scores 0.
double f1_score(std::string_view prediction, std::span<const std::string> gold_answers);

}  // namespace kvcache
