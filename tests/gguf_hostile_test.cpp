// Hostile GGUF inputs built byte by byte: each must be a FormatError naming the problem, never a crash or an
// absurd allocation.
#include "gguf_test_support.hpp"

// ---- hostile inputs --------------------------------------------------------------------------------------------

TEST_CASE("the hand-built small image is valid (control for the hostile variants)", "[gguf][hostile]") {
    const auto image = build(small_spec());
    const File f = parse_ok(image);
    CHECK(f.version() == 3);
    REQUIRE(f.tensors().size() == 2);
    CHECK(f.tensor("a").offset == 0);
    CHECK(f.tensor("b").offset == 32);
    CHECK(f.tensor("b").data + f.tensor("b").n_bytes == image.data() + image.size());
    CHECK(kvcache::gguf::dequantize(f.tensor("b")).size() == 32);

    ImageSpec v2 = small_spec();
    v2.version = 2;
    CHECK(parse_ok(build(v2)).version() == 2);

    // alignment 1 packs tensors with no padding
    ImageSpec packed = small_spec();
    packed.kvs[1] = kv_u32("general.alignment", 1);
    packed.alignment = 1;
    const auto packed_image = build(packed);
    const File p = parse_ok(packed_image);
    CHECK(p.alignment() == 1);
    CHECK(p.tensor("b").offset == 32);

    // a Q2_K tensor (known to ggml, not dequantised here) opens; only dequantising it fails
    ImageSpec q2 = small_spec();
    q2.tensors.push_back({"q2", {256}, Q2_K, std::nullopt, std::nullopt, std::nullopt});
    const auto q2_image = build(q2);
    const File q = parse_ok(q2_image);
    CHECK(q.tensor("q2").n_bytes == 84);
    CHECK_THROWS_AS(kvcache::gguf::dequantize(q.tensor("q2")), FormatError);
}

TEST_CASE("every truncation of a valid file is a FormatError", "[gguf][hostile][truncation]") {
    // Each prefix is copied into its own exactly-sized allocation so that ASan sees any read past the end.
    const auto check_prefixes = [](const std::vector<std::byte>& image, std::size_t valid_from, const std::string& what) {
        std::vector<std::size_t> parsed, wrong_type;
        std::string first_wrong;
        for (std::size_t n = 0; n < valid_from; ++n) {
            const std::vector<std::byte> prefix(image.begin(), image.begin() + static_cast<std::ptrdiff_t>(n));
            try {
                const File f = File::from_memory(prefix);
                parsed.push_back(n);
            } catch (const FormatError& e) {
                if (std::string(e.what()).empty()) wrong_type.push_back(n);
            } catch (const std::exception& e) {
                if (wrong_type.empty()) first_wrong = std::string(typeid(e).name()) + ": " + e.what();
                wrong_type.push_back(n);
            }
        }
        INFO(what << ": " << valid_from << " prefixes; parsed: " << parsed.size()
                  << (parsed.empty() ? std::string() : " (first at " + std::to_string(parsed[0]) + ")")
                  << "; not a FormatError: " << wrong_type.size() << " " << first_wrong);
        CHECK(parsed.empty());
        CHECK(wrong_type.empty());
    };
    check_prefixes(build(small_spec()), build(small_spec()).size(), "small image");
    const auto v2 = read_bytes(fixture_dir() / "handmade_v2.gguf");
    check_prefixes(v2, v2.size(), "handmade_v2.gguf");  // its last tensor ends the file
    const json m = read_json(fixture_dir() / "all_types_v3.json");
    const auto& last = m.at("tensors").back();
    const auto all = read_bytes(fixture_dir() / "all_types_v3.gguf");
    check_prefixes(all, last.at("absolute_offset").get<std::size_t>() + last.at("n_bytes").get<std::size_t>(),
                   "all_types_v3.gguf up to the end of its last tensor");
    // metadata only: everything before the end of the header is truncated
    const json mm = read_json(fixture_dir() / "metadata_only_v3.json");
    const auto meta = read_bytes(fixture_dir() / "metadata_only_v3.gguf");
    check_prefixes(meta, mm.at("header_end").get<std::size_t>(), "metadata_only_v3.gguf before the end of its header");
}

