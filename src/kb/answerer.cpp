// The three answer modes over one decoder and prompt format.
#include "kvcache/kb/answerer.hpp"

#include <algorithm>
#include <cctype>
#include <chrono>

#include <fmt/format.h>

#include "kvcache/model/decoder.hpp"
#include "kvcache/model/generate.hpp"
#include "kvcache/model/tokenizer.hpp"

namespace kvcache {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string trim(std::string s) {
    const auto not_space = [](unsigned char c) { return !std::isspace(c); };
    s.erase(s.begin(), std::find_if(s.begin(), s.end(), not_space));
    s.erase(std::find_if(s.rbegin(), s.rend(), not_space).base(), s.end());
    return s;
}

}  // namespace

const char* answer_mode_name(AnswerMode mode) {
    switch (mode) {
        case AnswerMode::None: return "none";
        case AnswerMode::Rag: return "rag";
        case AnswerMode::Cag: return "cag";
    }
    return "none";
}

AnswerMode parse_answer_mode(std::string_view name) {
    if (name == "none") return AnswerMode::None;
    if (name == "rag") return AnswerMode::Rag;
    if (name == "cag") return AnswerMode::Cag;
    throw ConfigError(fmt::format("answer mode '{}': choose cag, rag or none", name));
}

KnowledgeAnswerer::KnowledgeAnswerer(Decoder& decoder, const Tokenizer& tokenizer, std::string model_fingerprint,
                                     AnswerOptions options)
    : decoder_(&decoder),
      tokenizer_(&tokenizer),
      model_fingerprint_(std::move(model_fingerprint)),
      options_(std::move(options)),
      format_(tokenizer, options_.instructions, options_.question_template, options_.examples,
              options_.answer_prefix) {
    validate(options_.sampling);
    if (options_.max_new_tokens == 0) throw ConfigError("KnowledgeAnswerer: max_new_tokens is 0");
    if (options_.rag_top_k == 0) throw ConfigError("KnowledgeAnswerer: rag_top_k is 0");
}

KnowledgeAnswerer::~KnowledgeAnswerer() = default;

std::size_t KnowledgeAnswerer::cache_capacity() const {
    return knowledge_tokens_.size() + options_.question_room + options_.max_new_tokens;
}

KnowledgeSetup KnowledgeAnswerer::set_knowledge(std::string knowledge, const CacheDirectory* directory,
                                                bool build_cache) {
    std::vector<std::int32_t> tokens = format_.knowledge_tokens(knowledge);
    const std::size_t needed = tokens.size() + options_.question_room + options_.max_new_tokens;
    if (needed > options_.context) {
        throw CapacityError(fmt::format("knowledge of {} tokens + {} for a question + {} for the answer = {} positions, "
                                        "more than the context of {}",
                                        tokens.size(), options_.question_room, options_.max_new_tokens, needed,
                                        options_.context));
    }
    CacheFingerprint fingerprint = kvcache::knowledge_fingerprint(*decoder_, model_fingerprint_, tokens);
    knowledge_ = std::move(knowledge);
    knowledge_tokens_ = std::move(tokens);
    fingerprint_ = std::move(fingerprint);
    cache_.reset();

    KnowledgeSetup setup;
    setup.tokens = knowledge_tokens_.size();
    if (!build_cache) return setup;
    const std::size_t capacity = cache_capacity();
    if (directory) {
        setup.file = directory->path_for(cache_key("knowledge", knowledge_tokens_, fingerprint_));
        if (std::filesystem::exists(setup.file)) {
            try {
                cache_ = std::make_unique<KnowledgeCache>(
                    KnowledgeCache::load(setup.file, *decoder_, knowledge_tokens_, capacity, fingerprint_));
                directory->touch(setup.file);
            } catch (const FingerprintMismatch&) {
                throw;  // a whole, valid file for something else under this name: not ours to replace
            } catch (const FormatError&) {
                // Truncated or corrupted (a crash mid-copy, a full disk): a cache, so computed again and replaced.
                cache_.reset();
            }
        }
    }
    if (!cache_) {
        cache_ = std::make_unique<KnowledgeCache>(
            KnowledgeCache::prefill(*decoder_, knowledge_tokens_, capacity, options_.prefill_chunk, options_.threads));
        if (directory) {
            cache_->reset();
            directory->save(setup.file.stem().string(), cache_->cache(), 0, knowledge_tokens_, fingerprint_);
        }
    }
    setup.loaded_from_file = cache_->loaded_from_file();
    setup.seconds = cache_->build_seconds();
    return setup;
}

