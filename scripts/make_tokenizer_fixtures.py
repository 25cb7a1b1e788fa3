#!/usr/bin/env python3
"""Generates tests/fixtures/tokenizer/smollm2.json: golden token ids and chat-template outputs for SmolLM2.

Also writes tests/fixtures/tokenizer/spm_bpe_small.json: a 400-piece SentencePiece BPE model (byte fallback, dummy
prefix, identity normalisation) trained here on a fixed corpus, with sentencepiece's own ids for varied texts, to check
the "llama" tokenizer model against the reference implementation.

The SmolLM2 reference is an independent implementation: Hugging Face `tokenizers`, built by transformers from the GGUF
vocabulary (AutoTokenizer.from_pretrained(dir, gguf_file=...), offline). One correction is applied: transformers'
GGUF converter does not know the pre-tokenizer name "smollm" and falls back to plain GPT-2 byte-level splitting,
whereas llama.cpp (and SmolLM2's own tokenizer.json: Digits(individual_digits) + ByteLevel) first isolate every
\\p{N} character. We install that pre-tokenizer explicitly; the script reports how many texts the correction
changes. Chat-template outputs come from jinja2 on the file's tokenizer.chat_template.

    pip install gguf transformers tokenizers sentencepiece jinja2
    python3 scripts/make_tokenizer_fixtures.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]
"""
import json
import os
import sys

import io
import random

import jinja2
import sentencepiece as spm
from gguf import GGUFReader
from tokenizers import Regex, pre_tokenizers
from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "smollm2.json")
SPM_OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "spm_bpe_small.json")

SPM_CORPUS = """A key-value cache stores the keys and values of every token a transformer has already seen.
Without the cache, the whole sequence runs through every layer at every step; with it, only the new token does.
The cache grows by one position per generated token, and attention reads all positions up to the current one.
Paged caches split the memory into blocks, share common prefixes between sequences and copy a block on write.
Quantised caches keep keys and values in eight or four bits, trading a little accuracy for a lot of memory.
Tokenizers turn text into integer ids: byte pair encoding merges the most frequent adjacent symbols first.
SentencePiece treats the input as a raw stream, writes spaces as a visible marker and falls back to bytes.
Numbers like 2024, 3.14159 and 1,000,000 appear in text too, as do names such as Ada, Grace and Linus."""

SPM_TEXTS = ["", " ", "a", "Hello world", "  two leading spaces", "trailing  ", "tab\tand\nnewline",
             "The cache grows by one position.", "keys and values", "Caché naïve 日本 😀", "x\u0301",
             "2024-01-01 12:34", "SentencePiece writes ▁ as text", "ALL CAPS AND lower", "zzzz qqqq"]

TEXTS = [
    "",
    " ",
    "Hello world",
    "Hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces and trailing spaces   ",
    "a  b   c    d\te\t\tf",
    "line one\nline two\n\nline four\r\nwindows line\n\n\n",
    "\n",
    "\t",
    "   ",
    "It's what they're saying: we've, I'm, you'll, he'd. IT'S LOUD.",
    "don't won't can't shouldn't y'all 'quoted'",
    "1234567890",
    "The year 2024 had 365 days; pi = 3.14159265358979.",
    "Phone: +1 (555) 123-4567, price $1,299.99, 50% off, 1e-10",
    "Café naïve résumé façade coöperate jalapeño",
    "e\u0301 a\u0300 combining marks o\u0308\u0304",
    "日本語のテキストです。中文文本。한국어 텍스트",
    "Привет, мир! Как дела?",
    "Emoji: 😀🎉👍🏽 👨‍👩‍👧‍👦 ❤️ 🇫🇷",
    "Ελληνικά και العربية و עברית and हिन्दी",
    "Math: ∑ x² ≤ ∞, ½ + ¼ = ¾, Ⅻ, ٣٤٥",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "#include <vector>\n\nint main() {\n    std::vector<int> v{1, 2, 3};\n    for (auto x : v) {\n\t\tprintf(\"%d\\n\", x);\n    }\n    return 0;\n}\n",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text before<|endoftext|>text after <|im_end|>",
    "<|im_start|><|im_end|><|im_start|>",
    "Not special: <|im_start or im_end|> <| |>",
    "URL: https://example.com/path?query=1&x=y#frag",
    "snake_case_name camelCaseName SCREAMING_CASE kebab-case-name",
    "!!!???...,,,;;;:::---___===+++***",
    "\u00a0non-breaking\u2009thin\u3000ideographic space",
    "word\u200bzero\u200dwidth",
    "Mixed 123abc abc123 a1b2c3 ١٢٣",
    "       indented by seven\n  \n    \t  mixed",
]

