// The real SmolLM2 GGUF file: it reads and dequantises (skipped when the model is not fetched).
#include "gguf_test_support.hpp"

// ---- the real model --------------------------------------------------------------------------------------------

TEST_CASE("the default SmolLM2 model reads and dequantises", "[gguf][model]") {
    const fs::path path = model_path();
    if (!fs::exists(path)) {
        WARN("skipped: " << path.string() << " not found (run scripts/fetch-model.sh)");
        return;
    }
    const File f = File::open(path);
    CHECK(f.version() == 3);
    CHECK(f.alignment() == 32);
    CHECK(f.get_string("general.architecture") == "llama");
    CHECK(f.get_uint("llama.block_count") == 30);
    CHECK(f.get_uint("llama.embedding_length") == 576);
    CHECK(f.get_uint("llama.attention.head_count") == 9);
    CHECK(f.get_uint("llama.attention.head_count_kv") == 3);
    CHECK(f.get_float("llama.rope.freq_base") == 100000.0);
    CHECK(f.get_string("tokenizer.ggml.model") == "gpt2");
    CHECK(f.get_string_array("tokenizer.ggml.tokens").size() == 49152);
    CHECK(f.get_int_array("tokenizer.ggml.token_type").size() == 49152);
    CHECK(f.metadata().size() == 33);
    REQUIRE(f.tensors().size() == 272);

    const TensorInfo& embd = f.tensor("token_embd.weight");
    CHECK(embd.shape == std::vector<std::uint64_t>{576, 49152});
    CHECK(embd.type == TensorType::Q8_0);
    CHECK(embd.rows() == 49152);
    CHECK(embd.n_bytes == 49152u * 576 / 32 * 34);

    std::size_t q4_1 = 0, q8_0 = 0, f32 = 0;
    std::uint64_t end = 0;
    for (const auto& t : f.tensors()) {
        q4_1 += t.type == TensorType::Q4_1;
        q8_0 += t.type == TensorType::Q8_0;
        f32 += t.type == TensorType::F32;
        end = std::max(end, t.offset + t.n_bytes);
        CHECK(t.n_bytes == t.n_elements / kvcache::gguf::block_elements(t.type) * kvcache::gguf::block_bytes(t.type));
    }
    CHECK(q4_1 == 210);
    CHECK(q8_0 == 1);
    CHECK(f32 == 61);
    CHECK(end < fs::file_size(path));

    // one row of each type, finite
    for (const char* name : {"token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_norm.weight"}) {
        const TensorInfo& t = f.tensor(name);
        std::vector<float> row(t.row_length());
        kvcache::gguf::dequantize_row(t, t.rows() - 1, row.data());
        CHECK(std::all_of(row.begin(), row.end(), [](float v) { return std::isfinite(v); }));
        CHECK(std::any_of(row.begin(), row.end(), [](float v) { return v != 0.0f; }));
    }

    // golden rows from gguf-py (written by make_gguf_fixtures.py when the model was present)
    const fs::path rows_path = fixture_dir() / "smollm2_rows.json";
    REQUIRE(fs::exists(rows_path));
    const json golden = read_json(rows_path);
    for (const auto& r : golden.at("rows")) {
        const auto name = r.at("tensor").get<std::string>();
        const auto index = r.at("row").get<std::size_t>();
        INFO(name << " row " << index);
        const TensorInfo& t = f.tensor(name);
        CHECK(kvcache::gguf::tensor_type_name(t.type) == r.at("type").get<std::string>());
        std::vector<float> row(t.row_length());
        if (t.shape.size() >= 2) {
            kvcache::gguf::dequantize_row(t, index, row.data());
        } else {
            row = kvcache::gguf::dequantize(t);
        }
        CHECK(count_mismatches(expected_bits(r), row.data(), row.size(), name) == 0);
    }
}
