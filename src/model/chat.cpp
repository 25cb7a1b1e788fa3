// Chat templates: recognising a template's family from its text and formatting conversations in it.
#include "kvcache/model/chat.hpp"

#include <string_view>
#include <utility>
#include <vector>

#include "kvcache/model/tokenizer.hpp"

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

// A formatted conversation as a run of parts: the template's own markup, and text that came from a message
// (roles and contents), which is never parsed for special tokens.
struct Formatted {
    std::vector<std::pair<std::string, bool>> parts;  // (text, is markup)

    Formatted& markup(std::string_view text) { return add(text, true); }
    Formatted& message(std::string_view text) { return add(text, false); }
    Formatted& add(std::string_view text, bool is_markup) {
        if (text.empty()) return *this;
        if (!parts.empty() && parts.back().second == is_markup) parts.back().first.append(text);
        else parts.emplace_back(std::string(text), is_markup);
        return *this;
    }
    std::string joined() const {
        std::string out;
        for (const auto& [text, is_markup] : parts) out += text;
        return out;
    }
};

void format_chatml(Formatted& out, const ChatTemplateInfo& info, std::span<const ChatMessage> messages, bool generation) {
    const auto turn = [&](std::string_view role, std::string_view content, bool content_is_markup) {
        out.markup("<|im_start|>").message(role).markup("\n").add(content, content_is_markup).markup("<|im_end|>\n");
    };
    // The default system prompt is the template's own text.
    if (!info.default_system_prompt.empty() && !messages.empty() && messages.front().role != "system")
        turn("system", info.default_system_prompt, true);
    for (const auto& m : messages) turn(m.role, m.content, false);
    if (generation) out.markup("<|im_start|>assistant\n");
}

void format_llama3(Formatted& out, std::span<const ChatMessage> messages, bool generation) {
    for (const auto& m : messages)
        out.markup("<|start_header_id|>").message(m.role).markup("<|end_header_id|>\n\n").message(trim(m.content)).markup("<|eot_id|>");
    if (generation) out.markup("<|start_header_id|>assistant<|end_header_id|>\n\n");
}

void format_llama2(Formatted& out, std::span<const ChatMessage> messages) {
    std::string pending_system;
    bool first_user = true;
    for (const auto& m : messages) {
        if (m.role == "system") {
            pending_system = std::string(trim(m.content));
        } else if (m.role == "user") {
            out.markup(first_user ? "[INST] " : "<s>[INST] ");
            if (!pending_system.empty()) {
                out.markup("<<SYS>>\n").message(pending_system).markup("\n<</SYS>>\n\n");
                pending_system.clear();
            }
            out.message(trim(m.content)).markup(" [/INST]");
            first_user = false;
        } else {
            out.markup(" ").message(trim(m.content)).markup(" </s>");
        }
    }
}

void format_zephyr(Formatted& out, std::span<const ChatMessage> messages, bool generation, std::string_view end) {
    for (const auto& m : messages) {
        // The standard roles' markers are single control tokens (<|user|>) in these vocabularies: markup. Any
        // other role is message text, so that a role cannot smuggle in a control token.
        if (m.role == "system" || m.role == "user" || m.role == "assistant") out.markup("<|" + m.role + "|>\n");
        else out.markup("<|").message(m.role).markup("|>\n");
        out.message(m.content).markup(end).markup("\n");
    }
    if (generation) out.markup("<|assistant|>\n");
}

std::string template_excerpt(std::string_view t) {
    constexpr std::size_t kShown = 60;
    if (t.empty()) return "the template is empty";
    std::string shown(t.substr(0, kShown));
    for (char& c : shown)
        if (c == '\n' || c == '\r' || c == '\t') c = ' ';
    return "template begins '" + shown + (t.size() > kShown ? "...'" : "'");
}

Formatted format(const ChatTemplateInfo& info, std::span<const ChatMessage> messages, bool generation) {
    if (!info.recognised)
        throw ChatTemplateError("chat template not recognised (" + info.unrecognised_excerpt +
                                "); name a family explicitly with chat_template_for() (chatml, llama3, llama2, zephyr, phi3)");
    Formatted out;
    switch (info.family) {
        case ChatTemplateFamily::Llama3: format_llama3(out, messages, generation); break;
        case ChatTemplateFamily::Llama2: format_llama2(out, messages); break;
        case ChatTemplateFamily::Zephyr: format_zephyr(out, messages, generation, "</s>"); break;
        case ChatTemplateFamily::Phi3: format_zephyr(out, messages, generation, "<|end|>"); break;
        case ChatTemplateFamily::ChatML: format_chatml(out, info, messages, generation); break;
    }
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
        info.unrecognised_excerpt = template_excerpt(t);
    }
    return info;
}

ChatTemplateInfo chat_template_for(ChatTemplateFamily family, std::string default_system_prompt) {
    ChatTemplateInfo info;
    info.family = family;
    info.recognised = true;
    info.default_system_prompt = std::move(default_system_prompt);
    return info;
}

std::optional<ChatTemplateFamily> chat_template_family_from_name(std::string_view name) {
    for (const auto family : {ChatTemplateFamily::ChatML, ChatTemplateFamily::Llama3, ChatTemplateFamily::Llama2,
                              ChatTemplateFamily::Zephyr, ChatTemplateFamily::Phi3})
        if (name == chat_template_family_name(family)) return family;
    return std::nullopt;
}

std::string apply_chat_template(const ChatTemplateInfo& info, std::span<const ChatMessage> messages,
                                const ChatFormatOptions& options) {
    return format(info, messages, options.add_generation_prompt).joined();
}

std::vector<std::int32_t> encode_chat(const Tokenizer& tokenizer, const ChatTemplateInfo& info,
                                      std::span<const ChatMessage> messages, const ChatFormatOptions& options) {
    const Formatted formatted = format(info, messages, options.add_generation_prompt);
    std::vector<TextSegment> segments;
    segments.reserve(formatted.parts.size());
    for (const auto& [text, is_markup] : formatted.parts) segments.push_back({text, is_markup});
    return tokenizer.encode_segments(segments, {.add_special = true});
}

std::vector<std::int32_t> encode_chat(const Tokenizer& tokenizer, std::span<const ChatMessage> messages,
                                      const ChatFormatOptions& options) {
    return encode_chat(tokenizer, detect_chat_template(tokenizer.chat_template()), messages, options);
}

std::string apply_chat_template(const std::string& template_text, std::span<const ChatMessage> messages,
                                const ChatFormatOptions& options) {
    return apply_chat_template(detect_chat_template(template_text), messages, options);
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
