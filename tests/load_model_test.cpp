// load_model (one GGUF file → decoder + tokenizer + fingerprint) and default_model_path.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

#include "kvcache/error.hpp"
#include "kvcache/model/gguf.hpp"
#include "kvcache/model/load_model.hpp"

using namespace kvcache;

namespace {

/// Sets or unsets an environment variable for one scope, then puts the old value back.
class ScopedEnv {
public:
    ScopedEnv(const char* name, const char* value) : name_(name) {
        if (const char* old = std::getenv(name)) old_ = old;
        if (value) ::setenv(name, value, 1);
        else ::unsetenv(name);
    }
    ~ScopedEnv() {
        if (old_) ::setenv(name_, old_->c_str(), 1);
        else ::unsetenv(name_);
    }
    ScopedEnv(const ScopedEnv&) = delete;
    ScopedEnv& operator=(const ScopedEnv&) = delete;

private:
    const char* name_;
    std::optional<std::string> old_;
};

}  // namespace

TEST_CASE("default_model_path: $KVCACHE_MODEL, else models/SmolLM2 under the root", "[load_model]") {
    {
        ScopedEnv unset("KVCACHE_MODEL", nullptr);
        CHECK(default_model_path("/src") == std::filesystem::path("/src/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
        CHECK(default_model_path() == std::filesystem::path("./models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    }
    ScopedEnv set("KVCACHE_MODEL", "/elsewhere/model.gguf");
    CHECK(default_model_path("/src") == std::filesystem::path("/elsewhere/model.gguf"));
}

TEST_CASE("load_model: a missing file is an IoError naming it", "[load_model]") {
    const auto missing = std::filesystem::temp_directory_path() / "kvcache_load_model_test_missing.gguf";
    std::filesystem::remove(missing);
    CHECK_THROWS_AS(load_model(missing), IoError);
    CHECK_THROWS_WITH(load_model(missing), Catch::Contains(missing.string()));
}

TEST_CASE("load_model: the decoder and tokenizer of the file, the fingerprint only when asked", "[load_model]") {
    const std::filesystem::path path = default_model_path(KVCACHE_SOURCE_DIR);
    if (!std::filesystem::exists(path)) {
        WARN("model file " << path << " is missing (run scripts/fetch-model.sh): skipped");
        return;
    }
    const LoadedModel plain = load_model(path, {.threads = 1});
    const gguf::File file = gguf::File::open(path);
    CHECK(plain.decoder.config().n_layers == DecoderConfig::from_gguf(file).n_layers);
    CHECK(plain.decoder.threads() == 1);
    CHECK(plain.tokenizer.encode("Hello world") == Tokenizer::from_gguf(file).encode("Hello world"));
    CHECK(plain.fingerprint.empty());

    const LoadedModel with_fingerprint = load_model(path, {.fingerprint = true});
    CHECK(with_fingerprint.fingerprint == model_fingerprint(file));
    CHECK(with_fingerprint.decoder.weights().bytes() == plain.decoder.weights().bytes());
}
