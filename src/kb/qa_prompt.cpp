// The QA prompt: chat template rendering with literal message contents, split after the system turn.
#include "kvcache/kb/qa_prompt.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "kvcache/error.hpp"
#include "kvcache/model/tokenizer.hpp"

namespace kvcache {

namespace {

// Placeholders for message contents while the template is rendered: control characters no template writes.
std::string placeholder(std::size_t i) { return fmt::format("\x02{}\x03", i); }

}  // namespace

std::vector<std::int32_t> encode_chat_literal(const Tokenizer& tokenizer, std::span<const ChatMessage> messages,
                                              bool add_generation_prompt) {
    std::vector<ChatMessage> marked(messages.begin(), messages.end());
    for (std::size_t i = 0; i < marked.size(); ++i) marked[i].content = placeholder(i);
    const std::string rendered = apply_chat_template(tokenizer.chat_template(), marked, add_generation_prompt);
    std::vector<std::int32_t> out;
    if (tokenizer.add_bos() && tokenizer.bos_id() >= 0) out.push_back(tokenizer.bos_id());
    auto append = [&](const std::vector<std::int32_t>& ids) { out.insert(out.end(), ids.begin(), ids.end()); };
    std::size_t at = 0;
    while (at < rendered.size()) {
        const std::size_t open = rendered.find('\x02', at);
        const std::size_t stop = open == std::string::npos ? rendered.size() : open;
        if (stop > at) append(tokenizer.encode(std::string_view(rendered).substr(at, stop - at), false, true));
        if (open == std::string::npos) break;
        const std::size_t close = rendered.find('\x03', open);
        const std::size_t index = std::stoul(rendered.substr(open + 1, close - open - 1));
        append(tokenizer.encode(messages[index].content, false, false));
        at = close + 1;
    }
    return out;
}

QAPromptFormat::QAPromptFormat(const Tokenizer& tokenizer, std::string instructions)
    : tokenizer_(&tokenizer), instructions_(std::move(instructions)) {
    // Probe with two different knowledges and questions: the knowledge part must be a prefix of the whole
    // prompt, and the question part must not depend on the knowledge.
    const std::vector<ChatMessage> a = messages("alpha", "one?"), b = messages("beta gamma", "two?");
    const std::vector<ChatMessage> a_system(a.begin(), a.begin() + 1), b_system(b.begin(), b.begin() + 1);
    const auto whole_a = encode_chat_literal(tokenizer, a, true), part_a = encode_chat_literal(tokenizer, a_system, false);
    const auto whole_b = encode_chat_literal(tokenizer, b, true), part_b = encode_chat_literal(tokenizer, b_system, false);
    const bool prefixes = whole_a.size() > part_a.size() && whole_b.size() > part_b.size() &&
                          std::equal(part_a.begin(), part_a.end(), whole_a.begin()) &&
                          std::equal(part_b.begin(), part_b.end(), whole_b.begin());
    if (!prefixes) {
        throw ConfigError("QAPromptFormat: in this chat template the system turn is not a token prefix of the "
                          "conversation, so a knowledge cache could not be continued by a question");
    }
    question_offset_ = part_a.size();
}

std::vector<ChatMessage> QAPromptFormat::messages(std::string_view knowledge, std::string_view question) const {
    return {ChatMessage{"system", instructions_ + "\n\n" + std::string(knowledge)},
            ChatMessage{"user", std::string(question)}};
}

std::vector<std::int32_t> QAPromptFormat::knowledge_tokens(std::string_view knowledge) const {
    const std::vector<ChatMessage> m = messages(knowledge, "");
    return encode_chat_literal(*tokenizer_, std::span<const ChatMessage>(m.data(), 1), false);
}

std::vector<std::int32_t> QAPromptFormat::question_tokens(std::string_view question) const {
    // The probe knowledge's part is cut off; contents are encoded on their own, so the rest does not depend on it.
    const std::vector<ChatMessage> m = messages("alpha", question);
    std::vector<std::int32_t> whole = encode_chat_literal(*tokenizer_, m, true);
    return std::vector<std::int32_t>(whole.begin() + static_cast<std::ptrdiff_t>(question_offset_), whole.end());
}

std::vector<std::int32_t> QAPromptFormat::prompt_tokens(std::string_view knowledge, std::string_view question) const {
    std::vector<std::int32_t> out = knowledge_tokens(knowledge);
    const std::vector<std::int32_t> q = question_tokens(question);
    out.insert(out.end(), q.begin(), q.end());
    return out;
}

}  // namespace kvcache
