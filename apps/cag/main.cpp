// kvcache-cag: ingest documents into a knowledge base, search it, and answer questions over it with
// cache-augmented generation (cag), retrieval (rag) or neither (none); evaluate the three on a QA file.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kvcache/kb/kb.hpp"
#include "kvcache/model/chat.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/model/gguf.hpp"
#include "kvcache/model/load_model.hpp"
#include "kvcache/model/tokenizer.hpp"

using namespace kvcache;
using json = nlohmann::json;

namespace {

std::string default_cache_dir() {
    if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return std::string(xdg) + "/kvcache-cag";
    if (const char* home = std::getenv("HOME"); home && *home) return std::string(home) + "/.cache/kvcache-cag";
    return ".kvcache-cag";
}

struct Settings {
    std::string db = "kb.sqlite";
    std::string model = default_model_path(KVCACHE_SOURCE_DIR).string();
    std::string cache_dir = default_cache_dir();
    std::uint64_t cache_quota_mb = 4096;
    bool no_disk_cache = false;
    int threads = 0;
    std::size_t chunk_tokens = 256;
    std::size_t overlap_tokens = 32;
    AnswerOptions answer;
};

/// The model, its tokenizer and fingerprint: loaded only by the commands that need them.
struct Model {
    Tokenizer tokenizer;
    std::string fingerprint;
    std::optional<Decoder> decoder;
};

void check_model_exists(const Settings& s) {
    if (!std::filesystem::exists(s.model)) {
        throw IoError(fmt::format("model {} not found: run scripts/fetch-model.sh, or pass --model / set KVCACHE_MODEL",
                                  s.model));
    }
}

/// The tokenizer alone, for the commands that only chunk text (the weights are not read).
Model load_tokenizer(const Settings& s) {
    check_model_exists(s);
    return Model{Tokenizer::from_gguf(gguf::File::open(s.model)), std::string(), std::nullopt};
}

/// Decoder, tokenizer and fingerprint (kvcache::load_model), for the commands that generate.
Model load_generator(const Settings& s) {
    check_model_exists(s);
    LoadedModel loaded = load_model(s.model, {.threads = s.threads, .fingerprint = true});
    return Model{std::move(loaded.tokenizer), std::move(loaded.fingerprint), std::move(loaded.decoder)};
}

double mean(const std::vector<double>& v) {
    double sum = 0;
    for (double x : v) sum += x;
    return v.empty() ? 0.0 : sum / double(v.size());
}

/// A one-line progress bar on stderr (redrawn in place on a terminal, else one line per update at 10 % steps).
class Progress {
public:
    explicit Progress(std::size_t total) : total_(total), tty_(isatty_stderr()) {}
    void update(std::size_t done, std::string_view label) {
        if (total_ == 0) return;
        const std::size_t width = 30, filled = done * width / total_;
        const std::string bar = std::string(filled, '=') + (filled < width ? ">" : "") +
                                std::string(width - std::min(width, filled + 1), ' ');
        const auto elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
        const std::string line = fmt::format("[{}] {}/{} {:.0f}s {}", bar, done, total_, elapsed, label);
        if (tty_) {
            std::fprintf(stderr, "\r%-100s", line.c_str());
            if (done == total_) std::fprintf(stderr, "\n");
        } else if (done * 10 / total_ != last_decile_ || done == total_) {
            last_decile_ = done * 10 / total_;
            std::fprintf(stderr, "%s\n", line.c_str());
        }
        std::fflush(stderr);
    }

private:
    static bool isatty_stderr();
    std::size_t total_;
    bool tty_;
    std::size_t last_decile_ = 0;
    std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

bool Progress::isatty_stderr() { return ::isatty(2) != 0; }

std::optional<CacheDirectory> cache_directory(const Settings& s) {
    if (s.no_disk_cache) return std::nullopt;
    return CacheDirectory(s.cache_dir, s.cache_quota_mb << 20);
}

int run_ingest(const Settings& s, const std::vector<std::string>& paths) {
    const Model m = load_tokenizer(s);
    auto kb = KnowledgeBase::open(s.db);
    std::vector<std::filesystem::path> ps(paths.begin(), paths.end());
    const auto results = kb.ingest_paths(ps, m.tokenizer, ChunkingOptions{s.chunk_tokens, s.overlap_tokens});
    std::size_t chunks = 0;
    for (const auto& r : results) {
        fmt::print("{:9} {:4} chunks  {}\n", ingest_status_name(r.status), r.chunks, r.source);
        chunks += r.chunks;
    }
    const auto docs = kb.documents();
    std::size_t tokens = 0;
    for (const auto& d : docs) tokens += d.tokens;
    fmt::print("{}: {} documents, {} chunks, ~{} tokens in chunks\n", s.db, docs.size(), kb.chunk_count(), tokens);
    return 0;
}

int run_remove(const Settings& s, const std::vector<std::string>& sources) {
    auto kb = KnowledgeBase::open(s.db, {.create = false});
    int missing = 0;
    for (const auto& src : sources) {
        if (kb.remove_document(src)) {
            fmt::print("removed {}\n", src);
        } else {
            fmt::print(stderr, "no document {}\n", src);
            ++missing;
        }
    }
    return missing ? 1 : 0;
}

int run_list(const Settings& s) {
    auto kb = KnowledgeBase::open(s.db, {.create = false});
    const auto docs = kb.documents();
    for (const auto& d : docs) {
        fmt::print("{:8} {:4} chunks {:6} tokens {:8} bytes  {}\n", document_format_name(d.format), d.chunks, d.tokens,
                   d.text_bytes, d.source);
    }
    if (!docs.empty()) {
        // What cag and none prefill: the prompt's knowledge part (instructions + every document).
        const Model m = load_tokenizer(s);
        const QAPromptFormat format(m.tokenizer, s.answer.instructions, s.answer.question_template,
                                    s.answer.examples, s.answer.answer_prefix);
        fmt::print("{} documents; the knowledge part of the prompt is {} tokens\n", docs.size(),
                   format.knowledge_tokens(kb.knowledge_text()).size());
    }
    return 0;
}

int run_search(const Settings& s, const std::string& query, std::size_t k) {
    auto kb = KnowledgeBase::open(s.db, {.create = false});
    const auto hits = kb.search(query, k);
    if (hits.empty()) fmt::print("no chunk matches the words of \"{}\"\n", query);
    for (std::size_t i = 0; i < hits.size(); ++i) {
        const auto& h = hits[i];
        std::string text = h.text;
        std::replace(text.begin(), text.end(), '\n', ' ');
        if (text.size() > 300) text = text.substr(0, 300) + "...";
        fmt::print("{}. score {:.3f}  {} @ byte {}\n   {}\n", i + 1, h.score, h.source, h.byte_offset, text);
    }
    return 0;
}

struct Engine {
    Model model;
    KnowledgeBase kb;
    std::optional<CacheDirectory> dir;
    std::unique_ptr<KnowledgeAnswerer> answerer;
    KnowledgeSetup setup;
};

Engine make_engine(const Settings& s, bool need_knowledge, bool build_cache) {
    Engine e{load_generator(s), KnowledgeBase::open(s.db, {.create = false}), cache_directory(s), nullptr, {}};
    e.answerer = std::make_unique<KnowledgeAnswerer>(*e.model.decoder, e.model.tokenizer, e.model.fingerprint, s.answer);
    e.answerer->set_knowledge_base(&e.kb);
    if (need_knowledge) {
        e.setup = e.answerer->set_knowledge(e.kb.knowledge_text(), e.dir ? &*e.dir : nullptr, build_cache);
        if (build_cache) {
            fmt::print(stderr, "knowledge: {} tokens, cache {} in {:.2f} s{}\n", e.setup.tokens,
                       e.setup.loaded_from_file ? "loaded from disk" : "prefilled", e.setup.seconds,
                       e.setup.file.empty() ? "" : fmt::format(" ({})", e.setup.file.string()));
        }
    }
    return e;
}

int run_ask(const Settings& s, const std::string& question, const std::string& mode_name, bool show_prompt_info) {
    const AnswerMode mode = parse_answer_mode(mode_name);
    Engine e = make_engine(s, mode != AnswerMode::Rag, mode == AnswerMode::Cag);
    const Answer a = e.answerer->answer(question, mode);
    fmt::print("{}\n", a.text);
    if (show_prompt_info) {
        for (const auto& h : a.hits) fmt::print(stderr, "  chunk: {} @ {} (score {:.2f})\n", h.source, h.byte_offset, h.score);
    }
    fmt::print(stderr, "[{}] {:.3f} s, first token {:.3f} s, prompt {} tokens, {} prefilled for this question\n",
               answer_mode_name(a.mode), a.seconds, a.first_token_seconds, a.prompt_tokens, a.prefilled_tokens);
    return 0;
}

int run_chat(const Settings& s, const std::string& message, const std::string& system) {
    // Prompt-keyed reuse from disk: the longest saved prefix of this prompt is loaded instead of computed.
    const std::optional<CacheDirectory> dir = cache_directory(s);
    if (!dir) throw ConfigError("chat reuses caches from the cache directory; drop --no-disk-cache");
    Model m = load_generator(s);
    std::vector<ChatMessage> messages;
    if (!system.empty()) messages.push_back(ChatMessage{"system", system});
    messages.push_back(ChatMessage{"user", message});
    const std::vector<std::int32_t> prompt = encode_chat(m.tokenizer, messages, {.add_generation_prompt = true});
    GenerateOptions g;
    g.max_new_tokens = s.answer.max_new_tokens;
    g.threads = s.threads;
    const DiskCachedGeneration r =
        generate_with_disk_cache(*m.decoder, m.tokenizer, prompt, g, *dir, m.fingerprint);
    fmt::print("{}\n", r.generation.text);
    fmt::print(stderr, "prompt {} tokens, {} loaded from {}, first token {:.3f} s, total {:.3f} s{}\n", prompt.size(),
               r.reused_tokens, r.loaded_from.empty() ? "no file" : r.loaded_from.string(), r.generation.prompt_seconds,
               r.generation.total_seconds, r.saved_to.empty() ? "" : fmt::format("; saved {}", r.saved_to.string()));
    return 0;
}

std::vector<std::string> split_modes(const std::string& list) {
    std::vector<std::string> out;
    std::stringstream in(list);
    for (std::string m; std::getline(in, m, ',');) {
        if (m.empty()) continue;
        parse_answer_mode(m);  // checks the name
        if (std::find(out.begin(), out.end(), m) == out.end()) out.push_back(m);
    }
    if (out.empty()) throw ConfigError("--modes: no mode given; use e.g. cag,rag,none");
    return out;
}

struct ModeStats {
    std::vector<double> em, f1, contains, seconds, ttft, prefilled;
};

int run_eval(const Settings& s, const std::string& qa_file, const std::string& modes_list, std::size_t limit,
             std::size_t none_limit, const std::string& json_out, const std::string& plot_out, bool ingest_contexts) {
    const std::vector<std::string> modes = split_modes(modes_list);
    std::vector<QAItem> items = read_qa_dataset(qa_file);
    if (limit > 0 && items.size() > limit) items.resize(limit);
    if (items.empty()) throw ConfigError(fmt::format("{}: no questions", qa_file));
    if (ingest_contexts) {
        // The data set's passages become the knowledge base (what the CAG paper does with SQuAD and HotpotQA).
        const Model m = load_tokenizer(s);
        auto kb = KnowledgeBase::open(s.db);
        std::map<std::string, std::string> contexts;  // name -> text, de-duplicated
        for (const auto& it : items) {
            if (it.context.empty()) continue;
            const std::string name = fmt::format("context-{}", fingerprint_digest(it.context).substr(8, 12));
            contexts.emplace(name, (it.title.empty() ? "" : it.title + "\n") + it.context);
        }
        for (const auto& [name, text] : contexts) {
            kb.ingest_text(name, text, DocumentFormat::PlainText, m.tokenizer,
                           ChunkingOptions{s.chunk_tokens, s.overlap_tokens});
        }
        fmt::print(stderr, "ingested {} contexts into {}\n", contexts.size(), s.db);
    }
    const bool any_knowledge = std::any_of(modes.begin(), modes.end(), [](const auto& m) { return m != "rag"; });
    const bool has_cag = std::find(modes.begin(), modes.end(), "cag") != modes.end();
    Engine e = make_engine(s, any_knowledge, has_cag);

    std::map<std::string, ModeStats> stats;
    json results = json::array();
    std::size_t total = 0;
    for (std::size_t i = 0; i < items.size(); ++i) {
        for (const auto& m : modes) total += !(m == "none" && none_limit > 0 && i >= none_limit);
    }
    Progress progress(total);
    std::size_t done = 0, same_as_none = 0, compared = 0;
    for (std::size_t i = 0; i < items.size(); ++i) {
        const QAItem& item = items[i];
        json row{{"id", item.id}, {"question", item.question}, {"answers", item.answers}, {"type", item.type}};
        std::map<std::string, std::vector<std::int32_t>> tokens;
        // Modes alternate per question, so a slower stretch of a shared machine hits all of them alike.
        for (const auto& m : modes) {
            if (m == "none" && none_limit > 0 && i >= none_limit) continue;
            progress.update(done, fmt::format("{} q{}", m, i + 1));
            const Answer a = e.answerer->answer(item.question, parse_answer_mode(m));
            const double em = exact_match(a.text, item.answers), f1 = f1_score(a.text, item.answers);
            const double contains = answer_contains(a.text, item.answers);
            ModeStats& st = stats[m];
            st.em.push_back(em);
            st.f1.push_back(f1);
            st.contains.push_back(contains);
            st.seconds.push_back(a.seconds);
            st.ttft.push_back(a.first_token_seconds);
            st.prefilled.push_back(double(a.prefilled_tokens));
            tokens[m] = a.tokens;
            row[m] = json{{"answer", a.text}, {"em", em}, {"f1", f1}, {"contains", contains}, {"seconds", a.seconds},
                          {"first_token_seconds", a.first_token_seconds}, {"prompt_tokens", a.prompt_tokens},
                          {"prefilled_tokens", a.prefilled_tokens}, {"generated_tokens", a.tokens.size()}};
            ++done;
        }
        if (tokens.count("cag") && tokens.count("none")) {
            ++compared;
            same_as_none += tokens["cag"] == tokens["none"];
        }
        results.push_back(std::move(row));
    }
    progress.update(done, "done");

    fmt::print("{} questions from {}; knowledge {} tokens; model {}; EM and F1 as SQuAD scores them, contains: the "
               "gold answer occurs in the answer\n", items.size(), qa_file, e.setup.tokens,
               std::filesystem::path(s.model).filename().string());
    if (has_cag) {
        fmt::print("cag knowledge cache: {} in {:.2f} s (once, not in the per-answer times)\n",
                   e.setup.loaded_from_file ? "loaded from disk" : "prefilled", e.setup.seconds);
    }
    fmt::print("{:<5} {:>9} {:>6} {:>6} {:>8} {:>10} {:>9} {:>10}\n", "mode", "questions", "EM", "F1", "contains",
               "s/answer", "TTFT s", "prefilled");
    json summary = json::object();
    for (const auto& m : modes) {
        const ModeStats& st = stats[m];
        fmt::print("{:<5} {:>9} {:>6.3f} {:>6.3f} {:>8.3f} {:>10.3f} {:>9.3f} {:>10.0f}\n", m, st.em.size(), mean(st.em),
                   mean(st.f1), mean(st.contains), mean(st.seconds), mean(st.ttft), mean(st.prefilled));
        summary[m] = json{{"questions", st.em.size()}, {"exact_match", mean(st.em)}, {"f1", mean(st.f1)},
                          {"contains", mean(st.contains)},
                          {"seconds_per_answer", mean(st.seconds)}, {"first_token_seconds", mean(st.ttft)},
                          {"prefilled_tokens_per_answer", mean(st.prefilled)}, {"seconds", st.seconds}};
    }
    if (compared > 0) {
        // Speed-up over the questions both ran, so a none_limit does not bias it.
        double cag_s = 0, none_s = 0;
        for (std::size_t i = 0; i < compared; ++i) {
            cag_s += stats["cag"].seconds[i];
            none_s += stats["none"].seconds[i];
        }
        fmt::print("cag vs none on the {} questions both answered: {:.1f}x faster per answer; identical answer tokens "
                   "in {}/{}\n",
                   compared, none_s / cag_s, same_as_none, compared);
        summary["cag_speedup_over_none"] = none_s / cag_s;
        summary["cag_same_tokens_as_none"] = same_as_none;
        summary["cag_none_compared"] = compared;
    }
    if (!json_out.empty()) {
        json out{{"qa_file", qa_file}, {"model", std::filesystem::path(s.model).filename().string()},
                 {"knowledge_tokens", e.setup.tokens}, {"knowledge_cache_loaded", e.setup.loaded_from_file},
                 {"knowledge_cache_seconds", e.setup.seconds}, {"threads", s.threads},
                 {"max_new_tokens", s.answer.max_new_tokens}, {"rag_top_k", s.answer.rag_top_k},
                 {"chunk_tokens", s.chunk_tokens}, {"modes", summary}, {"questions", results}};
        std::ofstream f(json_out);
        f << out.dump(2) << "\n";
        if (!f) throw IoError(fmt::format("{}: cannot write", json_out));
        fmt::print("results: {}\n", json_out);
    }
    if (!plot_out.empty()) {
        if (json_out.empty()) throw ConfigError("--plot needs --json (the plot is drawn from the JSON results)");
        const std::string script = (std::filesystem::path(KVCACHE_SOURCE_DIR) / "scripts" / "plot_cag.py").string();
        // matplotlib lives in Debian's python3; a python3 earlier on PATH (pyenv, venv) may not have it.
        const std::string cmd = fmt::format(
            "p=python3; python3 -c 'import matplotlib' 2>/dev/null || p=/usr/bin/python3; \"$p\" '{}' --out '{}' '{}'",
            script, plot_out, json_out);
        if (std::system(cmd.c_str()) != 0) {
            fmt::print(stderr, "plot failed: {} (needs python3 with matplotlib)\n", cmd);
            return 1;
        }
        fmt::print("plot: {}\n", plot_out);
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"kvcache-cag: a knowledge base and cache-augmented generation (cag) compared with retrieval (rag) "
                 "and with no cache (none)."};
    app.require_subcommand(1);
    Settings s;
    app.add_option("--db", s.db, "Knowledge base file (SQLite)")->capture_default_str();
    app.add_option("-m,--model", s.model, "GGUF model file (default: $KVCACHE_MODEL or models/ in the source tree)");
    app.add_option("--cache-dir", s.cache_dir, "Directory for knowledge cache files")->capture_default_str();
    // Ranges, not PositiveNumber/NonNegativeNumber: their messages printed DBL_MAX's 309 digits; and a quota of
    // 2^64 - 1 MiB wrapped when shifted to bytes.
    app.add_option("--cache-quota-mb", s.cache_quota_mb, "Most MiB the cache directory may hold (LRU files go first)")
        ->capture_default_str()
        ->check(CLI::Range(1, 1 << 30));
    app.add_flag("--no-disk-cache", s.no_disk_cache, "Neither load nor save knowledge caches on disk");
    app.add_option("--threads", s.threads, "Threads (0 = all cores)")->check(CLI::Range(0, 1024));

    auto add_answer_options = [&](CLI::App* sub) {
        sub->add_option("-n,--max-new-tokens", s.answer.max_new_tokens, "Most tokens of an answer")
            ->capture_default_str()
            ->check(CLI::Range(1, 1 << 20));
        sub->add_option("-k,--top-k", s.answer.rag_top_k, "Chunks in a rag prompt")
            ->capture_default_str()
            ->check(CLI::Range(1, 1 << 16));
        sub->add_option("--context", s.answer.context, "Most positions of knowledge + question + answer")
            ->capture_default_str()
            ->check(CLI::Range(1, 1 << 24));
        sub->add_option("--instructions", s.answer.instructions, "What the system turn says before the knowledge");
        sub->add_flag_callback("--examples", [&] { s.answer.examples = default_qa_examples(); },
                               "Show the model two worked examples before the question (few-shot)");
        sub->add_option("--answer-prefix", s.answer.answer_prefix, "Text the assistant's answer starts with")
            ->capture_default_str();
        sub->add_option("--question-template", s.answer.question_template,
                        "The user turn, with {question} standing for the question")
            ->capture_default_str();
    };
    auto add_chunk_options = [&](CLI::App* sub) {
        sub->add_option("--chunk-tokens", s.chunk_tokens, "Most tokens of a chunk")->capture_default_str()->check(
            CLI::Range(8, 1 << 20));
        sub->add_option("--overlap-tokens", s.overlap_tokens, "Tokens neighbouring chunks share")
            ->capture_default_str()
            ->check(CLI::Range(0, 1 << 20));
    };

    std::vector<std::string> paths;
    auto* ingest = app.add_subcommand("ingest", "Add files and directories (.txt, .md, .html) to the knowledge base");
    ingest->add_option("paths", paths, "Files or directories")->required();
    add_chunk_options(ingest);

    std::vector<std::string> sources;
    auto* remove = app.add_subcommand("remove", "Remove documents (by path) and their chunks");
    remove->add_option("sources", sources, "Documents as listed by `list`, or their paths")->required();

    auto* list = app.add_subcommand("list", "List the documents");

    std::string query;
    std::size_t k = 5;
    auto* search = app.add_subcommand("search", "Keyword search (BM25): the top chunks with score, file and offset");
    search->add_option("query", query, "Words to search for")->required();
    search->add_option("-k,--top", k, "Chunks to show")->capture_default_str()->check(CLI::Range(1, 1 << 20));

    std::string question, mode = "cag";
    bool verbose = false;
    auto* ask = app.add_subcommand("ask", "Answer a question over the knowledge base");
    ask->add_option("question", question, "The question")->required();
    ask->add_option("--mode", mode, "cag, rag or none")->capture_default_str()->check(CLI::IsMember({"cag", "rag", "none"}));
    ask->add_flag("-v,--verbose", verbose, "Show the chunks a rag prompt used");
    add_answer_options(ask);

    std::string message, system;
    auto* chat = app.add_subcommand("chat", "One chat turn that reuses the longest prefix of its prompt saved in the "
                                            "cache directory (and saves its own)");
    chat->add_option("message", message, "The user message")->required();
    chat->add_option("--system", system, "A system message before it");
    chat->add_option("-n,--max-new-tokens", s.answer.max_new_tokens, "Most tokens to generate")
        ->capture_default_str()
        ->check(CLI::Range(1, 1 << 20));

    std::string qa_file, modes = "cag,rag,none", json_out, plot_out;
    std::size_t limit = 0, none_limit = 0;
    bool ingest_contexts = false;
    auto* eval = app.add_subcommand("eval", "Answer a QA file's questions in each mode; accuracy and time per mode");
    eval->add_option("qa_file", qa_file, "SQuAD v1.1/v2.0 JSON, HotpotQA JSON, or JSONL (question, answers, context)")
        ->required()
        ->check(CLI::ExistingFile);
    eval->add_option("--modes", modes, "Comma-separated modes")->capture_default_str();
    eval->add_option("--limit", limit, "Only the first N questions (0 = all)")->check(CLI::Range(0, 1 << 30));
    eval->add_option("--none-limit", none_limit, "Run mode none on the first N questions only (it is slow; 0 = all)")
        ->check(CLI::Range(0, 1 << 30));  // -1 was taken as 2^64 - 1
    eval->add_option("--json", json_out, "Write per-question and summary results as JSON");
    eval->add_option("--plot", plot_out, "Draw a PNG of time per answer and accuracy per mode (needs --json)");
    eval->add_flag("--ingest-contexts", ingest_contexts, "First add the questions' contexts to the knowledge base");
    add_answer_options(eval);
    add_chunk_options(eval);

    CLI11_PARSE(app, argc, argv);
    s.answer.threads = s.threads;
    try {
        if (*ingest) return run_ingest(s, paths);
        if (*remove) return run_remove(s, sources);
        if (*list) return run_list(s);
        if (*search) return run_search(s, query, k);
        if (*ask) return run_ask(s, question, mode, verbose);
        if (*chat) return run_chat(s, message, system);
        if (*eval) return run_eval(s, qa_file, modes, limit, none_limit, json_out, plot_out, ingest_contexts);
    } catch (const kvcache::Error& e) {
        fmt::print(stderr, "kvcache-cag: {}\n", e.what());
        return 1;
    } catch (const std::exception& e) {  // not expected: the library throws kvcache::Error only
        fmt::print(stderr, "kvcache-cag: {}\n", e.what());
        return 1;
    }
    return 0;
}
