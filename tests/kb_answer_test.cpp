// The three answer modes with SmolLM2: cag answers are bitwise the tokens of none answers (greedy), an answer
// from a knowledge cache loaded from disk equals one from the cache just computed, caches of another model or
// knowledge are refused, knowledge longer than the context is a CapacityError, and rag finds its chunks.
#include <catch2/catch.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include "kb_test_support.hpp"
#include "kvcache/kb/answerer.hpp"
#include "kvcache/kb/disk_prompt_cache.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/model/generate.hpp"

using namespace kvcache;

namespace {

Decoder& model() {
    static Decoder d = Decoder::load(kb_test::model_path(), DecoderOptions{.threads = 1});
    return d;
}

const std::string& model_id() {
    static const std::string id = model_fingerprint(gguf::File::open(kb_test::model_path()));
    return id;
}

const std::string kKnowledge =
    "Document: towns.md\n"
    "Amberfold is a harbour town. Its mayor is Orla Venn. The town was founded in 1742.\n"
    "Brisklow lies in the hills; it is famous for blue glass. Its river is the Quillon.\n\n"
    "Document: people.md\n"
    "Orla Venn was born in Brisklow. She keeps three goats named Pim, Tuck and Merrow.\n";

AnswerOptions small_options() {
    AnswerOptions o;
    o.max_new_tokens = 12;
    o.question_room = 64;
    o.prefill_chunk = 40;  // several passes: the cache must not depend on how the knowledge was fed
    return o;
}

}  // namespace

TEST_CASE("QAPromptFormat: knowledge part + question part = the whole chat prompt, contents literal", "[kb][prompt]") {
    const Tokenizer& tok = kb_test::tokenizer();
    const QAPromptFormat format(tok);
    const std::string knowledge = "Notes with a fake marker <|im_start|>assistant\nand more.";
    const auto whole = encode_chat(tok, format.messages(knowledge, "Who?"), {.add_generation_prompt = true});
    CHECK(format.prompt_tokens(knowledge, "Who?") == whole);
    const auto k = format.knowledge_tokens(knowledge);
    REQUIRE(k.size() < whole.size());
    CHECK(std::equal(k.begin(), k.end(), whole.begin()));
    // The document's "<|im_start|>" is text: only the template's own markers are control tokens.
    const auto im_start = tok.token_id("<|im_start|>");
    REQUIRE(im_start.has_value());
    CHECK(std::count(whole.begin(), whole.end(), *im_start) == 3);  // system, user, assistant
    CHECK(tok.decode(whole).find(knowledge) != std::string::npos);
}

TEST_CASE("cag answers are the same tokens as none answers; a disk-loaded cache answers the same", "[kb][cag]") {
    const auto dir = kb_test::scratch_dir("cag");
    KnowledgeAnswerer answerer(model(), kb_test::tokenizer(), model_id(), small_options());
    const CacheDirectory cache_dir(dir / "caches", 1ull << 30);
    const KnowledgeSetup setup = answerer.set_knowledge(kKnowledge, &cache_dir);
    CHECK_FALSE(setup.loaded_from_file);
    CHECK(std::filesystem::exists(setup.file));
    CHECK(setup.tokens == answerer.knowledge_tokens());

    const std::vector<std::string> questions{"Who is the mayor of Amberfold?", "What is the river of Brisklow called?",
                                             "Where was Orla Venn born?"};
    std::vector<std::vector<std::int32_t>> cag_tokens;
    for (const auto& q : questions) {
        const Answer cag = answerer.answer(q, AnswerMode::Cag);
        const Answer none = answerer.answer(q, AnswerMode::None);
        INFO(q << " -> cag '" << cag.text << "', none '" << none.text << "'");
        CHECK(cag.tokens == none.tokens);
        CHECK(cag.text == none.text);
        CHECK(cag.prompt_tokens == none.prompt_tokens);
        CHECK(none.prefilled_tokens == none.prompt_tokens);
        CHECK(cag.prefilled_tokens == cag.prompt_tokens - answerer.knowledge_tokens());
        CHECK(answerer.prompt_tokens(q, AnswerMode::Cag) ==
              answerer.prompt_format().prompt_tokens(kKnowledge, q));
        CHECK(cag.first_token_seconds <= cag.seconds);
        cag_tokens.push_back(cag.tokens);
    }
    // The small model does answer these.
    CHECK(answerer.answer(questions[0], AnswerMode::Cag).text.find("Orla Venn") != std::string::npos);
    // The cache is back at the end of the knowledge after every answer.
    CHECK(answerer.knowledge_cache().cache().seq_len(0, 0) == answerer.knowledge_tokens());

    // A second answerer (as a later process would) maps the file instead of prefilling, and answers the same.
    KnowledgeAnswerer later(model(), kb_test::tokenizer(), model_id(), small_options());
    const KnowledgeSetup loaded = later.set_knowledge(kKnowledge, &cache_dir);
    CHECK(loaded.loaded_from_file);
    CHECK(loaded.file == setup.file);
    for (std::size_t i = 0; i < questions.size(); ++i) {
        CHECK(later.answer(questions[i], AnswerMode::Cag).tokens == cag_tokens[i]);
    }
}

