#include "prompt.hpp"

#include <algorithm>
#include <cctype>

#include <fmt/format.h>

#include "api_error.hpp"
#include "kvcache/error.hpp"

namespace kvcache::server {

ChatTemplateInfo server_chat_template(const Tokenizer& tokenizer, const std::string& name) {
    if (!name.empty()) {
        const auto family = chat_template_family_from_name(name);
        if (!family) {
            throw ConfigError(fmt::format("--chat-template \"{}\" is not one of chatml, llama3, llama2, zephyr, phi3", name));
        }
        return chat_template_for(*family);
    }
    ChatTemplateInfo info = detect_chat_template(tokenizer.chat_template());
    if (!info.recognised) {
        throw ConfigError(fmt::format("the model's chat template is not one this server knows (it begins \"{}\"); "
                                      "pass --chat-template chatml|llama3|llama2|zephyr|phi3",
                                      info.unrecognised_excerpt));
    }
    return info;
}

std::vector<std::int32_t> chat_prompt_tokens(const Tokenizer& tokenizer, const ChatTemplateInfo& chat_template,
                                             std::span<const ChatMessage> messages) {
    return encode_chat(tokenizer, chat_template, messages, {.add_generation_prompt = true});
}

std::vector<std::int32_t> completion_prompt_tokens(const Tokenizer& tokenizer, const std::string& prompt) {
    return tokenizer.encode(prompt, {.add_special = true});
}

std::size_t common_prefix(std::span<const std::int32_t> a, std::span<const std::int32_t> b) {
    const std::size_t n = std::min(a.size(), b.size());
    std::size_t i = 0;
    while (i < n && a[i] == b[i]) ++i;
    return i;
}

namespace {

bool is_space(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }

/// `text` with every whitespace run turned into one space, and for each kept byte its offset in `text`.
std::string collapse_whitespace(const std::string& text, std::vector<std::size_t>* offsets) {
    std::string out;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (is_space(text[i])) {
            if (!out.empty() && out.back() == ' ') continue;
            out += ' ';
        } else {
            out += text[i];
        }
        if (offsets) offsets->push_back(i);
    }
    return out;
}

std::string trim(const std::string& s) {
    std::size_t a = 0, b = s.size();
    while (a < b && is_space(s[a])) ++a;
    while (b > a && is_space(s[b - 1])) --b;
    return s.substr(a, b - a);
}

}  // namespace

std::string follow_up_message(const Tokenizer& tokenizer, std::span<const ChatMessage> conversation,
                              const std::string& excerpt, std::size_t context_window, const std::string& prompt) {
    const std::string wanted = collapse_whitespace(trim(excerpt), nullptr);
    if (wanted.empty()) return prompt;
    for (auto m = conversation.rbegin(); m != conversation.rend(); ++m) {
        if (m->role != "assistant") continue;
        std::vector<std::size_t> offsets;
        const std::string haystack = collapse_whitespace(m->content, &offsets);
        const std::size_t at = haystack.find(wanted);
        if (at == std::string::npos) continue;
        const std::size_t begin = offsets[at], end = offsets[at + wanted.size() - 1] + 1;
        const std::string& answer = m->content;
        std::string before, after;
        if (context_window > 0) {
            const auto pre = tokenizer.encode(answer.substr(0, begin), {.add_special = false});
            const auto post = tokenizer.encode(answer.substr(end), {.add_special = false});
            const std::size_t np = std::min(context_window, pre.size()), nq = std::min(context_window, post.size());
            before = tokenizer.decode(std::span(pre).subspan(pre.size() - np), {.render_special = false});
            after = tokenizer.decode(std::span(post).first(nq), {.render_special = false});
            if (np < pre.size()) before = "…" + before;
            if (nq < post.size()) after += "…";
        }
        return fmt::format("About this passage of your answer: \"{}{}{}\"\n{}", before, answer.substr(begin, end - begin),
                           after, prompt);
    }
    throw bad_request("excerpt_not_found", "'text_excerpt' is not part of any answer in this conversation", "text_excerpt");
}

}  // namespace kvcache::server
