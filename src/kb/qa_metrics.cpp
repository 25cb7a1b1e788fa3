// SQuAD's exact match and F1.
#include "kvcache/kb/qa_metrics.hpp"

#include <algorithm>
#include <cctype>
#include <map>
#include <sstream>
#include <vector>

namespace kvcache {

namespace {

std::vector<std::string> words(std::string_view normalised) {
    std::vector<std::string> out;
    std::istringstream in{std::string(normalised)};
    for (std::string w; in >> w;) out.push_back(w);
    return out;
}

double f1_one(const std::string& prediction, const std::string& gold) {
    const std::vector<std::string> p = words(normalize_answer(prediction)), g = words(normalize_answer(gold));
    if (p.empty() || g.empty()) return p.empty() && g.empty() ? 1.0 : 0.0;
    std::map<std::string, int> counts;
    for (const auto& w : g) ++counts[w];
    int common = 0;
    for (const auto& w : p) {
        if (auto it = counts.find(w); it != counts.end() && it->second > 0) {
            --it->second;
            ++common;
        }
    }
    if (common == 0) return 0.0;
    const double precision = double(common) / double(p.size()), recall = double(common) / double(g.size());
    return 2 * precision * recall / (precision + recall);
}

}  // namespace

std::string normalize_answer(std::string_view text) {
    std::string lowered;
    lowered.reserve(text.size());
    for (char c : text) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x80 && std::ispunct(u)) continue;  // string.punctuation is ASCII only
        lowered += static_cast<char>(std::tolower(u));
    }
    std::string out;
    for (const std::string& w : words(lowered)) {
        if (w == "a" || w == "an" || w == "the") continue;
        if (!out.empty()) out += ' ';
        out += w;
    }
    return out;
}

double exact_match(std::string_view prediction, std::span<const std::string> gold_answers) {
    const std::string p = normalize_answer(prediction);
    if (gold_answers.empty()) return p.empty() ? 1.0 : 0.0;
    for (const std::string& g : gold_answers) {
        if (normalize_answer(g) == p) return 1.0;
    }
    return 0.0;
}

double answer_contains(std::string_view prediction, std::span<const std::string> gold_answers) {
    // Padded with spaces so that a match is of whole words. (Built with append: GCC 12 warns falsely about
    // " " + string.)
    auto padded = [](std::string_view text) {
        std::string out(1, ' ');
        out.append(normalize_answer(text));
        out.push_back(' ');
        return out;
    };
    const std::string p = padded(prediction);
    if (gold_answers.empty()) return p == "  " ? 1.0 : 0.0;
    for (const std::string& g : gold_answers) {
        const std::string n = padded(g);
        if (n != "  " && p.find(n) != std::string::npos) return 1.0;
    }
    return 0.0;
}

double f1_score(std::string_view prediction, std::span<const std::string> gold_answers) {
    const std::string p(prediction);
    if (gold_answers.empty()) return f1_one(p, "");
    double best = 0;
    for (const std::string& g : gold_answers) best = std::max(best, f1_one(p, g));
    return best;
}

}  // namespace kvcache