KnowledgeCache& KnowledgeAnswerer::knowledge_cache() {
    if (knowledge_tokens_.empty()) throw ConfigError("KnowledgeAnswerer: no knowledge set");
    if (!cache_) {
        cache_ = std::make_unique<KnowledgeCache>(
            KnowledgeCache::prefill(*decoder_, knowledge_tokens_, cache_capacity(), options_.prefill_chunk,
                                    options_.threads));
    }
    return *cache_;
}

std::string KnowledgeAnswerer::rag_knowledge(const std::vector<SearchHit>& hits) {
    std::string out;
    for (const SearchHit& h : hits) {
        std::string text = h.text;
        while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
        out += fmt::format("Document: {}\n{}\n\n", std::filesystem::path(h.source).filename().string(), text);
    }
    return out;
}

std::vector<std::int32_t> KnowledgeAnswerer::prompt_tokens(std::string_view question, AnswerMode mode) const {
    if (mode == AnswerMode::Rag) {
        if (!kb_) throw ConfigError("rag answer: no knowledge base to search");
        return format_.prompt_tokens(rag_knowledge(kb_->search(question, options_.rag_top_k)), question);
    }
    if (knowledge_tokens_.empty()) throw ConfigError("answer: no knowledge set");
    std::vector<std::int32_t> out = knowledge_tokens_;
    const std::vector<std::int32_t> q = format_.question_tokens(question);
    out.insert(out.end(), q.begin(), q.end());
    return out;
}

Answer KnowledgeAnswerer::answer(std::string_view question, AnswerMode mode) {
    const auto t0 = Clock::now();
    Answer a;
    a.mode = mode;
    GenerateOptions g;
    g.max_new_tokens = options_.max_new_tokens;
    g.sampling = options_.sampling;
    g.threads = options_.threads;
    if (options_.stop_at_newline) {
        bool seen_text = false;
        g.on_token = [seen_text](std::int32_t, std::string_view piece) mutable {
            for (char c : piece) {
                if (c == '\n' && seen_text) return false;
                if (!std::isspace(static_cast<unsigned char>(c))) seen_text = true;
            }
            return true;
        };
    }
    GenerationResult r;
    if (mode == AnswerMode::Cag) {
        KnowledgeCache& kc = knowledge_cache();
        const std::vector<std::int32_t> q = format_.question_tokens(question);
        if (kc.size() + q.size() + options_.max_new_tokens > kc.capacity()) {
            throw CapacityError(fmt::format("cag answer: question of {} tokens + {} for the answer do not fit the {} "
                                            "positions left after the knowledge",
                                            q.size(), options_.max_new_tokens, kc.capacity() - kc.size()));
        }
        std::vector<std::int32_t> prompt(kc.tokens().begin(), kc.tokens().end());
        prompt.insert(prompt.end(), q.begin(), q.end());
        kc.reset();
        std::size_t fed = kc.size();
        try {
            r = generate_with_step(*decoder_, *tokenizer_, prompt, g,
                                   [&](std::span<const std::int32_t> sequence, std::span<float> logits) {
                                       decoder_->forward(sequence.subspan(fed), kc.cache(), 0, logits,
                                                         ForwardOptions{.threads = options_.threads});
                                       fed = sequence.size();
                                   });
        } catch (...) {
            kc.reset();
            throw;
        }
        kc.reset();
        a.prompt_tokens = prompt.size();
        a.prefilled_tokens = q.size();
    } else {
        std::vector<std::int32_t> prompt;
        if (mode == AnswerMode::Rag) {
            if (!kb_) throw ConfigError("rag answer: no knowledge base to search");
            const auto ts = Clock::now();
            a.hits = kb_->search(question, options_.rag_top_k);
            a.retrieval_seconds = seconds_since(ts);
            prompt = format_.prompt_tokens(rag_knowledge(a.hits), question);
        } else {
            prompt = prompt_tokens(question, mode);
        }
        if (prompt.size() + options_.max_new_tokens > options_.context) {
            throw CapacityError(fmt::format("{} answer: a prompt of {} tokens + {} for the answer exceed the context of {}",
                                            answer_mode_name(mode), prompt.size(), options_.max_new_tokens,
                                            options_.context));
        }
        r = generate_with_cache(*decoder_, *tokenizer_, prompt, g);
        a.prompt_tokens = prompt.size();
        a.prefilled_tokens = prompt.size();
    }
    a.text = trim(std::move(r.text));
    a.tokens = std::move(r.tokens);
    a.seconds = seconds_since(t0);
    // Everything before the first step (retrieval, tokenising) plus the first step itself.
    a.first_token_seconds = a.seconds - (r.total_seconds - r.prompt_seconds);
    return a;
}

}  // namespace kvcache
