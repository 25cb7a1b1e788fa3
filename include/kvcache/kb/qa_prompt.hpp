// The prompt every answer mode uses: the knowledge in the system turn, the question in the user turn, in the
// model's chat template (encode_chat: document text is never parsed for special tokens) — split into a
// knowledge part and a question part whose tokens concatenate to the whole prompt, so a cache of the knowledge
// part can be continued by any question.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvcache/model/chat.hpp"

namespace kvcache {

class Tokenizer;

/// What the model is told before the knowledge: answer from the documents, briefly.
inline constexpr std::string_view kDefaultQAInstructions =
    "Answer the question using only the documents below. Reply with the answer only: a name, number or short "
    "phrase, without explanation.";
/// How the question is put in the user turn; "{question}" stands for it.
inline constexpr std::string_view kDefaultQuestionTemplate = "{question}";

/// What the assistant's turn starts with: nothing. (SmolLM2-135M answered "Answer:" with an empty turn and
/// "The answer is" with ": ..." — priming did not make its answers shorter.)
inline constexpr std::string_view kDefaultAnswerPrefix = "";

/// A worked example shown to the model as an earlier user/assistant exchange (few-shot): small models follow
/// the form of an example answer much better than an instruction.
struct QAExample {
    std::string question;
    std::string answer;
};

/// Two examples about places that are in no knowledge base, answered the way SQuAD scores answers. (Off by
/// default: SmolLM2-135M copies the examples' answers into its own.)
std::vector<QAExample> default_qa_examples();

class QAPromptFormat {
public:
    /// Checks that the template lets a conversation be split after the system turn (the knowledge part is a
    /// token prefix of every whole prompt), and that question_template holds "{question}"; ConfigError otherwise.
    explicit QAPromptFormat(const Tokenizer& tokenizer, std::string instructions = std::string(kDefaultQAInstructions),
                            std::string question_template = std::string(kDefaultQuestionTemplate),
                            std::vector<QAExample> examples = {}, std::string answer_prefix = {});

    /// The system turn holding instructions + knowledge, then the examples' turns: the part a knowledge cache holds.
    std::vector<std::int32_t> knowledge_tokens(std::string_view knowledge) const;
    /// The user turn holding the question, the opening of the assistant's turn, and answer_prefix (text the
    /// assistant's answer starts with, e.g. "The answer is:", which steers a small model to a short answer).
    std::vector<std::int32_t> question_tokens(std::string_view question) const;
    /// knowledge_tokens(knowledge) followed by question_tokens(question): the same tokens as
    /// encode_chat of messages() with the generation prompt (plus answer_prefix).
    std::vector<std::int32_t> prompt_tokens(std::string_view knowledge, std::string_view question) const;
    /// The messages of the whole prompt: system, the examples' user/assistant pairs, the question.
    std::vector<ChatMessage> messages(std::string_view knowledge, std::string_view question) const;

    const std::string& instructions() const { return instructions_; }
    const std::string& question_template() const { return question_template_; }
    const std::vector<QAExample>& examples() const { return examples_; }
    const std::string& answer_prefix() const { return answer_prefix_; }

private:
    const Tokenizer* tokenizer_;
    std::string instructions_;
    std::string question_template_;
    std::vector<QAExample> examples_;
    std::string answer_prefix_;
    std::size_t question_offset_ = 0;  // tokens of the knowledge part of the probe conversation
};

}  // namespace kvcache
