// Cache files with the reference decoder: a sequence saved after its prompt and loaded into a fresh cache
// continues with logits bitwise equal to a cold run of the whole sequence; a file for another model is
// refused by its fingerprint with the cache untouched.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <vector>

#include "kvcache/model/decoder.hpp"
#include "kvcache/model/gguf.hpp"
#include "kvcache/persist/cache_file.hpp"

using namespace kvcache;

namespace {

std::filesystem::path model_path() {
    if (const char* env = std::getenv("KVCACHE_MODEL")) return env;
    return std::filesystem::path(KVCACHE_SOURCE_DIR) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
}

std::filesystem::path temp_file(const char* name) {
    return std::filesystem::temp_directory_path() / (std::string("kvcache_model_test_") + name + ".kvc");
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

/// Cold: the whole sequence at once. Warm: the first `saved` tokens, saved to a file, loaded into a new
/// cache, then the rest. Both return the last token's logits.
void check_loaded_equals_cold(Decoder& d, const std::vector<std::int32_t>& tokens, std::size_t saved,
                              const CacheFingerprint& fp, const std::filesystem::path& path) {
    const std::size_t vocab = d.config().vocab_size;
    std::vector<float> cold(vocab), warm(vocab), scratch(vocab);
    auto cold_cache = d.make_cache(tokens.size());
    d.forward(tokens, cold_cache, 0, cold);

    auto first = d.make_cache(tokens.size());
    const std::span<const std::int32_t> all(tokens);
    d.forward(all.first(saved), first, 0, scratch);
    save_cache_file(path, first, 0, all.first(saved), fp);

    auto loaded = d.make_cache(tokens.size());
    const CacheFileInfo info = load_cache_file(path, loaded, 0, fp);
    CHECK(info.tokens == std::vector<std::int32_t>(tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(saved)));
    CHECK(loaded.seq_len(0, 0) == saved);
    d.forward(all.subspan(saved), loaded, 0, warm);
    CHECK(same_bits(warm, cold));

    // The file refuses a cache of another model: FingerprintMismatch, and the target cache stays empty.
    auto other = d.make_cache(tokens.size());
    CacheFingerprint wrong = fp;
    wrong.model += " (another model)";
    CHECK_THROWS_AS(load_cache_file(path, other, 0, wrong), FingerprintMismatch);
    CHECK(other.seq_len(0, 0) == 0);
    std::filesystem::remove(path);
}

}  // namespace

TEST_CASE("random decoder: a loaded cache file continues bitwise like the cold run") {
    Decoder d(DecoderWeights::random(DecoderConfig::small_test_model(), 99), 1);
    std::vector<std::int32_t> tokens;
    for (std::int32_t i = 0; i < 70; ++i) tokens.push_back((i * 37 + 5) % static_cast<std::int32_t>(d.config().vocab_size));
    auto probe = d.make_cache(1);
    const CacheFingerprint fp = make_fingerprint("random small_test_model seed 99", probe);
    for (std::size_t saved : {std::size_t{1}, std::size_t{64}, std::size_t{69}}) {
        CAPTURE(saved);
        check_loaded_equals_cold(d, tokens, saved, fp, temp_file("random"));
    }
}

TEST_CASE("SmolLM2: a loaded cache file continues bitwise like the cold run; fingerprints tell models apart") {
    if (!std::filesystem::exists(model_path())) {
        WARN("model file " << model_path() << " is missing (run scripts/fetch-model.sh): skipped");
        return;
    }
    const auto file = gguf::File::open(model_path());
    Decoder d(DecoderWeights::from_gguf(file), 1);
    const std::string id = model_fingerprint(file);
    CHECK(id.rfind("llama ", 0) == 0);
    CHECK(model_fingerprint(file) == id);  // stable
    // A file whose metadata differs in one value has another fingerprint.
    std::vector<std::byte> image(std::filesystem::file_size(model_path()));
    {
        std::FILE* f = std::fopen(model_path().c_str(), "rb");
        REQUIRE(f);
        REQUIRE(std::fread(image.data(), 1, image.size(), f) == image.size());
        std::fclose(f);
    }
    const std::string key = "llama.context_length";
    auto at = std::search(image.begin(), image.end(), reinterpret_cast<const std::byte*>(key.data()),
                          reinterpret_cast<const std::byte*>(key.data() + key.size()));
    REQUIRE(at != image.end());
    at += static_cast<std::ptrdiff_t>(key.size() + 4);  // skip the value type; flip the value's low byte
    *at ^= std::byte{1};
    CHECK(model_fingerprint(gguf::File::from_memory(image)) != id);

    std::vector<std::int32_t> tokens;
    for (std::int32_t i = 0; i < 40; ++i) tokens.push_back(1000 + i * 211);
    auto probe = d.make_cache(1);
    check_loaded_equals_cold(d, tokens, 33, make_fingerprint(id, probe), temp_file("smollm2"));
}
