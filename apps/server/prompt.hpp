// Turning requests into prompt tokens: conversations through the model's chat template (message text is
// always encoded literally), raw completion prompts, and the quoted follow-up of a branch or focus request.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvcache/model/chat.hpp"
#include "kvcache/model/tokenizer.hpp"

namespace kvcache::server {

/// The chat template the server formats conversations with: `name` ("chatml", "llama3", ...) if given, else
/// the one the tokenizer's chat_template is recognised as. ConfigError for an unknown name, or when the
/// model's template is not recognised and no name was given (the message says to pass --chat-template).
ChatTemplateInfo server_chat_template(const Tokenizer& tokenizer, const std::string& name = {});

/// The conversation formatted with that template and opening the assistant's turn, as token ids
/// (kvcache::encode_chat). Only the template's own markers become control tokens: "<|im_start|>" typed in a
/// message stays text.
std::vector<std::int32_t> chat_prompt_tokens(const Tokenizer& tokenizer, const ChatTemplateInfo& chat_template,
                                             std::span<const ChatMessage> messages);

/// A raw prompt for /v1/completions: BOS as the tokenizer says, text literal.
std::vector<std::int32_t> completion_prompt_tokens(const Tokenizer& tokenizer, const std::string& prompt);

/// The user message of a follow-up about a passage of an earlier answer:
///   About this passage of your answer: "…<context before><excerpt><context after>…"
///   <prompt>
/// The excerpt is looked up in the assistant messages (the latest first), ignoring differences in
/// whitespace (a browser selection rarely keeps it exactly); context_window tokens of the answer on each
/// side are quoted with it. An empty excerpt gives the prompt alone. ApiError 400 "excerpt_not_found" if no
/// assistant message contains it.
std::string follow_up_message(const Tokenizer& tokenizer, std::span<const ChatMessage> conversation,
                              const std::string& excerpt, std::size_t context_window, const std::string& prompt);

/// Length of the common prefix of two token sequences.
std::size_t common_prefix(std::span<const std::int32_t> a, std::span<const std::int32_t> b);

}  // namespace kvcache::server
