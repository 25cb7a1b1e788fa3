// The prompt every answer mode uses: the knowledge in the system turn, the question in the user turn, in the
// model's chat template — split into a knowledge part and a question part whose tokens concatenate to the
// whole prompt, so a cache of the knowledge part can be continued by any question.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvcache/model/chat.hpp"

namespace kvcache {

class Tokenizer;

/// Tokens of a conversation in the tokenizer's chat template, with every message's content encoded
/// literally: text such as "<|im_start|>" inside a document stays text, only the template's own markers
/// become control tokens. BOS first if the tokenizer adds one.
std::vector<std::int32_t> encode_chat_literal(const Tokenizer& tokenizer, std::span<const ChatMessage> messages,
                                              bool add_generation_prompt);

/// What the model is told before the knowledge: answer from the documents, briefly.
inline constexpr std::string_view kDefaultQAInstructions =
    "Answer the question using only the documents below. Reply with the answer only: a name, number or short "
    "phrase, without explanation.";

class QAPromptFormat {
public:
    /// Checks that the template lets a conversation be split after the system turn (the knowledge part is a
    /// token prefix of every whole prompt); ConfigError otherwise.
    explicit QAPromptFormat(const Tokenizer& tokenizer, std::string instructions = std::string(kDefaultQAInstructions));

    /// The system turn holding instructions + knowledge: the part a knowledge cache holds.
    std::vector<std::int32_t> knowledge_tokens(std::string_view knowledge) const;
    /// The user turn holding the question and the opening of the assistant's turn.
    std::vector<std::int32_t> question_tokens(std::string_view question) const;
    /// knowledge_tokens(knowledge) followed by question_tokens(question): the same tokens as
    /// encode_chat_literal of the two messages with the generation prompt.
    std::vector<std::int32_t> prompt_tokens(std::string_view knowledge, std::string_view question) const;
    /// The two messages of the whole prompt.
    std::vector<ChatMessage> messages(std::string_view knowledge, std::string_view question) const;

    const std::string& instructions() const { return instructions_; }

private:
    const Tokenizer* tokenizer_;
    std::string instructions_;
    std::size_t question_offset_ = 0;  // tokens of the knowledge part of the probe conversation
};

}  // namespace kvcache
