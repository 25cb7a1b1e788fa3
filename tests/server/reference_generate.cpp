// server_reference: the tokens generate_with_cache gives for a chat conversation or a raw prompt, encoded
// exactly as kvcache-server encodes them — what the server tests compare the HTTP answers with.
//
//   server_reference MODEL.gguf '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}'
//   -> {"prompt_tokens": 31, "tokens": [...], "text": "..."}      (an array of requests gives an array)
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdio>

#include "kvcache/error.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/model/cache_options.hpp"
#include "kvcache/model/generate.hpp"
#include "kvcache/model/load_model.hpp"
#include "kvcache/model/tokenizer.hpp"
#include "prompt.hpp"

namespace {

nlohmann::json generate_one(kvcache::Decoder& model, const kvcache::Tokenizer& tokenizer, const nlohmann::json& request) {
    std::vector<std::int32_t> prompt;
    if (request.contains("messages")) {
        std::vector<kvcache::ChatMessage> messages;
        for (const auto& m : request["messages"]) messages.push_back({m["role"], m["content"]});
        prompt = kvcache::server::chat_prompt_tokens(tokenizer, kvcache::server::server_chat_template(tokenizer),
                                                     messages);
    } else {
        prompt = kvcache::server::completion_prompt_tokens(tokenizer, request["prompt"]);
    }
    kvcache::GenerateOptions options;
    options.max_new_tokens = request.value("max_tokens", 16);
    options.sampling.temperature = request.value("temperature", 0.0f);
    options.sampling.top_k = request.value("top_k", 0);
    options.sampling.top_p = request.value("top_p", 1.0f);
    options.sampling.seed = request.value("seed", std::uint64_t{0});
    // The K/V element type of the server's pool (--cache-type): the same type here gives the same tokens.
    options.cache.keys = options.cache.values = kvcache::parse_cache_element(request.value("cache_type", std::string("f32")));
    const auto result = kvcache::generate_with_cache(model, tokenizer, prompt, options);
    return {{"prompt_tokens", prompt.size()}, {"tokens", result.tokens}, {"text", result.text}};
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        fmt::print(stderr, "usage: server_reference MODEL.gguf REQUEST_JSON\n");
        return 2;
    }
    try {
        const auto input = nlohmann::json::parse(argv[2]);
        auto [model, tokenizer, fingerprint] = kvcache::load_model(argv[1], {.threads = 1});
        nlohmann::json out;
        if (input.is_array()) {
            out = nlohmann::json::array();
            for (const auto& request : input) out.push_back(generate_one(model, tokenizer, request));
        } else {
            out = generate_one(model, tokenizer, input);
        }
        std::puts(out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
        return 0;
    } catch (const std::exception& e) {
        fmt::print(stderr, "error: {}\n", e.what());
        return 1;
    }
}
