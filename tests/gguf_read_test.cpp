// Reading GGUF files: golden files against gguf-py's manifests (from memory and memory-mapped), every typed
// getter and its errors, and opening files that are missing or malformed.
#include "gguf_test_support.hpp"

// ---- golden files ----------------------------------------------------------------------------------------------

TEST_CASE("golden files read through from_memory match gguf-py's manifest", "[gguf][golden]") {
    for (const char* name : kGoldenFiles) {
        INFO(name);
        const auto bytes = read_bytes(fixture_dir() / (std::string(name) + ".gguf"));
        const json m = read_json(fixture_dir() / (std::string(name) + ".json"));
        REQUIRE(bytes.size() == m.at("file_size").get<std::size_t>());
        const File f = File::from_memory(bytes);
        check_against_manifest(f, m, bytes.data());
    }
}

TEST_CASE("golden files read through open (memory-mapped) match gguf-py's manifest", "[gguf][golden][open]") {
    for (const char* name : kGoldenFiles) {
        INFO(name);
        const json m = read_json(fixture_dir() / (std::string(name) + ".json"));
        const File f = File::open(fixture_dir() / (std::string(name) + ".gguf"));
        check_against_manifest(f, m, nullptr);
    }
}

TEST_CASE("a golden file parses from a buffer at an odd address (no aligned loads assumed)", "[gguf][golden]") {
    for (const char* name : kGoldenFiles) {
        INFO(name);
        const auto bytes = read_bytes(fixture_dir() / (std::string(name) + ".gguf"));
        const json m = read_json(fixture_dir() / (std::string(name) + ".json"));
        std::vector<std::byte> shifted(bytes.size() + 1);
        std::memcpy(shifted.data() + 1, bytes.data(), bytes.size());
        const File f = File::from_memory(std::span<const std::byte>(shifted.data() + 1, bytes.size()));
        check_against_manifest(f, m, shifted.data() + 1);
    }
}

TEST_CASE("File moves keep tensors pointing into the same mapping", "[gguf][open]") {
    File a = File::open(fixture_dir() / "all_types_v3.gguf");
    const std::byte* data = a.tensor("q6_k_2d").data;
    const std::vector<float> before = kvcache::gguf::dequantize(a.tensor("q6_k_2d"));
    File b(std::move(a));
    CHECK(b.tensor("q6_k_2d").data == data);
    File c = File::open(fixture_dir() / "handmade_v2.gguf");
    c = std::move(b);
    CHECK(c.version() == 3);
    CHECK(c.tensor("q6_k_2d").data == data);
    CHECK(kvcache::gguf::dequantize(c.tensor("q6_k_2d")) == before);
}

// ---- typed getters ---------------------------------------------------------------------------------------------

