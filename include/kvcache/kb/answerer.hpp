// KnowledgeAnswerer: answering questions over a knowledge in three ways, with one decoder and one prompt
// format (QAPromptFormat), so their answers and costs compare fairly:
//   none — knowledge + question prefilled from scratch for every question;
//   rag  — the top-k chunks the knowledge base finds for the question, + the question, prefilled per question;
//   cag  — the knowledge prefilled once into a KnowledgeCache (or loaded from a cache file); each question is
//          fed after it and the cache is reset to the end of the knowledge afterwards.
// Greedy cag and none answers are the same tokens: the decoder's logits at a position depend only on the
// tokens up to it, however they were batched or cached.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvcache/kb/cache_directory.hpp"
#include "kvcache/kb/knowledge_base.hpp"
#include "kvcache/kb/knowledge_cache.hpp"
#include "kvcache/kb/qa_prompt.hpp"
#include "kvcache/model/sampling.hpp"

namespace kvcache {

class Decoder;
class Tokenizer;

enum class AnswerMode { None, Rag, Cag };

/// "none", "rag" or "cag".
const char* answer_mode_name(AnswerMode mode);
/// The mode of a name; ConfigError naming the choices otherwise.
AnswerMode parse_answer_mode(std::string_view name);

struct AnswerOptions {
    std::size_t max_new_tokens = 32;
    std::size_t rag_top_k = 4;          ///< chunks a rag prompt holds
    std::size_t question_room = 256;    ///< positions kept free after the knowledge for a question's tokens
    std::size_t context = 8192;         ///< the most positions a prompt + answer may take
    std::size_t prefill_chunk = 512;    ///< tokens per forward pass when prefilling the knowledge
    SamplingOptions sampling;           ///< greedy by default
    bool stop_at_newline = true;        ///< an answer is one line: stop at the first line break after some text
    std::string instructions = std::string(kDefaultQAInstructions);       ///< see QAPromptFormat
    std::string question_template = std::string(kDefaultQuestionTemplate); ///< see QAPromptFormat
    std::vector<QAExample> examples;                                       ///< see QAPromptFormat
    std::string answer_prefix = std::string(kDefaultAnswerPrefix);        ///< see QAPromptFormat
    int threads = 0;                    ///< 0 keeps the decoder's
};

struct Answer {
    AnswerMode mode = AnswerMode::Cag;
    std::string text;                   ///< the answer, without surrounding white space
    std::vector<std::int32_t> tokens;   ///< generated ids (with the stop token if one ended it)
    double seconds = 0;                 ///< question in, answer out (retrieval and prompt building included)
    double first_token_seconds = 0;     ///< question in, first token out
    double retrieval_seconds = 0;       ///< rag: the search
    std::size_t prompt_tokens = 0;      ///< the whole prompt the answer continues
    std::size_t prefilled_tokens = 0;   ///< of those, run through the model for this question
    std::vector<SearchHit> hits;        ///< rag: the chunks in the prompt
};

/// How the knowledge cache came to be.
struct KnowledgeSetup {
    std::size_t tokens = 0;
    bool loaded_from_file = false;
    double seconds = 0;
    std::filesystem::path file;         ///< the cache file used or written (empty without a directory)
};

class KnowledgeAnswerer {
public:
    /// model_fingerprint: model_fingerprint() of the decoder's file — it keys the knowledge cache files.
    /// The decoder and tokenizer must outlive the answerer.
    KnowledgeAnswerer(Decoder& decoder, const Tokenizer& tokenizer, std::string model_fingerprint,
                      AnswerOptions options = {});
    ~KnowledgeAnswerer();

    /// Sets the knowledge of none and cag answers. CapacityError if knowledge + question_room + max_new_tokens
    /// exceed the context (nothing changes then). With build_cache, the knowledge cache is made now: from the
    /// directory's file for this model and knowledge if there is one (FingerprintMismatch if a file under
    /// that name is for something else), else by a prefill that is then saved there (also replacing a
    /// truncated or corrupted file).
    KnowledgeSetup set_knowledge(std::string knowledge, const CacheDirectory* directory = nullptr,
                                 bool build_cache = true);
    /// The knowledge base rag answers search (must outlive the answerer; nullptr: none).
    void set_knowledge_base(const KnowledgeBase* kb) { kb_ = kb; }

    /// Answers one question. ConfigError if the mode lacks what it needs (no knowledge; no knowledge base for
    /// rag); EmptyKnowledgeBase from the search; CapacityError if the question does not fit the room left.
    Answer answer(std::string_view question, AnswerMode mode);

    /// The whole prompt an answer in this mode continues (rag: with the chunks found for the question).
    std::vector<std::int32_t> prompt_tokens(std::string_view question, AnswerMode mode) const;

    const QAPromptFormat& prompt_format() const { return format_; }
    std::size_t knowledge_tokens() const { return knowledge_tokens_.size(); }
    const CacheFingerprint& knowledge_fingerprint() const { return fingerprint_; }
    /// The knowledge cache, built on first use if set_knowledge did not.
    KnowledgeCache& knowledge_cache();

    /// The knowledge text a rag prompt holds for these chunks (in rank order, as knowledge_text formats them).
    static std::string rag_knowledge(const std::vector<SearchHit>& hits);

private:
    std::size_t cache_capacity() const;

    Decoder* decoder_;
    const Tokenizer* tokenizer_;
    std::string model_fingerprint_;
    AnswerOptions options_;
    QAPromptFormat format_;
    const KnowledgeBase* kb_ = nullptr;
    std::string knowledge_;
    std::vector<std::int32_t> knowledge_tokens_;
    CacheFingerprint fingerprint_;
    std::unique_ptr<KnowledgeCache> cache_;
};

}  // namespace kvcache
