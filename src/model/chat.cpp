// Chat templates: recognising a template's family from its text and formatting conversations in it.
#include "kvcache/model/chat.hpp"

#include <string_view>

namespace kvcache {

namespace {

bool contains(std::string_view haystack, std::string_view needle) {
    return haystack.find(needle) != std::string_view::npos;
}

std::string_view trim(std::string_view s) {
    const auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; };
    while (!s.empty() && space(s.front())) s.remove_prefix(1);
    while (!s.empty() && space(s.back())) s.remove_suffix(1);
    return s;
}

// A system prompt the template writes as a literal, e.g. '<|im_start|>system\nYou are ...<|im_end|>\n'.
// Anything with Jinja syntax or string concatenation between the markers is a message, not a default.
std::string literal_default_system_prompt(std::string_view tmpl) {
    constexpr std::string_view open = "<|im_start|>system";
    for (std::size_t pos = tmpl.find(open); pos != std::string_view::npos; pos = tmpl.find(open, pos + 1)) {
        std::size_t start = pos + open.size();
        if (tmpl.substr(start).starts_with("\n")) start += 1;
        else if (tmpl.substr(start).starts_with("\\n")) start += 2;
        else continue;
        const std::size_t end = tmpl.find("<|im_end|>", start);
        if (end == std::string_view::npos) continue;
        const std::string_view body = tmpl.substr(start, end - start);
        if (body.empty() || contains(body, "{") || contains(body, "}") || contains(body, "'") ||
            contains(body, "\"") || contains(body, "+"))
            continue;
        std::string prompt;
        for (std::size_t i = 0; i < body.size(); ++i) {
            if (body[i] == '\\' && i + 1 < body.size() && body[i + 1] == 'n') {
                prompt += '\n';
                ++i;
            } else {
                prompt += body[i];
            }
        }
        return prompt;
    }
    return {};
}

std::string format_chatml(const ChatTemplateInfo& info, std::span<const ChatMessage> messages, bool generation) {
    std::string out;
    const auto turn = [&](std::string_view role, std::string_view content) {
        out.append("<|im_start|>").append(role).append("\n").append(content).append("<|im_end|>\n");
    };
    if (!info.default_system_prompt.empty() && !messages.empty() && messages.front().role != "system")
        turn("system", info.default_system_prompt);
    for (const auto& m : messages) turn(m.role, m.content);
    if (generation) out += "<|im_start|>assistant\n";
    return out;
}

std::string format_llama3(std::span<const ChatMessage> messages, bool generation) {
    std::string out;
    for (const auto& m : messages)
        out.append("<|start_header_id|>").append(m.role).append("<|end_header_id|>\n\n").append(trim(m.content)).append("<|eot_id|>");
    if (generation) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
    return out;
}

std::string format_llama2(std::span<const ChatMessage> messages) {
    std::string out;
    std::string pending_system;
    bool first_user = true;
    for (const auto& m : messages) {
        if (m.role == "system") {
            pending_system = std::string(trim(m.content));
        } else if (m.role == "user") {
            out += first_user ? "[INST] " : "<s>[INST] ";
            if (!pending_system.empty()) {
                out.append("<<SYS>>\n").append(pending_system).append("\n<</SYS>>\n\n");
                pending_system.clear();
            }
            out.append(trim(m.content)).append(" [/INST]");
            first_user = false;
        } else {
            out.append(" ").append(trim(m.content)).append(" </s>");
        }
    }
    return out;
}

std::string format_zephyr(std::span<const ChatMessage> messages, bool generation, std::string_view end) {
    std::string out;
    for (const auto& m : messages) out.append("<|").append(m.role).append("|>\n").append(m.content).append(end).append("\n");
    if (generation) out += "<|assistant|>\n";
    return out;
}

}  // namespace

ChatTemplateInfo detect_chat_template(const std::string& t) {
    ChatTemplateInfo info;
    info.recognised = true;
    if (contains(t, "<|im_start|>")) {
        info.family = ChatTemplateFamily::ChatML;
        info.default_system_prompt = literal_default_system_prompt(t);
    } else if (contains(t, "<|start_header_id|>")) {
        info.family = ChatTemplateFamily::Llama3;
    } else if (contains(t, "[INST]")) {
        info.family = ChatTemplateFamily::Llama2;
    } else if (contains(t, "<|user|>")) {
        info.family = contains(t, "<|end|>") ? ChatTemplateFamily::Phi3 : ChatTemplateFamily::Zephyr;
    } else {
        info.family = ChatTemplateFamily::ChatML;
        info.recognised = false;
    }
    return info;
}

std::string apply_chat_template(const ChatTemplateInfo& info, std::span<const ChatMessage> messages,
                                bool add_generation_prompt) {
    switch (info.family) {
        case ChatTemplateFamily::Llama3: return format_llama3(messages, add_generation_prompt);
        case ChatTemplateFamily::Llama2: return format_llama2(messages);
        case ChatTemplateFamily::Zephyr: return format_zephyr(messages, add_generation_prompt, "</s>");
        case ChatTemplateFamily::Phi3: return format_zephyr(messages, add_generation_prompt, "<|end|>");
        case ChatTemplateFamily::ChatML: break;
    }
    return format_chatml(info, messages, add_generation_prompt);
}

std::string apply_chat_template(const std::string& template_text, std::span<const ChatMessage> messages,
                                bool add_generation_prompt) {
    return apply_chat_template(detect_chat_template(template_text), messages, add_generation_prompt);
}

const char* chat_template_family_name(ChatTemplateFamily family) {
    switch (family) {
        case ChatTemplateFamily::ChatML: return "chatml";
        case ChatTemplateFamily::Llama3: return "llama3";
        case ChatTemplateFamily::Llama2: return "llama2";
        case ChatTemplateFamily::Zephyr: return "zephyr";
        case ChatTemplateFamily::Phi3: return "phi3";
    }
    return "unknown";
}

}  // namespace kvcache