TEST_CASE("typed getters return values of the right types and convert integers that fit", "[gguf][metadata]") {
    const File f = File::open(fixture_dir() / "all_types_v3.gguf");

    CHECK(f.get_string("general.architecture") == "kvtest");
    CHECK(f.get_string("test.string") == "hello, gguf");
    CHECK(f.get_string("test.string_utf8") == "h\xC3\xA9llo \xE4\xB8\x96\xE7\x95\x8C \xF0\x9F\x8E\x89 tab\tnl\n");
    CHECK(f.get_string("test.string_empty").empty());

    CHECK(f.get_uint("test.uint8") == 200);
    CHECK(f.get_uint("test.uint16") == 60000);
    CHECK(f.get_uint("test.uint32") == 4000000000u);
    CHECK(f.get_uint("test.uint64") == std::numeric_limits<std::uint64_t>::max());
    CHECK(f.get_uint("test.int8_pos") == 100);
    CHECK(f.get_uint("test.int32_pos") == 123456);
    CHECK(f.get_uint("test.int64_pos") == (std::uint64_t{1} << 40));
    CHECK(f.get_uint("general.alignment") == 64);

    CHECK(f.get_int("test.int8") == -100);
    CHECK(f.get_int("test.int16") == -30000);
    CHECK(f.get_int("test.int32") == -2000000000);
    CHECK(f.get_int("test.int64") == std::numeric_limits<std::int64_t>::min());
    CHECK(f.get_int("test.int16_neg1") == -1);
    CHECK(f.get_int("test.uint8") == 200);
    CHECK(f.get_int("test.uint32") == 4000000000);
    CHECK(f.get_int("test.uint64_small") == 42);

    CHECK(f.get_float("test.float32") == static_cast<double>(static_cast<float>(3.14159265358979323846)));
    CHECK(f.get_float("test.float32_neg") == -0.375);
    CHECK(f.get_float("test.float64") == 0.1);

    CHECK(f.get_bool("test.bool_true"));
    CHECK_FALSE(f.get_bool("test.bool_false"));

    CHECK(f.get_string_array("test.arr_string") == std::vector<std::string>{"a", "", "\xC3\xBCn\xC3\xAF", "with space"});
    CHECK(f.get_float_array("test.arr_float32") == std::vector<float>{0.5f, -1.25f, 1e-3f, 65504.0f});
    CHECK(f.get_int_array("test.arr_int32") == std::vector<std::int64_t>{-2147483648LL, 2147483647, 0, -7});
    CHECK(f.get_int_array("test.arr_int64") ==
          std::vector<std::int64_t>{std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max()});
    // any integer element type whose values fit int64
    CHECK(f.get_int_array("test.arr_uint8") == std::vector<std::int64_t>{0, 1, 255});
    CHECK(f.get_int_array("test.arr_int8") == std::vector<std::int64_t>{-128, 0, 127});
    CHECK(f.get_int_array("test.arr_uint16") == std::vector<std::int64_t>{0, 65535});
    CHECK(f.get_int_array("test.arr_int16") == std::vector<std::int64_t>{-32768, 32767, -1});
    CHECK(f.get_int_array("test.arr_uint32") == std::vector<std::int64_t>{0, 4294967295LL, 5});
    CHECK(f.get_int_array("test.arr_uint64_small") == std::vector<std::int64_t>{1, 2, 3});

    CHECK(f.get_string_or("test.string", "x") == "hello, gguf");
    CHECK(f.get_string_or("test.absent", "fallback") == "fallback");
    CHECK(f.get_uint_or("test.uint16", 5) == 60000);
    CHECK(f.get_uint_or("test.absent", 5) == 5);
    CHECK(f.get_float_or("test.float64", 2.0) == 0.1);
    CHECK(f.get_float_or("test.absent", 2.5) == 2.5);
    CHECK(f.get_bool_or("test.bool_false", true) == false);
    CHECK(f.get_bool_or("test.absent", true) == true);

    CHECK(f.find("test.absent") == nullptr);
    CHECK(f.find("") == nullptr);
    CHECK(f.find("test.uint") == nullptr);  // a prefix of real keys is not a key
    CHECK(f.find_tensor("absent") == nullptr);
    CHECK(f.find_tensor("blk.0") == nullptr);
}

