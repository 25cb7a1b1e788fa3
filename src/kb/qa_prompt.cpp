// The QA prompt: the chat template through encode_chat, split before the question turn.
#include "kvcache/kb/qa_prompt.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "kvcache/error.hpp"
#include "kvcache/model/tokenizer.hpp"

namespace kvcache {

namespace {

std::string fill_question(const std::string& question_template, std::string_view question) {
    std::string out;
    std::size_t at = 0;
    for (std::size_t p; (p = question_template.find("{question}", at)) != std::string::npos; at = p + 10) {
        out.append(question_template, at, p - at);
        out += question;
    }
    out.append(question_template, at);
    return out;
}

}  // namespace

std::vector<QAExample> default_qa_examples() {
    return {{"Who is the mayor of Oakhollow?", "Tamsin Reed"}, {"In which year was the Lantern Society founded?", "1788"}};
}

QAPromptFormat::QAPromptFormat(const Tokenizer& tokenizer, std::string instructions, std::string question_template,
                               std::vector<QAExample> examples, std::string answer_prefix)
    : tokenizer_(&tokenizer),
      instructions_(std::move(instructions)),
      question_template_(std::move(question_template)),
      examples_(std::move(examples)),
      answer_prefix_(std::move(answer_prefix)) {
    if (question_template_.find("{question}") == std::string::npos) {
        throw ConfigError(fmt::format("QAPromptFormat: the question template \"{}\" has no {{question}}",
                                      question_template_));
    }
    // Probe with two different knowledges and questions: the knowledge part must be a prefix of the whole
    // prompt, and the question part must not depend on the knowledge.
    const std::vector<ChatMessage> a = messages("alpha", "one?"), b = messages("beta gamma", "two?");
    const std::span<const ChatMessage> a_fixed(a.data(), a.size() - 1), b_fixed(b.data(), b.size() - 1);
    const auto whole_a = encode_chat(tokenizer, a, {.add_generation_prompt = true});
    const auto part_a = encode_chat(tokenizer, a_fixed, {.add_generation_prompt = false});
    const auto whole_b = encode_chat(tokenizer, b, {.add_generation_prompt = true});
    const auto part_b = encode_chat(tokenizer, b_fixed, {.add_generation_prompt = false});
    const bool prefixes = whole_a.size() > part_a.size() && whole_b.size() > part_b.size() &&
                          std::equal(part_a.begin(), part_a.end(), whole_a.begin()) &&
                          std::equal(part_b.begin(), part_b.end(), whole_b.begin());
    if (!prefixes) {
        throw ConfigError("QAPromptFormat: in this chat template the turns before the question are not a token "
                          "prefix of the conversation, so a knowledge cache could not be continued by a question");
    }
    question_offset_ = part_a.size();
}

std::vector<ChatMessage> QAPromptFormat::messages(std::string_view knowledge, std::string_view question) const {
    std::vector<ChatMessage> out{ChatMessage{"system", instructions_ + "\n\n" + std::string(knowledge)}};
    for (const QAExample& e : examples_) {
        out.push_back(ChatMessage{"user", fill_question(question_template_, e.question)});
        out.push_back(ChatMessage{"assistant", e.answer});
    }
    out.push_back(ChatMessage{"user", fill_question(question_template_, question)});
    return out;
}

std::vector<std::int32_t> QAPromptFormat::knowledge_tokens(std::string_view knowledge) const {
    const std::vector<ChatMessage> m = messages(knowledge, "");
    return encode_chat(*tokenizer_, std::span<const ChatMessage>(m.data(), m.size() - 1),
                       {.add_generation_prompt = false});
}

std::vector<std::int32_t> QAPromptFormat::question_tokens(std::string_view question) const {
    // The probe knowledge's part is cut off; contents are encoded on their own, so the rest does not depend on it.
    const std::vector<ChatMessage> m = messages("alpha", question);
    std::vector<std::int32_t> whole = encode_chat(*tokenizer_, m, {.add_generation_prompt = true});
    std::vector<std::int32_t> out(whole.begin() + static_cast<std::ptrdiff_t>(question_offset_), whole.end());
    if (!answer_prefix_.empty()) {
        const std::vector<std::int32_t> prefix = tokenizer_->encode(answer_prefix_, {.add_special = false});
        out.insert(out.end(), prefix.begin(), prefix.end());
    }
    return out;
}

std::vector<std::int32_t> QAPromptFormat::prompt_tokens(std::string_view knowledge, std::string_view question) const {
    std::vector<std::int32_t> out = knowledge_tokens(knowledge);
    const std::vector<std::int32_t> q = question_tokens(question);
    out.insert(out.end(), q.begin(), q.end());
    return out;
}

}  // namespace kvcache