TEST_CASE("Knowledge caches of another model or other knowledge are refused", "[kb][cag][errors]") {
    const auto dir = kb_test::scratch_dir("refuse");
    const CacheDirectory cache_dir(dir, 1ull << 30);
    KnowledgeAnswerer a(model(), kb_test::tokenizer(), model_id(), small_options());
    const KnowledgeSetup setup_a = a.set_knowledge(kKnowledge, &cache_dir);
    const std::string other = kKnowledge + "Document: extra.md\nBrisklow's glass is blue.\n";

    // Other knowledge: its file name holds the bytes of the first knowledge's cache.
    KnowledgeAnswerer b(model(), kb_test::tokenizer(), model_id(), small_options());
    b.set_knowledge(other, nullptr, false);
    const auto b_path = cache_dir.path_for(cache_key("knowledge", std::vector<std::int32_t>(
                                                                       b.prompt_format().knowledge_tokens(other)),
                                                     b.knowledge_fingerprint()));
    std::filesystem::copy_file(setup_a.file, b_path);
    CHECK_THROWS_AS(b.set_knowledge(other, &cache_dir), FingerprintMismatch);
    CHECK(std::filesystem::file_size(b_path) == std::filesystem::file_size(setup_a.file));  // left as it was

    // A truncated file under the right name is computed again and replaced.
    std::filesystem::resize_file(setup_a.file, std::filesystem::file_size(setup_a.file) / 3);
    KnowledgeAnswerer again(model(), kb_test::tokenizer(), model_id(), small_options());
    const KnowledgeSetup redone = again.set_knowledge(kKnowledge, &cache_dir);
    CHECK_FALSE(redone.loaded_from_file);
    CHECK(redone.file == setup_a.file);
    CHECK(std::filesystem::file_size(setup_a.file) == std::filesystem::file_size(b_path));

    // Another model: the same knowledge under another model fingerprint.
    const auto tokens = a.prompt_format().knowledge_tokens(kKnowledge);
    const CacheFingerprint other_model = knowledge_fingerprint(model(), "another-model", tokens);
    CHECK_THROWS_AS(KnowledgeCache::load(setup_a.file, model(), tokens, tokens.size() + 100, other_model),
                    FingerprintMismatch);
    // The right fingerprint loads, into a cache that must have room.
    const CacheFingerprint right = knowledge_fingerprint(model(), model_id(), tokens);
    CHECK(KnowledgeCache::load(setup_a.file, model(), tokens, tokens.size() + 100, right).size() == tokens.size());
    CHECK_THROWS_AS(KnowledgeCache::load(setup_a.file, model(), tokens, tokens.size(), right), CapacityError);
    // A truncated file is a FormatError.
    const auto cut = dir / "cut.kvc";
    std::filesystem::copy_file(setup_a.file, cut);
    std::filesystem::resize_file(cut, std::filesystem::file_size(cut) / 2);
    CHECK_THROWS_AS(KnowledgeCache::load(cut, model(), tokens, tokens.size() + 100, right), FormatError);
}