TEST_CASE("bad magic and unsupported versions", "[gguf][hostile]") {
    auto image = build(small_spec());
    for (const char* magic : {"GGUG", "FUGG", "GGML", "\0\0\0\0", "gguf"}) {
        auto bad = image;
        std::memcpy(bad.data(), magic, 4);
        expect_format_error(bad, {"magic", "gguf"});
    }
    for (std::uint32_t version : {0u, 1u, 4u, 0x03000000u, 0xFFFFFFFFu}) {
        ImageSpec s = small_spec();
        s.version = version;
        const auto msg = expect_format_error(build(s), {"version"});
        if (version == 1 || version == 4) CHECK_THAT(msg, Catch::Contains(std::to_string(version)));
    }
    expect_format_error({}, {"truncated", "short", "small", "end", "magic", "size", "bytes"});
}

TEST_CASE("absurd counts and lengths are FormatErrors, not allocations", "[gguf][hostile]") {
    const std::uint64_t huge[] = {std::uint64_t{1} << 60, std::uint64_t{1} << 63, ~std::uint64_t{0}, 1u << 28};
    for (auto n : huge) {
        INFO("count " << n);
        ImageSpec t = small_spec();
        t.tensor_count = n;
        expect_format_error(build(t), {"tensor", "count", "truncated", "end", "length", "beyond"});
        ImageSpec k = small_spec();
        k.kv_count = n;
        expect_format_error(build(k), {"key", "metadata", "kv", "count", "truncated", "end", "length", "beyond"});
    }
    // string lengths: of a key, of a string value, of a tensor name
    for (std::uint64_t len : {std::uint64_t{1} << 63, ~std::uint64_t{0}, std::uint64_t{1} << 32, std::uint64_t{1000}}) {
        INFO("string length " << len);
        ImageSpec key = small_spec();
        key.kvs.insert(key.kvs.begin(), Bytes().u64(len).raw("abc").u32(T_UINT32).u32(1));
        expect_format_error(build(key), {"string", "length", "key", "truncated", "end"});
        ImageSpec val = small_spec();
        val.kvs.insert(val.kvs.begin(), kv("test.s", T_STRING, Bytes().u64(len).raw("abc")));
        expect_format_error(build(val), {"string", "length", "test.s", "truncated", "end"});
        ImageSpec name = small_spec();
        name.tensors[1].name_length = len;
        expect_format_error(build(name), {"string", "length", "name", "tensor", "truncated", "end"});
    }
    // arrays with far more elements than bytes left, of every element size
    for (std::uint32_t et : {T_UINT8, T_UINT32, T_UINT64, T_BOOL, T_STRING, T_ARRAY}) {
        for (std::uint64_t n : {std::uint64_t{1} << 62, std::uint64_t{1} << 40, std::uint64_t{1} << 31, std::uint64_t{100000}}) {
            INFO("array of type " << et << " count " << n);
            ImageSpec s = small_spec();
            s.kvs.insert(s.kvs.begin(), kv("test.arr", T_ARRAY, Bytes().u32(et).u64(n).u64(0)));
            expect_format_error(build(s), {"array", "test.arr", "truncated", "end", "count", "length"});
        }
    }
}

TEST_CASE("deeply nested arrays are refused, not recursed into until the stack runs out", "[gguf][hostile]") {
    for (std::size_t depth : {std::size_t{100000}, std::size_t{5000}}) {
        INFO("depth " << depth);
        Bytes value;
        for (std::size_t i = 0; i < depth; ++i) value.u32(T_ARRAY).u64(1);
        value.u32(T_UINT8).u64(1).u8(7);
        ImageSpec s = small_spec();
        s.kvs.insert(s.kvs.begin(), kv("test.bomb", T_ARRAY, value));
        expect_format_error(build(s), {"nest", "depth", "deep", "test.bomb"});
    }
}