TEST_CASE("nested arrays keep their structure", "[gguf][metadata]") {
    const File f = File::open(fixture_dir() / "all_types_v3.gguf");
    const KeyValue* kv = f.find("test.arr_nested3_string");
    REQUIRE(kv != nullptr);
    REQUIRE(kv->type == ValueType::ARRAY);
    const auto& outer = std::get<std::shared_ptr<Array>>(kv->value);
    REQUIRE(outer->element_type == ValueType::ARRAY);
    REQUIRE(outer->values.size() == 2);
    const auto& mid = std::get<std::shared_ptr<Array>>(outer->values[0]);
    REQUIRE(mid->values.size() == 2);
    const auto& inner = std::get<std::shared_ptr<Array>>(mid->values[1]);
    CHECK(inner->element_type == ValueType::STRING);
    CHECK(std::get<std::string>(inner->values.at(1)) == "z");
    // arrays of arrays are not flat arrays of anything
    CHECK_THROWS_AS(f.get_int_array("test.arr_nested_int32"), FormatError);
    CHECK_THROWS_AS(f.get_string_array("test.arr_nested3_string"), FormatError);

    const File v2 = File::open(fixture_dir() / "handmade_v2.gguf");
    CHECK(v2.version() == 2);
    CHECK(v2.alignment() == 32);
    CHECK(v2.get_int_array("test.v2.empty_array").empty());
    CHECK(v2.get_string_array("test.v2.empty_string_array").empty());
    const auto& nested = std::get<std::shared_ptr<Array>>(v2.find("test.v2.nested_uint64")->value);
    REQUIRE(nested->values.size() == 3);
    CHECK(std::get<std::shared_ptr<Array>>(nested->values[1])->values.empty());
    CHECK(std::get<std::uint64_t>(std::get<std::shared_ptr<Array>>(nested->values[0])->values[1]) ==
          std::numeric_limits<std::uint64_t>::max());
    // an empty array still has an element type, and the getters check it
    CHECK_THROWS_AS(v2.get_string_array("test.v2.empty_array"), FormatError);
    CHECK_THROWS_AS(v2.get_int_array("test.v2.empty_string_array"), FormatError);
    CHECK_THROWS_AS(v2.get_float_array("test.v2.empty_string_array"), FormatError);
    CHECK_THROWS_AS(v2.get_int_array("test.v2.nested_empty"), FormatError);
    const auto& empty_outer = std::get<std::shared_ptr<Array>>(v2.find("test.v2.nested_empty")->value);
    CHECK(empty_outer->element_type == ValueType::ARRAY);
    CHECK(empty_outer->values.empty());
}

TEST_CASE("typed getters throw FormatError naming the key on a wrong type, a missing key or a value that does not fit",
          "[gguf][metadata][errors]") {
    const File f = File::open(fixture_dir() / "all_types_v3.gguf");
    const auto throws_naming = [](auto&& call, const std::string& key) {
        INFO("key " << key);
        CHECK_THROWS_AS(call(), FormatError);
        CHECK_THROWS_WITH(call(), Catch::Contains(key));
    };
    // missing
    for (const std::string key : {"test.absent", ""}) {
        throws_naming([&] { return f.get_string(key); }, key);
        throws_naming([&] { return f.get_uint(key); }, key);
        throws_naming([&] { return f.get_int(key); }, key);
        throws_naming([&] { return f.get_float(key); }, key);
        throws_naming([&] { return f.get_bool(key); }, key);
        throws_naming([&] { return f.get_string_array(key); }, key);
        throws_naming([&] { return f.get_float_array(key); }, key);
        throws_naming([&] { return f.get_int_array(key); }, key);
    }
    throws_naming([&] { return f.tensor("no.such.tensor"); }, "no.such.tensor");

    // wrong types
    for (const std::string key : {"test.uint32", "test.bool_true", "test.arr_string", "test.float32"})
        throws_naming([&] { return f.get_string(key); }, key);
    for (const std::string key : {"test.float32", "test.float64", "test.bool_true", "test.string", "test.arr_uint8"}) {
        throws_naming([&] { return f.get_uint(key); }, key);
        throws_naming([&] { return f.get_int(key); }, key);
    }
    for (const std::string key : {"test.uint32", "test.int8", "test.string", "test.bool_false", "test.arr_float32"})
        throws_naming([&] { return f.get_float(key); }, key);
    for (const std::string key : {"test.uint8", "test.string", "test.arr_bool"})
        throws_naming([&] { return f.get_bool(key); }, key);
    for (const std::string key : {"test.string", "test.arr_int32", "test.arr_nested3_string"})
        throws_naming([&] { return f.get_string_array(key); }, key);
    for (const std::string key : {"test.float32", "test.arr_string", "test.arr_int32", "test.arr_nested_int32"})
        throws_naming([&] { return f.get_float_array(key); }, key);
    for (const std::string key : {"test.int32", "test.arr_string", "test.arr_float32", "test.arr_bool"})
        throws_naming([&] { return f.get_int_array(key); }, key);

    // values that do not fit
    throws_naming([&] { return f.get_uint("test.int8"); }, "test.int8");           // -100
    throws_naming([&] { return f.get_uint("test.int16_neg1"); }, "test.int16_neg1");
    throws_naming([&] { return f.get_uint("test.int64"); }, "test.int64");
    throws_naming([&] { return f.get_int("test.uint64"); }, "test.uint64");       // 2^64-1
    throws_naming([&] { return f.get_int("test.uint64_big_int"); }, "test.uint64_big_int");  // 2^63
    throws_naming([&] { return f.get_int_array("test.arr_uint64"); }, "test.arr_uint64");    // holds 2^64-1

    // the _or variants only fall back when the key is absent
    throws_naming([&] { return f.get_string_or("test.uint8", "x"); }, "test.uint8");
    throws_naming([&] { return f.get_uint_or("test.string", 1); }, "test.string");
    throws_naming([&] { return f.get_uint_or("test.int8", 1); }, "test.int8");
    throws_naming([&] { return f.get_float_or("test.string", 1.0); }, "test.string");
    throws_naming([&] { return f.get_bool_or("test.uint8", false); }, "test.uint8");
}