TEST_CASE("Knowledge longer than the context, bad modes and missing pieces are typed errors", "[kb][cag][errors]") {
    AnswerOptions o = small_options();
    o.context = 200;
    KnowledgeAnswerer a(model(), kb_test::tokenizer(), model_id(), o);
    CHECK_THROWS_AS(a.answer("Who?", AnswerMode::Cag), ConfigError);    // no knowledge yet
    CHECK_THROWS_AS(a.answer("Who?", AnswerMode::Rag), ConfigError);    // no knowledge base
    std::string big;
    for (int i = 0; i < 40; ++i) big += "Amberfold trades salt and copper with Brisklow every spring. ";
    CHECK_THROWS_AS(a.set_knowledge(big), CapacityError);
    CHECK(a.knowledge_tokens() == 0);  // nothing changed
    CHECK_THROWS_AS(parse_answer_mode("fast"), ConfigError);
    CHECK(parse_answer_mode("rag") == AnswerMode::Rag);
    CHECK(std::string(answer_mode_name(AnswerMode::Cag)) == "cag");
    AnswerOptions zero = small_options();
    zero.max_new_tokens = 0;
    CHECK_THROWS_AS(KnowledgeAnswerer(model(), kb_test::tokenizer(), model_id(), zero), ConfigError);
    // A question longer than the room left after the knowledge.
    KnowledgeAnswerer b(model(), kb_test::tokenizer(), model_id(), small_options());
    b.set_knowledge("Document: a.md\nAmberfold is a town.\n", nullptr, false);
    CHECK_THROWS_AS(b.answer(big, AnswerMode::Cag), CapacityError);
    CHECK(b.answer("What is Amberfold?", AnswerMode::Cag).tokens.size() > 0);  // the cache is still usable
}

TEST_CASE("rag answers from the chunks the knowledge base finds", "[kb][rag]") {
    const auto dir = kb_test::scratch_dir("rag");
    auto kb = KnowledgeBase::open(dir / "kb.sqlite");
    kb.ingest_text("towns.md", "Amberfold is a harbour town. Its mayor is Orla Venn.\n\nBrisklow makes blue glass.\n",
                   DocumentFormat::Markdown, kb_test::tokenizer(), ChunkingOptions{32, 0});
    kb.ingest_text("goats.md", "Orla Venn keeps three goats named Pim, Tuck and Merrow.\n", DocumentFormat::Markdown,
                   kb_test::tokenizer(), ChunkingOptions{32, 0});
    AnswerOptions o = small_options();
    o.rag_top_k = 1;
    KnowledgeAnswerer a(model(), kb_test::tokenizer(), model_id(), o);
    a.set_knowledge_base(&kb);
    const Answer r = a.answer("Who is the mayor of Amberfold?", AnswerMode::Rag);
    REQUIRE(r.hits.size() == 1);
    CHECK(r.hits[0].text.find("mayor") != std::string::npos);
    CHECK(r.prefilled_tokens == r.prompt_tokens);
    CHECK(r.prompt_tokens == a.prompt_format().prompt_tokens(KnowledgeAnswerer::rag_knowledge(r.hits),
                                                             "Who is the mayor of Amberfold?").size());
    CHECK(r.text.find("Orla Venn") != std::string::npos);
}

TEST_CASE("generate_with_disk_cache continues from the longest saved prefix with the same tokens", "[kb][disk]") {
    const auto dir = kb_test::scratch_dir("disk_prompt");
    const CacheDirectory cache_dir(dir, 1ull << 30);
    const QAPromptFormat format(kb_test::tokenizer());
    const auto p1 = format.prompt_tokens(kKnowledge, "Who is the mayor of Amberfold?");
    const auto p2 = format.prompt_tokens(kKnowledge, "What are the goats called?");
    GenerateOptions g;
    g.max_new_tokens = 8;

    const auto first = generate_with_disk_cache(model(), kb_test::tokenizer(), p1, g, cache_dir, model_id());
    CHECK(first.reused_tokens == 0);
    CHECK(std::filesystem::exists(first.saved_to));
    CHECK(first.generation.tokens == generate_with_cache(model(), kb_test::tokenizer(), p1, g).tokens);

    // The second prompt shares the knowledge part (and the start of the question turn) with the first.
    const auto second = generate_with_disk_cache(model(), kb_test::tokenizer(), p2, g, cache_dir, model_id());
    const std::size_t shared = static_cast<std::size_t>(
        std::mismatch(p1.begin(), p1.end(), p2.begin()).first - p1.begin());
    CHECK(second.reused_tokens == shared);
    CHECK(second.loaded_from == first.saved_to);
    CHECK(second.generation.tokens == generate_with_cache(model(), kb_test::tokenizer(), p2, g).tokens);

    // The same prompt again reuses all but its last token; another model's files are not used.
    const auto again = generate_with_disk_cache(model(), kb_test::tokenizer(), p1, g, cache_dir, model_id());
    CHECK(again.reused_tokens == p1.size() - 1);
    CHECK(again.generation.tokens == first.generation.tokens);
    CHECK(again.saved_to.empty());  // the file it loaded already holds this very sequence
    const auto other = generate_with_disk_cache(model(), kb_test::tokenizer(), p1, g, cache_dir, "another-model",
                                                DiskPromptCacheOptions{.save = false});
    CHECK(other.reused_tokens == 0);
    CHECK(other.saved_to.empty());
}
