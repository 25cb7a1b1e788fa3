// Readers of SQuAD, HotpotQA and JSONL question sets.
#include "kvcache/kb/qa_dataset.hpp"

#include <algorithm>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kvcache/error.hpp"
#include "kvcache/kb/document.hpp"

namespace kvcache {

namespace {

using json = nlohmann::json;

std::string string_field(const json& object, const char* key, std::string_view where) {
    const auto it = object.find(key);
    if (it == object.end() || !it->is_string()) {
        throw FormatError(fmt::format("{}: no string \"{}\"", where, key));
    }
    return it->get<std::string>();
}

std::string optional_string(const json& object, const char* key) {
    const auto it = object.find(key);
    if (it == object.end() || it->is_null()) return {};
    if (it->is_string()) return it->get<std::string>();
    if (it->is_number_integer()) return std::to_string(it->get<long long>());
    return it->dump();
}

void add_unique(std::vector<std::string>& answers, std::string a) {
    if (std::find(answers.begin(), answers.end(), a) == answers.end()) answers.push_back(std::move(a));
}

std::vector<QAItem> parse_squad(const json& root, std::string_view source) {
    std::vector<QAItem> out;
    const json& data = root.at("data");
    if (!data.is_array()) throw FormatError(fmt::format("{}: \"data\" is not an array", source));
    for (std::size_t a = 0; a < data.size(); ++a) {
        const json& article = data[a];
        const std::string title = article.is_object() ? optional_string(article, "title") : "";
        const auto paragraphs = article.find("paragraphs");
        if (!article.is_object() || paragraphs == article.end() || !paragraphs->is_array()) {
            throw FormatError(fmt::format("{}: data[{}] has no \"paragraphs\" array", source, a));
        }
        for (std::size_t p = 0; p < paragraphs->size(); ++p) {
            const json& paragraph = (*paragraphs)[p];
            const std::string where = fmt::format("{}: data[{}].paragraphs[{}]", source, a, p);
            if (!paragraph.is_object()) throw FormatError(where + " is not an object");
            const std::string context = string_field(paragraph, "context", where);
            const auto qas = paragraph.find("qas");
            if (qas == paragraph.end() || !qas->is_array()) throw FormatError(where + " has no \"qas\" array");
            for (std::size_t q = 0; q < qas->size(); ++q) {
                const json& qa = (*qas)[q];
                const std::string qwhere = fmt::format("{}.qas[{}]", where, q);
                if (!qa.is_object()) throw FormatError(qwhere + " is not an object");
                QAItem item;
                item.id = optional_string(qa, "id");
                item.question = string_field(qa, "question", qwhere);
                item.context = context;
                item.title = title;
                const bool impossible = qa.value("is_impossible", false);
                if (!impossible) {
                    const auto answers = qa.find("answers");
                    if (answers == qa.end() || !answers->is_array()) throw FormatError(qwhere + " has no \"answers\" array");
                    for (const json& ans : *answers) {
                        if (!ans.is_object()) throw FormatError(qwhere + ": an answer is not an object");
                        add_unique(item.answers, string_field(ans, "text", qwhere + ".answers[]"));
                    }
                }
                out.push_back(std::move(item));
            }
        }
    }
    return out;
}

std::vector<QAItem> parse_hotpotqa(const json& root, std::string_view source) {
    std::vector<QAItem> out;
    for (std::size_t i = 0; i < root.size(); ++i) {
        const json& e = root[i];
        const std::string where = fmt::format("{}: entry {}", source, i);
        if (!e.is_object()) throw FormatError(where + " is not an object");
        QAItem item;
        item.id = optional_string(e, "_id");
        if (item.id.empty()) item.id = optional_string(e, "id");
        item.question = string_field(e, "question", where);
        item.answers.push_back(string_field(e, "answer", where));
        item.type = optional_string(e, "type");
        if (const auto ctx = e.find("context"); ctx != e.end() && ctx->is_array()) {
            for (const json& para : *ctx) {
                if (!para.is_array() || para.size() != 2 || !para[0].is_string() || !para[1].is_array()) {
                    throw FormatError(where + ": a context entry is not [title, [sentences]]");
                }
                std::string text;
                for (const json& s : para[1]) {
                    if (!s.is_string()) throw FormatError(where + ": a context sentence is not a string");
                    text += s.get<std::string>();
                }
                item.context += fmt::format("{}{}: {}", item.context.empty() ? "" : "\n", para[0].get<std::string>(), text);
            }
        }
        out.push_back(std::move(item));
    }
    return out;
}

QAItem parse_jsonl_item(const json& e, const std::string& where) {
    if (!e.is_object()) throw FormatError(where + " is not a JSON object");
    QAItem item;
    item.id = optional_string(e, "id");
    item.question = string_field(e, "question", where);
    if (const auto answers = e.find("answers"); answers != e.end()) {
        if (!answers->is_array()) throw FormatError(where + ": \"answers\" is not an array");
        for (const json& a : *answers) {
            if (a.is_string()) add_unique(item.answers, a.get<std::string>());
            else if (a.is_object() && a.contains("text")) add_unique(item.answers, string_field(a, "text", where));
            else throw FormatError(where + ": an answer is neither a string nor {\"text\": ...}");
        }
    } else if (const auto answer = e.find("answer"); answer != e.end() && answer->is_string()) {
        item.answers.push_back(answer->get<std::string>());
    } else {
        throw FormatError(where + ": no \"answers\" array or \"answer\" string");
    }
    item.context = optional_string(e, "context");
    item.type = optional_string(e, "type");
    item.title = optional_string(e, "title");
    return item;
}

}  // namespace

const char* qa_format_name(QAFormat format) {
    switch (format) {
        case QAFormat::Squad: return "squad";
        case QAFormat::HotpotQA: return "hotpotqa";
        case QAFormat::Jsonl: return "jsonl";
    }
    return "jsonl";
}

QAFormat detect_qa_format(std::string_view contents) {
    const auto first = contents.find_first_not_of(" \t\r\n");
    if (first == std::string_view::npos) return QAFormat::Jsonl;
    if (contents[first] == '[') return QAFormat::HotpotQA;
    // One object spanning the whole input with "data" is SQuAD; JSONL has one object per line.
    const json root = json::parse(contents, nullptr, /*allow_exceptions=*/false);
    if (root.is_object() && root.contains("data")) return QAFormat::Squad;
    return QAFormat::Jsonl;
}

std::vector<QAItem> parse_qa_dataset(std::string_view contents, std::string_view source) {
    check_document_text(contents, source);
    const QAFormat format = detect_qa_format(contents);
    std::vector<QAItem> items;
    if (format == QAFormat::Jsonl) {
        std::size_t line_no = 0, at = 0;
        while (at <= contents.size()) {
            const std::size_t end = std::min(contents.find('\n', at), contents.size());
            const std::string_view line = contents.substr(at, end - at);
            ++line_no;
            at = end + 1;
            if (line.find_first_not_of(" \t\r") == std::string_view::npos) {
                if (end == contents.size()) break;
                continue;
            }
            const std::string where = fmt::format("{}: line {}", source, line_no);
            json e;
            try {
                e = json::parse(line);
            } catch (const json::exception& ex) {
                throw FormatError(fmt::format("{}: not JSON: {}", where, ex.what()));
            }
            try {
                items.push_back(parse_jsonl_item(e, where));
            } catch (const json::exception& ex) {
                throw FormatError(fmt::format("{}: unexpected data: {}", where, ex.what()));
            }
            if (end == contents.size()) break;
        }
    } else {
        json root;
        try {
            root = json::parse(contents);
        } catch (const json::exception& ex) {
            throw FormatError(fmt::format("{}: not JSON: {}", source, ex.what()));
        }
        try {
            items = format == QAFormat::Squad ? parse_squad(root, source) : parse_hotpotqa(root, source);
        } catch (const json::exception& ex) {  // a field of the wrong JSON type
            throw FormatError(fmt::format("{}: unexpected {} data: {}", source, qa_format_name(format), ex.what()));
        }
    }
    for (std::size_t i = 0; i < items.size(); ++i) {
        if (items[i].id.empty()) items[i].id = std::to_string(i);
    }
    return items;
}

std::vector<QAItem> read_qa_dataset(const std::filesystem::path& path) {
    return parse_qa_dataset(read_file_bytes(path), path.string());
}

}  // namespace kvcache