TEST_CASE("unknown value types are FormatErrors", "[gguf][hostile]") {
    for (std::uint32_t type : {13u, 100u, 0xFFFFFFFFu}) {
        INFO("value type " << type);
        ImageSpec s = small_spec();
        s.kvs.insert(s.kvs.begin(), kv("test.odd", type, Bytes().u64(0)));
        expect_format_error(build(s), {"type", "test.odd"});
        ImageSpec a = small_spec();
        a.kvs.insert(a.kvs.begin(), kv("test.odd_array", T_ARRAY, Bytes().u32(type).u64(1).u64(0)));
        expect_format_error(build(a), {"type", "test.odd_array"});
    }
}

TEST_CASE("a bool byte other than 0 or 1 is refused or read as true, never undefined", "[gguf][hostile]") {
    ImageSpec s = small_spec();
    s.kvs.insert(s.kvs.begin(), kv("test.bool2", T_BOOL, Bytes().u8(2)));
    const auto image = build(s);
    try {
        const File f = File::from_memory(image);
        CHECK(f.get_bool("test.bool2") == true);
    } catch (const FormatError& e) {
        // where: the key or the byte offset of the value (24 + the key's 8 + 10 bytes + the type's 4)
        const std::string msg = e.what();
        INFO(msg);
        CHECK((msg.find("test.bool2") != std::string::npos || msg.find("46") != std::string::npos));
    }
}

TEST_CASE("duplicate keys and tensor names are FormatErrors naming them", "[gguf][hostile]") {
    ImageSpec k = small_spec();
    k.kvs.push_back(kv_string("general.architecture", "again"));
    expect_format_error(build(k), {"general.architecture"});
    ImageSpec t = small_spec();
    t.tensors[1].name = "a";
    t.tensors[1].type = F32;
    t.tensors[1].dims = {8};
    expect_format_error(build(t), {"\"a\"", "'a'", "a:", "duplicate"});
}

TEST_CASE("bad alignments are FormatErrors", "[gguf][hostile]") {
    for (std::uint32_t a : {0u, 3u, 48u, 33u, 0x80000001u}) {
        INFO("alignment " << a);
        ImageSpec s = small_spec();
        s.kvs[1] = kv_u32("general.alignment", a);
        expect_format_error(build(s), {"alignment"});
    }
    // a power of two so large that aligning the data section start overflows or passes the end of the file
    for (std::uint64_t a : {std::uint64_t{1} << 31, std::uint64_t{1} << 63}) {
        INFO("alignment " << a);
        ImageSpec s = small_spec();
        s.kvs[1] = kv("general.alignment", T_UINT64, Bytes().u64(a));
        expect_format_error(build(s), {"alignment", "offset", "truncated", "end", "beyond", "past", "type"});
    }
    ImageSpec str = small_spec();
    str.kvs[1] = kv_string("general.alignment", "32");
    expect_format_error(build(str), {"alignment"});
}

TEST_CASE("tensor offsets outside the data, misaligned or overlapping are FormatErrors", "[gguf][hostile]") {
    const auto with_offset_b = [](std::uint64_t offset) {
        ImageSpec s = small_spec();
        s.tensors[1].offset = offset;
        s.data_bytes = 32 + 34;
        return build(s);
    };
    for (std::uint64_t off : {std::uint64_t{64}, std::uint64_t{1} << 20, std::uint64_t{1} << 40,
                              ~std::uint64_t{0} - 31, ~std::uint64_t{0} - 63}) {
        INFO("offset " << off);
        expect_format_error(with_offset_b(off), {"\"b\"", "'b'", "b:", "tensor b", "offset", "beyond", "past", "end"});
    }
    // not a multiple of the alignment
    for (std::uint64_t off : {std::uint64_t{8}, std::uint64_t{33}, std::uint64_t{1}}) {
        INFO("offset " << off);
        expect_format_error(with_offset_b(off), {"align", "offset"});
    }
    // b on top of a
    expect_format_error(with_offset_b(0), {"overlap", "offset"});
    // a and b swapped in the info order but b still over a's bytes
    ImageSpec s = small_spec();
    s.tensors[0].offset = 32;
    s.tensors[1].offset = 32;
    s.data_bytes = 32 + 34;
    expect_format_error(build(s), {"overlap", "offset"});
}

