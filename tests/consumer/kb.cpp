// kvcache::kb from the installed package (and kvcache::model through it): a knowledge base file in SQLite.
#include <kvcache/kb/knowledge_base.hpp>
#include <kvcache/model/chat.hpp>

#include <cstdio>
#include <filesystem>
#include <string>

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: consumer_kb <new knowledge base file>\n");
        return 2;
    }
    const auto kb = kvcache::KnowledgeBase::open(argv[1]);  // creates the schema (SQLite + FTS5)
    const auto chatml = kvcache::chat_template_for(kvcache::ChatTemplateFamily::ChatML);
    const bool ok = kb.chunk_count() == 0 && kb.documents().empty() && std::filesystem::exists(argv[1]) &&
                    kvcache::fts5_query_for("the blue glass") == "\"blue\" OR \"glass\"";
    std::printf("kb: empty knowledge base at %s, %zu chunks; model: chat template %s: %s\n", argv[1], kb.chunk_count(),
                kvcache::chat_template_family_name(chatml.family), ok ? "ok" : "WRONG");
    return ok ? 0 : 1;
}
