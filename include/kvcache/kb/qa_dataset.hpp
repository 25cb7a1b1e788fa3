// Question-answering data sets for evaluation: SQuAD v1.1/v2.0 JSON, HotpotQA JSON, and a plain JSONL.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace kvcache {

struct QAItem {
    std::string id;
    std::string question;
    std::vector<std::string> answers;  ///< gold answers; empty for a SQuAD 2.0 unanswerable question
    std::string context;               ///< the passage the question is about (may be empty)
    std::string title;                 ///< of the context's article, if the format has one
    std::string type;                  ///< HotpotQA "bridge"/"comparison", or the JSONL's "type"; may be empty
};

enum class QAFormat { Squad, HotpotQA, Jsonl };

/// "squad", "hotpotqa" or "jsonl".
const char* qa_format_name(QAFormat format);

/// The format of a file's contents: a JSON object with "data" → SQuAD; a JSON array of objects with
/// "question" and "answer" → HotpotQA; otherwise one JSON object per line → JSONL.
QAFormat detect_qa_format(std::string_view contents);

/// Parses a data set held in memory. SQuAD: every question of every paragraph, the paragraph as context,
/// answers de-duplicated in order (is_impossible → no answers). HotpotQA: "answer" as the one answer, the
/// context paragraphs as "title: sentences" lines. JSONL: "question" (required), "answers" (array of strings)
/// or "answer" (a string), optional "id", "context", "type"; blank lines skipped. `source` names the data in
/// errors. FormatError naming the entry (and line for JSONL) for malformed JSON or missing fields.
std::vector<QAItem> parse_qa_dataset(std::string_view contents, std::string_view source);

/// Reads and parses a file (IoError if it cannot be read).
std::vector<QAItem> read_qa_dataset(const std::filesystem::path& path);

}  // namespace kvcache