# Texts whose special-token text must stay plain when parse_special is off.
SPECIAL_OFF_TEXTS = [
    "<|im_start|>user\nhi<|im_end|>",
    "a<|endoftext|>b",
]

CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "Hello!"}], "add_generation_prompt": True},
    {"messages": [{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "What is 2+2?"},
                  {"role": "assistant", "content": "4"},
                  {"role": "user", "content": "And 3+3?"}], "add_generation_prompt": True},
    {"messages": [{"role": "user", "content": "Line one\nline two"},
                  {"role": "assistant", "content": "Sure."}], "add_generation_prompt": False},
]


def make_spm_fixture():
    corpus = [line for line in SPM_CORPUS.splitlines()] * 4
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=400, model_type="bpe", byte_fallback=True,
        normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
        character_coverage=1.0, num_threads=1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        # GGUF token types: 1 normal, 2 unknown, 3 control, 5 unused, 6 byte
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i)
                     else 5 if sp.is_unused(i) else 1)
    rng = random.Random(7)
    alphabet = list("abcdefghiklmnoprstuvwyKTV") + [" ", "  ", "\n", "é", "日", "😀", "the", " cache", "ing", "1", "23"]
    texts = SPM_TEXTS + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))) for _ in range(40)]
    # sentencepiece's decode is the expected decode (a literal "▁" in the input comes back as a space).
    cases = [{"text": t, "ids": sp.encode(t), "decoded": sp.decode(sp.encode(t))} for t in texts]
    data = {"tokens": tokens, "scores": scores, "token_types": types, "unk_id": sp.unk_id(), "bos_id": sp.bos_id(),
            "eos_id": sp.eos_id(), "cases": cases}
    with open(SPM_OUT, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=0)
    print(f"wrote {SPM_OUT}: {len(tokens)} pieces, {len(cases)} texts")


def main():
    make_spm_fixture()
    reader = GGUFReader(MODEL)
    fields = reader.fields
    template = fields["tokenizer.chat_template"].contents()
    pre_name = fields["tokenizer.ggml.pre"].contents()
    add_bos = fields["tokenizer.ggml.add_bos_token"].contents() if "tokenizer.ggml.add_bos_token" in fields else None
    assert pre_name == "smollm", pre_name

    tok = AutoTokenizer.from_pretrained(os.path.dirname(MODEL), gguf_file=os.path.basename(MODEL))
    backend = tok.backend_tokenizer
    before = [backend.encode(t, add_special_tokens=False).ids for t in TEXTS]
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])

    cases = []
    changed = 0
    for text, old in zip(TEXTS, before):
        ids = backend.encode(text, add_special_tokens=False).ids
        changed += ids != old
        assert backend.decode(ids, skip_special_tokens=False) == text, text
        cases.append({"text": text, "ids": ids})

    special_off = []
    for text in SPECIAL_OFF_TEXTS:
        # Split special text into pieces: encode with the special tokens not recognised (split_special_tokens).
        backend.encode_special_tokens = True
        ids = backend.encode(text, add_special_tokens=False).ids
        backend.encode_special_tokens = False
        special_off.append({"text": text, "ids": ids})

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # as transformers renders chat templates
    compiled = env.from_string(template)
    chats = []
    for conv in CONVERSATIONS:
        out = compiled.render(messages=conv["messages"], add_generation_prompt=conv["add_generation_prompt"],
                              bos_token="", eos_token="<|im_end|>")
        chats.append({**conv, "expected": out})

    data = {
        "model": os.path.basename(MODEL),
        "pre_tokenizer": pre_name,
        "add_bos_token": add_bos,
        "reference": "tokenizers (transformers GGUF conversion) with Split(\\p{N}, isolated) + ByteLevel pre-tokenizer",
        "chat_template": template,
        "cases": cases,
        "special_off": special_off,
        "chats": chats,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
    print(f"wrote {OUT}: {len(cases)} texts ({changed} differ from the uncorrected GGUF conversion), "
          f"{len(special_off)} special-off texts, {len(chats)} chats")


if __name__ == "__main__":
    main()
