// Tests of chat-template formatting: SmolLM2's template against jinja2's output, and the other families by hand.
#include <catch2/catch.hpp>

#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvcache/model/chat.hpp"

using kvcache::ChatMessage;
using kvcache::ChatTemplateFamily;

namespace {

nlohmann::json load_fixture() {
    std::ifstream in(std::string(KVCACHE_FIXTURES_DIR) + "/tokenizer/smollm2.json");
    REQUIRE(in.good());
    return nlohmann::json::parse(in);
}

const std::vector<ChatMessage> kConversation = {
    {"system", "Be brief."},
    {"user", "Hi there "},
    {"assistant", "Hello."},
    {"user", "Bye"},
};

}  // namespace

TEST_CASE("SmolLM2's ChatML template matches jinja2, default system prompt included", "[chat]") {
    const auto fixture = load_fixture();
    const std::string tmpl = fixture["chat_template"];
    const auto info = kvcache::detect_chat_template(tmpl);
    CHECK(info.recognised);
    CHECK(info.family == ChatTemplateFamily::ChatML);
    CHECK(info.default_system_prompt == "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
    REQUIRE(fixture["chats"].size() == 3);
    for (const auto& chat : fixture["chats"]) {
        std::vector<ChatMessage> messages;
        for (const auto& m : chat["messages"]) messages.push_back({m["role"], m["content"]});
        const std::string expected = chat["expected"];
        CHECK(kvcache::apply_chat_template(tmpl, messages, chat["add_generation_prompt"].get<bool>()) == expected);
    }
}

TEST_CASE("ChatML without a default system prompt, and with an escaped one", "[chat]") {
    const std::string qwen_like =
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>' + '\\n'}}{% endfor %}";
    const std::vector<ChatMessage> one = {{"user", "Hi"}};
    CHECK(kvcache::detect_chat_template(qwen_like).default_system_prompt.empty());
    CHECK(kvcache::apply_chat_template(qwen_like, one, true) ==
          "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    const std::string with_default =
        "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are Qwen.<|im_end|>\\n' }}{% endif %}"
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']}}{% endfor %}";
    CHECK(kvcache::detect_chat_template(with_default).default_system_prompt == "You are Qwen.");
    CHECK(kvcache::apply_chat_template(with_default, one, false) ==
          "<|im_start|>system\nYou are Qwen.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
    // An explicit system message replaces the default.
    const std::vector<ChatMessage> sys = {{"system", "S"}, {"user", "U"}};
    CHECK(kvcache::apply_chat_template(with_default, sys, false) ==
          "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n");
    CHECK(kvcache::apply_chat_template(with_default, std::vector<ChatMessage>{}, true) == "<|im_start|>assistant\n");
}

TEST_CASE("Llama-3 header template", "[chat]") {
    const std::string tmpl = "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}";
    CHECK(kvcache::detect_chat_template(tmpl).family == ChatTemplateFamily::Llama3);
    CHECK(kvcache::apply_chat_template(tmpl, kConversation, true) ==
          "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
          "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
          "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
          "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
          "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST_CASE("Llama-2 [INST] template", "[chat]") {
    const std::string tmpl = "{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}";
    CHECK(kvcache::detect_chat_template(tmpl).family == ChatTemplateFamily::Llama2);
    const std::string expected =
        "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi there [/INST] Hello. </s><s>[INST] Bye [/INST]";
    CHECK(kvcache::apply_chat_template(tmpl, kConversation, true) == expected);
    CHECK(kvcache::apply_chat_template(tmpl, kConversation, false) == expected);
}

TEST_CASE("Zephyr and Phi-3 <|user|> templates", "[chat]") {
    const std::string zephyr = "{% if message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + eos_token }}";
    CHECK(kvcache::detect_chat_template(zephyr).family == ChatTemplateFamily::Zephyr);
    const std::vector<ChatMessage> two = {{"system", "S"}, {"user", "U"}};
    CHECK(kvcache::apply_chat_template(zephyr, two, true) == "<|system|>\nS</s>\n<|user|>\nU</s>\n<|assistant|>\n");
    const std::string phi3 = "{{'<|user|>' + '\\n' + message['content'] + '<|end|>' + '\\n'}}";
    CHECK(kvcache::detect_chat_template(phi3).family == ChatTemplateFamily::Phi3);
    CHECK(kvcache::apply_chat_template(phi3, two, false) == "<|system|>\nS<|end|>\n<|user|>\nU<|end|>\n");
}

TEST_CASE("unknown or empty templates fall back to ChatML and say so", "[chat]") {
    for (const std::string& tmpl : {std::string(), std::string("{{ messages | tojson }}")}) {
        const auto info = kvcache::detect_chat_template(tmpl);
        CHECK_FALSE(info.recognised);
        CHECK(info.family == ChatTemplateFamily::ChatML);
        const std::vector<ChatMessage> one = {{"user", "Hi"}};
        CHECK(kvcache::apply_chat_template(tmpl, one, true) ==
              "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }
    CHECK(std::string(kvcache::chat_template_family_name(ChatTemplateFamily::ChatML)) == "chatml");
    CHECK(std::string(kvcache::chat_template_family_name(ChatTemplateFamily::Llama3)) == "llama3");
    CHECK(std::string(kvcache::chat_template_family_name(ChatTemplateFamily::Llama2)) == "llama2");
    CHECK(std::string(kvcache::chat_template_family_name(ChatTemplateFamily::Zephyr)) == "zephyr");
    CHECK(std::string(kvcache::chat_template_family_name(ChatTemplateFamily::Phi3)) == "phi3");
}
