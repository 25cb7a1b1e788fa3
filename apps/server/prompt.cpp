#include "prompt.hpp"

#include <algorithm>
#include <cctype>

#include <fmt/format.h>

#include "api_error.hpp"

namespace kvcache::server {

std::vector<std::int32_t> chat_prompt_tokens(const Tokenizer& tokenizer, std::span<const ChatMessage> messages,
                                             bool add_generation_prompt) {
    // The template is rendered with a placeholder for each message's content; the template text between
    // placeholders is encoded with its special tokens, the contents literally.
    // TODO(h9): replace by kvcache::encode_chat once it is on main (the same contract).
    std::vector<ChatMessage> marked(messages.begin(), messages.end());
    for (std::size_t i = 0; i < marked.size(); ++i) marked[i].content = fmt::format("\x01kvcache-message-{}\x01", i);
    const std::string rendered = apply_chat_template(tokenizer.chat_template(), marked, add_generation_prompt);
    std::vector<std::int32_t> out;
    std::size_t pos = 0;
    bool first = true;
    auto add = [&](std::string_view text, bool parse_special) {
        if (text.empty() && !first) return;
        const auto ids = tokenizer.encode(text, /*add_special=*/first, parse_special);
        out.insert(out.end(), ids.begin(), ids.end());
        first = false;
    };
    for (std::size_t i = 0; i < messages.size(); ++i) {
        const std::size_t at = rendered.find(marked[i].content, pos);
        if (at == std::string::npos) continue;  // a template that drops a message (none of ours do)
        add(std::string_view(rendered).substr(pos, at - pos), true);
        add(messages[i].content, false);
        pos = at + marked[i].content.size();
    }
    add(std::string_view(rendered).substr(pos), true);
    return out;
}

std::vector<std::int32_t> completion_prompt_tokens(const Tokenizer& tokenizer, const std::string& prompt) {
    return tokenizer.encode(prompt, /*add_special=*/true, /*parse_special=*/false);
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
            const auto pre = tokenizer.encode(answer.substr(0, begin), false, false);
            const auto post = tokenizer.encode(answer.substr(end), false, false);
            const std::size_t np = std::min(context_window, pre.size()), nq = std::min(context_window, post.size());
            before = tokenizer.decode(std::span(pre).subspan(pre.size() - np), false);
            after = tokenizer.decode(std::span(post).first(nq), false);
            if (np < pre.size()) before = "…" + before;
            if (nq < post.size()) after += "…";
        }
        return fmt::format("About this passage of your answer: \"{}{}{}\"\n{}", before, answer.substr(begin, end - begin),
                           after, prompt);
    }
    throw bad_request("excerpt_not_found", "'text_excerpt' is not part of any answer in this conversation", "text_excerpt");
}

}  // namespace kvcache::server