TEST_CASE("metadata-only and version-2 files expose what they hold", "[gguf][metadata]") {
    const File m = File::open(fixture_dir() / "metadata_only_v3.gguf");
    CHECK(m.tensors().empty());
    CHECK(m.alignment() == 32);  // no general.alignment key: the default
    const auto words = m.get_string_array("test.words");
    REQUIRE(words.size() == 300);
    CHECK(words[0] == "tok000");
    CHECK(words[299] == "tok299");
    const auto scores = m.get_float_array("test.scores");
    REQUIRE(scores.size() == 300);
    CHECK(scores[21] == 0.5f);
    CHECK(m.get_uint("test.count") == words.size());

    const File v2 = File::open(fixture_dir() / "handmade_v2.gguf");
    CHECK(v2.get_float("test.v2.float64") == -1.0e300);
    CHECK(v2.get_float_array("test.v2.float32_array") == std::vector<float>{1.0f, -0.0f, 3.5f});
    CHECK(std::signbit(v2.get_float_array("test.v2.float32_array")[1]));
    const TensorInfo& q = v2.tensor("v2.q4_1");
    CHECK(q.shape == std::vector<std::uint64_t>{32});
    CHECK(q.rows() == 1);
    CHECK(q.row_length() == 32);
}

// ---- opening files ---------------------------------------------------------------------------------------------

TEST_CASE("open reports missing files as IoError and malformed ones as FormatError", "[gguf][open][errors]") {
    const fs::path missing = fixture_dir() / "does-not-exist.gguf";
    CHECK_THROWS_AS(File::open(missing), kvcache::IoError);
    CHECK_THROWS_WITH(File::open(missing), Catch::Contains("does-not-exist.gguf"));
    CHECK_THROWS_AS(File::open(fixture_dir()), kvcache::Error);  // a directory

    const fs::path tmp = fs::temp_directory_path() / ("kvcache_gguf_test_" + std::to_string(::getpid()));
    fs::create_directories(tmp);
    {
        std::ofstream(tmp / "empty.gguf", std::ios::binary).flush();
        CHECK_THROWS_AS(File::open(tmp / "empty.gguf"), FormatError);
        std::ofstream(tmp / "text.gguf", std::ios::binary) << "this is not a gguf file at all, just text\n";
        CHECK_THROWS_AS(File::open(tmp / "text.gguf"), FormatError);
        CHECK_THROWS_WITH(File::open(tmp / "text.gguf"), Catch::Contains("text.gguf"));  // says which file
        // a golden file cut short on disk
        const auto bytes = read_bytes(fixture_dir() / "all_types_v3.gguf");
        std::ofstream cut(tmp / "cut.gguf", std::ios::binary);
        cut.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size() / 2));
        cut.close();
        CHECK_THROWS_AS(File::open(tmp / "cut.gguf"), FormatError);
    }
    fs::remove_all(tmp);
}
