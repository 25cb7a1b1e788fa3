// Chat templates: formatting a conversation the way a model's tokenizer.chat_template (Jinja) would.
//
// There is no Jinja engine here. The template text is only inspected to recognise which of the common
// families it is; the family is then formatted by hand-written code:
//   ChatML   <|im_start|>role\ncontent<|im_end|>\n            (SmolLM2, Qwen, ...; a default system prompt
//                                                             written literally in the template is inserted
//                                                             when the conversation does not start with one)
//   Llama3   <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>   (content trimmed, no BOS)
//   Llama2   [INST] <<SYS>>\nsystem\n<</SYS>>\n\nuser [/INST] assistant </s><s>[INST] ...   (no leading BOS)
//   Zephyr   <|role|>\ncontent</s>\n                           Phi3: the same with <|end|> instead of </s>
// Anything else (including an empty template) is not guessed: detect_chat_template says recognised = false and
// formatting with that answer throws ChatTemplateError (a ConfigError). A caller who knows better names the
// family explicitly: chat_template_for(ChatTemplateFamily::ChatML). BOS is never written; the tokenizer adds it.
//
// Feeding a model: use encode_chat. Only the template's own markers become control tokens; roles and contents
// are encoded literally (Tokenizer::encode_segments), so a message that contains "<|im_end|><|im_start|>system"
// stays text and cannot forge a turn. apply_chat_template gives the same conversation as one string, for
// display; encoding that string with special parsing on would lose the distinction.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvcache/error.hpp"

namespace kvcache {

class Tokenizer;

struct ChatMessage {
    std::string role;     ///< "system", "user", "assistant" (passed through as written)
    std::string content;
};

enum class ChatTemplateFamily { ChatML, Llama3, Llama2, Zephyr, Phi3 };

struct ChatTemplateInfo {
    ChatTemplateFamily family = ChatTemplateFamily::ChatML;
    bool recognised = false;           ///< true: detected from the text or chosen by the caller; false: formatting
                                       ///< with this info throws ChatTemplateError
    std::string default_system_prompt; ///< ChatML only: the system prompt the template inserts, if any
    std::string unrecognised_excerpt;  ///< when not recognised: the template's beginning, for the error message
};

/// How a conversation is formatted (encode_chat, apply_chat_template):
/// `encode_chat(tokenizer, messages, {.add_generation_prompt = true})`. No default at the call: whether the
/// model is to answer next is the caller's decision, not the library's.
struct ChatFormatOptions {
    /// Append the opening of an assistant turn (no effect for Llama2, whose user turn already ends the prompt).
    bool add_generation_prompt = true;
};

/// Which family a template belongs to (see the rule above for unknown templates). Never throws for a bad
/// template: it answers recognised = false.
ChatTemplateInfo detect_chat_template(const std::string& template_text);

/// An explicit choice of family, e.g. for a model whose template is empty or unknown: always formats.
ChatTemplateInfo chat_template_for(ChatTemplateFamily family, std::string default_system_prompt = {});

/// The family of a name as chat_template_family_name spells it ("chatml", ...), if there is one.
std::optional<ChatTemplateFamily> chat_template_family_from_name(std::string_view name);

/// The conversation as token ids for the model, in the family the tokenizer's chat_template is recognised as;
/// BOS first if the tokenizer adds one. Only the template's markers become special tokens (see above).
/// Throws ChatTemplateError if the template is not recognised.
std::vector<std::int32_t> encode_chat(const Tokenizer& tokenizer, std::span<const ChatMessage> messages,
                                      const ChatFormatOptions& options);

/// The same in an explicitly chosen family (chat_template_for) or an already detected one. Throws
/// ChatTemplateError if info.recognised is false.
std::vector<std::int32_t> encode_chat(const Tokenizer& tokenizer, const ChatTemplateInfo& info,
                                      std::span<const ChatMessage> messages, const ChatFormatOptions& options);

/// The conversation as text, formatted as detect_chat_template(template_text) says (for display and tests;
/// feed the model with encode_chat). Throws ChatTemplateError if the template is not recognised.
std::string apply_chat_template(const std::string& template_text, std::span<const ChatMessage> messages,
                                const ChatFormatOptions& options);

/// The same with an already detected or explicitly chosen family. Throws ChatTemplateError if
/// info.recognised is false.
std::string apply_chat_template(const ChatTemplateInfo& info, std::span<const ChatMessage> messages,
                                const ChatFormatOptions& options);

/// Name of a family ("chatml", "llama3", "llama2", "zephyr", "phi3").
const char* chat_template_family_name(ChatTemplateFamily family);

}  // namespace kvcache
