// kvcache-cag from the outside: --help exits 0, wrong options fail with a message, and ingest / list /
// search / remove work end to end on a small directory. (Runs the built program next to this test's build
// directory: <build>/apps/cag/kvcache-cag; skipped with a warning when apps are not built.)
#include <catch2/catch.hpp>

#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include <fmt/format.h>

#include "kb_test_support.hpp"

namespace {

std::filesystem::path cag_program() {
    const auto self = std::filesystem::read_symlink("/proc/self/exe");
    return self.parent_path().parent_path() / "apps" / "cag" / "kvcache-cag";
}

struct Run {
    int status = -1;
    std::string output;  // stdout and stderr
};

Run run(const std::string& args) {
    Run r;
    const std::string cmd = fmt::format("'{}' {} 2>&1", cag_program().string(), args);
    FILE* pipe = ::popen(cmd.c_str(), "r");
    REQUIRE(pipe != nullptr);
    char buf[4096];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, pipe)) > 0;) r.output.append(buf, n);
    const int raw = ::pclose(pipe);
    r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    return r;
}

}  // namespace

TEST_CASE("kvcache-cag: help, bad options, ingest, list, search, remove", "[kb][cli]") {
    if (!std::filesystem::exists(cag_program())) {
        WARN("kvcache-cag is not built (" << cag_program() << "); nothing to test");
        return;
    }
    const auto dir = kb_test::scratch_dir("cli");
    // (fmt::format rather than "..." + std::string: GCC 12's -Wrestrict false positive)
    const std::string model = fmt::format("--model '{}' ", kb_test::model_path().string());
    const std::string db = fmt::format("--db '{}' ", (dir / "kb.sqlite").string());
    auto quoted = [](const std::filesystem::path& p) { return fmt::format("'{}'", p.string()); };

    const Run help = run("--help");
    CHECK(help.status == 0);
    CHECK(help.output.find("ingest") != std::string::npos);
    CHECK(run("ask --help").status == 0);
    CHECK(run("").status != 0);                          // a subcommand is required
    const Run bogus = run("--bogus list");
    CHECK(bogus.status != 0);
    CHECK(bogus.output.find("bogus") != std::string::npos);
    CHECK(run(db + "ask 'q' --mode fast").status != 0);  // not a mode
    CHECK(run(db + "search").status != 0);               // query missing
    CHECK(run(db + "list").status == 1);                 // no knowledge base yet: a message, exit 1
    CHECK(run(db + "list").output.find("no such knowledge base") != std::string::npos);

    kb_test::write_file(dir / "docs" / "amberfold.md", "# Amberfold\n\nThe mayor of Amberfold is Orla Venn.\n");
    kb_test::write_file(dir / "docs" / "brisklow.html", "<p>Brisklow is famous for <b>blue glass</b>.</p>");
    const Run ingest = run(model + db + "ingest " + quoted(dir / "docs"));
    CHECK(ingest.status == 0);
    CHECK(ingest.output.find("2 documents") != std::string::npos);
    const Run list = run(model + db + "list");
    CHECK(list.status == 0);
    CHECK(list.output.find("html") != std::string::npos);
    CHECK(list.output.find("knowledge part of the prompt is") != std::string::npos);
    const Run search = run(db + "search 'glass of Brisklow' -k 1");
    CHECK(search.status == 0);
    CHECK(search.output.find("brisklow.html") != std::string::npos);
    CHECK(search.output.find("blue glass") != std::string::npos);
    CHECK(run(db + "remove " + quoted(dir / "docs" / "brisklow.html")).status == 0);
    CHECK(run(db + "search 'glass' -k 1").output.find("no chunk matches") != std::string::npos);
    CHECK(run(db + "remove nothing-here").status == 1);

    kb_test::write_file(dir / "bad.txt", std::string("bin\0ary", 7));
    const Run bad = run(model + db + "ingest " + quoted(dir / "bad.txt"));
    CHECK(bad.status == 1);
    CHECK(bad.output.find("binary") != std::string::npos);
}

TEST_CASE("kvcache-cag: numbers out of range are refused with a short message", "[kb][cli][issue9]") {
    if (!std::filesystem::exists(cag_program())) {
        WARN("kvcache-cag is not built (" << cag_program() << "); nothing to test");
        return;
    }
    const auto dir = kb_test::scratch_dir("cli_ranges");
    const std::string db = fmt::format("--db '{}' ", (dir / "kb.sqlite").string());
    // PositiveNumber/NonNegativeNumber printed DBL_MAX's 309 digits; -1 threads meant all cores; a quota of
    // 2^64 - 1 MiB wrapped when shifted to bytes.
    for (const std::string args : {"search hello -k 0", "--threads -1 list", "--cache-quota-mb 0 list",
                                   "--cache-quota-mb 18446744073709551615 list", "ask hi --context 0",
                                   "ask hi -n 0", "chat hi -n -1", "ingest x --overlap-tokens -1"}) {
        INFO(args);
        const Run r = run(db + args);
        CHECK(r.status != 0);
        CHECK(r.status < 128);
        CHECK(r.output.size() < 400);
        CHECK(r.output.find("not in range") != std::string::npos);
    }
}