TEST_CASE("bad tensor dimensions and types are FormatErrors naming the tensor", "[gguf][hostile]") {
    const auto bad_a = [](std::vector<std::uint64_t> dims, std::uint32_t type, std::optional<std::uint32_t> n_dims = {}) {
        ImageSpec s = small_spec();
        s.tensors[0].dims = std::move(dims);
        s.tensors[0].type = type;
        s.tensors[0].n_dims = n_dims;
        s.tensors[1].offset = 1u << 12;  // keep b's placement independent of a's (possibly absurd) size
        s.data_bytes = (1u << 12) + 34;
        return build(s);
    };
    const auto check_bad_n = [&](std::vector<std::uint64_t> dims, std::uint32_t type, std::optional<std::uint32_t> n_dims,
                                 const std::vector<std::string_view>& words) {
        std::string shown;
        for (auto d : dims) shown += std::to_string(d) + " ";
        INFO("dims " << shown << "type " << type);
        expect_format_error(bad_a(std::move(dims), type, n_dims), words);
    };
    const auto check_bad = [&](std::vector<std::uint64_t> dims, std::uint32_t type,
                               const std::vector<std::string_view>& words) {
        check_bad_n(std::move(dims), type, std::nullopt, words);
    };
    // n_dims 0, 5, huge (with no dims following, or with 5 dims)
    check_bad({}, F32, {"dim", "\"a\"", "'a'"});
    check_bad({1, 1, 1, 1, 32}, F32, {"dim", "\"a\"", "'a'"});
    check_bad_n({4, 2}, F32, 0xFFFFFFFFu, {"dim", "\"a\"", "'a'", "truncated"});
    // a zero dimension
    check_bad({0, 4}, F32, {"dim", "zero", "\"a\"", "'a'", "shape"});
    check_bad({32, 0}, Q4_0, {"dim", "zero", "\"a\"", "'a'", "shape"});
    // element products that overflow 64 bits, and byte sizes that do
    check_bad({std::uint64_t{1} << 32, std::uint64_t{1} << 32, 2}, F32,
              {"overflow", "large", "size", "\"a\"", "'a'"});
    check_bad({~std::uint64_t{0}, 3}, F32, {"overflow", "large", "size", "\"a\"", "'a'"});
    check_bad({std::uint64_t{1} << 62}, F32, {"overflow", "large", "size", "beyond", "\"a\"", "'a'"});
    // element counts that fit but whose byte counts wrap around 2^64 (to 0 for the first two)
    check_bad({std::uint64_t{1} << 63}, 1 /* F16 */, {"overflow", "large", "size", "beyond", "\"a\"", "'a'"});
    check_bad({std::uint64_t{1} << 62, 2}, 30 /* BF16 */, {"overflow", "large", "size", "beyond", "\"a\"", "'a'"});
    check_bad({~std::uint64_t{0} - 255}, 15 /* Q8_K: 292 bytes per 256 */,
              {"overflow", "large", "size", "beyond", "\"a\"", "'a'"});
    check_bad({std::uint64_t{1} << 36, std::uint64_t{1} << 20}, Q4_K,
              {"overflow", "large", "size", "beyond", "\"a\"", "'a'"});
    // unknown tensor types
    for (std::uint32_t type : {4u, 5u, 16u, 24u, 31u, 1000u, 0xFFFFFFFFu}) {
        INFO("type " << type);
        check_bad({32, 2}, type, {"type"});
    }
    // rows that are not whole blocks (ggml requires shape[0] to be a multiple of the block size)
    check_bad({33}, Q4_0, {"block", "multiple", "\"a\"", "'a'"});
    check_bad({16, 2}, Q4_0, {"block", "multiple", "\"a\"", "'a'"});
    check_bad({255, 1}, Q4_K, {"block", "multiple", "\"a\"", "'a'"});
    check_bad({128, 2}, Q4_K, {"block", "multiple", "\"a\"", "'a'"});
}
