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
// Rule for anything else (including an empty template): it is formatted as ChatML and
// ChatTemplateInfo::recognised is false, so a caller can warn. BOS is never written; the tokenizer adds it.
#pragma once

#include <span>
#include <string>

namespace kvcache {

struct ChatMessage {
    std::string role;     ///< "system", "user", "assistant" (passed through as written)
    std::string content;
};

enum class ChatTemplateFamily { ChatML, Llama3, Llama2, Zephyr, Phi3 };

struct ChatTemplateInfo {
    ChatTemplateFamily family = ChatTemplateFamily::ChatML;
    bool recognised = false;           ///< false: unknown template, formatted as ChatML
    std::string default_system_prompt; ///< ChatML only: the system prompt the template inserts, if any
};

/// Which family a template belongs to (see the rule above for unknown templates).
ChatTemplateInfo detect_chat_template(const std::string& template_text);

/// Formats the conversation as detect_chat_template(template_text) says. add_generation_prompt appends the
/// opening of an assistant turn (no effect for Llama2, whose user turn already ends the prompt).
std::string apply_chat_template(const std::string& template_text, std::span<const ChatMessage> messages,
                                bool add_generation_prompt);

/// The same with an already detected family.
std::string apply_chat_template(const ChatTemplateInfo& info, std::span<const ChatMessage> messages,
                                bool add_generation_prompt);

/// Name of a family ("chatml", "llama3", "llama2", "zephyr", "phi3").
const char* chat_template_family_name(ChatTemplateFamily family);

}  // namespace kvcache
