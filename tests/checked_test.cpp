// Tests of detail/checked.hpp: overflow-checked size arithmetic throws a kvcache::Error naming the operands.
#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>

#include "kvcache/detail/aligned_buffer.hpp"
#include "kvcache/detail/checked.hpp"

using kvcache::detail::check_range;
using kvcache::detail::checked_add;
using kvcache::detail::checked_mul;
using kvcache::detail::checked_product;
using kvcache::detail::checked_size;

namespace {
constexpr std::size_t kMax = std::numeric_limits<std::size_t>::max();

template <typename Err, typename F>
std::string message_of(F&& f) {
    try {
        f();
    } catch (const Err& e) {
        return e.what();
    }
    FAIL("no exception");
    return {};
}
}  // namespace

TEST_CASE("checked_mul and checked_add return exact results that fit", "[checked]") {
    CHECK(checked_mul(0, kMax, "zero") == 0);
    CHECK(checked_mul(kMax, 1, "one") == kMax);
    CHECK(checked_mul(std::size_t{1} << 32, (std::size_t{1} << 32) - 1, "edge") == kMax - ((std::size_t{1} << 32) - 1));
    CHECK(checked_add(kMax - 5, 5, "edge") == kMax);
    CHECK(checked_product("p", 2, 3, 4, 5) == 120);
    CHECK(checked_size(std::int64_t{42}, "n") == 42);
}

TEST_CASE("checked_mul and checked_add throw CapacityError naming the operands on wrap", "[checked]") {
    // The GGUF head_count wrap of issue 9: (9 + 3 * 2^58) * 64 == 576 modulo 2^64.
    const std::size_t heads = 9 + 3 * (std::size_t{1} << 58);
    CHECK(heads * 64 == 576);  // what unchecked code computed
    const auto msg = message_of<kvcache::CapacityError>([&] { (void)checked_mul(heads, 64, "q width"); });
    CHECK(msg.find("q width") != std::string::npos);
    CHECK(msg.find(std::to_string(heads)) != std::string::npos);
    CHECK(msg.find("64") != std::string::npos);
    CHECK_THROWS_AS(checked_add(kMax, 1, "sum"), kvcache::CapacityError);
    CHECK_THROWS_AS(checked_product("p", 1 << 20, 1 << 20, 1 << 20, 1 << 20), kvcache::CapacityError);
    // A zero later in the product does not hide an overflow earlier in it.
    CHECK_THROWS_AS(checked_product("p", kMax, 2, 0), kvcache::CapacityError);
}

TEST_CASE("try_mul answers nothing instead of a wrapped product", "[checked]") {
    using kvcache::detail::try_mul;
    CHECK(try_mul<std::uint64_t>(3, 7) == std::optional<std::uint64_t>(21));
    CHECK(try_mul<std::uint64_t>(0, std::numeric_limits<std::uint64_t>::max()) == std::optional<std::uint64_t>(0));
    CHECK_FALSE(try_mul<std::uint64_t>(std::uint64_t{1} << 32, std::uint64_t{1} << 32).has_value());  // 2^64 wraps to 0
    CHECK_FALSE(try_mul<std::uint32_t>(65536, 65536).has_value());  // the width is the caller's type
    static_assert(try_mul<std::uint8_t>(16, 15) == std::uint8_t{240});
}

TEST_CASE("AlignedBuffer sizes go through checked_mul and stay a ConfigError (what cache constructors throw)",
          "[checked]") {
    const auto msg = message_of<kvcache::ConfigError>([] { (void)kvcache::detail::AlignedBuffer<std::uint64_t>(kMax / 4); });
    CHECK(msg.find("AlignedBuffer") != std::string::npos);
    CHECK(msg.find(std::to_string(kMax / 4)) != std::string::npos);
}

TEST_CASE("AlignedBuffer: zeroed, cache-line aligned, huge-page aligned from 2 MiB on; moves and copies keep it",
          "[checked]") {
    using kvcache::detail::AlignedBuffer;
    const AlignedBuffer<float> small(100);
    CHECK(reinterpret_cast<std::uintptr_t>(small.data()) % kvcache::detail::kAlignment == 0);
    CHECK(kvcache::detail::alignment_for(small.bytes()) == kvcache::detail::kAlignment);
    AlignedBuffer<std::byte> big(kvcache::detail::kHugePage + 4096);  // a huge page and a bit: the tail is zeroed too
    CHECK(kvcache::detail::alignment_for(big.bytes()) == kvcache::detail::kHugePage);
    CHECK(reinterpret_cast<std::uintptr_t>(big.data()) % kvcache::detail::kHugePage == 0);
    bool zero = true;
    for (std::size_t i = 0; i < big.size(); ++i) zero = zero && big.data()[i] == std::byte{0};
    CHECK(zero);
    big.data()[big.size() - 1] = std::byte{7};
    const AlignedBuffer<std::byte> copied = big.copy();
    CHECK(reinterpret_cast<std::uintptr_t>(copied.data()) % kvcache::detail::kHugePage == 0);
    CHECK(copied.data()[copied.size() - 1] == std::byte{7});
    AlignedBuffer<std::byte> moved = std::move(big);  // freed with the alignment it was allocated with (ASan checks)
    CHECK(moved.size() == kvcache::detail::kHugePage + 4096);
}

TEST_CASE("CacheLineVector: cache-line aligned when made, grown, copied and moved", "[checked]") {
    const auto aligned = [](const float* p) {
        return reinterpret_cast<std::uintptr_t>(p) % kvcache::detail::kAlignment == 0;
    };
    kvcache::detail::CacheLineVector<float> v(3, 1.5f);
    CHECK(aligned(v.data()));
    v.resize(100000, 2.0f);  // a new allocation: the values move with it
    CHECK(aligned(v.data()));
    CHECK(v[2] == 1.5f);
    CHECK(v[99999] == 2.0f);
    const kvcache::detail::CacheLineVector<float> copied = v;
    CHECK(aligned(copied.data()));
    CHECK(copied == v);
    const kvcache::detail::CacheLineVector<float> moved = std::move(v);  // freed with its alignment (ASan checks)
    CHECK(aligned(moved.data()));
    CHECK(moved.size() == 100000);
}

TEST_CASE("checked helpers throw the error type a file reader asks for", "[checked]") {
    CHECK_THROWS_AS(checked_mul<kvcache::FormatError>(kMax, 2, "tensor bytes"), kvcache::FormatError);
    CHECK_THROWS_AS(checked_add<kvcache::FormatError>(kMax, 2, "offset"), kvcache::FormatError);
    CHECK_THROWS_AS(checked_size<kvcache::FormatError>(-1, "count"), kvcache::FormatError);
    CHECK_THROWS_AS(checked_size(-1, "count"), kvcache::CapacityError);
}

TEST_CASE("check_range accepts the bounds and refuses outside them, naming the value", "[checked]") {
    CHECK_NOTHROW(check_range(1, 1, 4, "threads"));
    CHECK_NOTHROW(check_range(4u, 1, 4, "threads"));
    CHECK_THROWS_AS(check_range(-1, 0, 4, "threads"), kvcache::ConfigError);
    CHECK_THROWS_AS(check_range(std::uint64_t{1} << 40, 1, 1u << 20, "block count"), kvcache::ConfigError);
    const auto msg = message_of<kvcache::ConfigError>([] { check_range(-3, 0, 8, "threads"); });
    CHECK(msg == "threads is -3, outside [0, 8]");
}
