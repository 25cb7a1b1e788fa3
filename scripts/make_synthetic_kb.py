#!/usr/bin/env python3
"""A seeded synthetic knowledge base for evaluating kvcache-cag: fictional towns, people and guilds, one
Markdown document each, and questions with exact answers — single facts and two-hop questions that join two
documents.

    python3 scripts/make_synthetic_kb.py --seed 1 --tokens 4000 --questions 20 --out /tmp/kb4k

writes OUT/docs/*.md and OUT/qa.jsonl (one {"id", "question", "answers", "type"} per line, the JSONL that
`kvcache-cag eval` reads). --tokens is the size of the knowledge in SmolLM2 tokens, estimated from characters
(--chars-per-token, measured on this text); `kvcache-cag eval` prints the exact count. The same seed and sizes
always give the same files. Every name is invented, so the model cannot know an answer without the documents.
"""
import argparse
import json
import os
import random
import shutil

ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s", "st", "t", "th",
          "v", "w", "z", "qu", "sh"]
VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou", "y"]
CODAS = ["", "n", "r", "l", "s", "th", "m", "nd", "rk", "x", "v"]
TOWN_ENDINGS = ["ford", "mere", "wick", "holt", "stead", "port", "vale", "moor", "by", "ton"]
PRODUCTS = ["blue glass", "copper kettles", "salt cod", "wool blankets", "clockwork toys", "rose honey",
            "slate roofs", "paper lanterns", "iron nails", "amber beads", "goat cheese", "silk ribbons",
            "oak barrels", "tin whistles", "lamp oil", "hemp rope", "river pearls", "plum wine"]
PROFESSIONS = ["a cartographer", "a glassblower", "a ship's surgeon", "an astronomer", "a clockmaker", "a weaver",
               "a bridge engineer", "a beekeeper", "a printer", "a botanist", "a violin maker", "a salt merchant"]
GUILD_KINDS = ["Guild", "Company", "Society", "Brotherhood", "Institute", "League"]
FILLER = [
    "Travellers describe the place as quiet in winter and crowded in late summer.",
    "Old maps spell the name in several different ways.",
    "Local records from the early years are incomplete.",
    "Many visitors arrive by the coastal road.",
    "The archive keeps letters, ledgers and a few paintings from that time.",
    "Historians still argue about the details of the early period.",
    "A small museum tells the story to schoolchildren.",
    "The weather there is mild for most of the year.",
]


def make_name(rng, syllables):
    word = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables)) + rng.choice(CODAS)
    return word.capitalize()


class World:
    def __init__(self, rng):
        self.rng = rng
        self.used = set()
        self.towns, self.people, self.guilds, self.rivers = [], [], [], []

    def unique(self, make):
        for _ in range(1000):
            n = make()
            if n not in self.used and len(n) > 3:
                self.used.add(n)
                return n
        raise RuntimeError("ran out of names")

    def river(self):
        r = self.unique(lambda: make_name(self.rng, 2))
        self.rivers.append(r)
        return r

    def person(self):
        first = self.unique(lambda: make_name(self.rng, self.rng.choice([1, 2])))
        last = self.unique(lambda: make_name(self.rng, 2))
        p = {"name": f"{first} {last}", "profession": self.rng.choice(PROFESSIONS),
             "born": None, "year": self.rng.randint(1650, 1890)}
        self.people.append(p)
        return p

    def town(self):
        name = self.unique(lambda: make_name(self.rng, self.rng.choice([1, 2])) + self.rng.choice(TOWN_ENDINGS))
        t = {"name": name, "river": self.river(), "population": self.rng.randint(3, 95) * 100 + self.rng.randint(0, 99),
             "product": self.rng.choice(PRODUCTS), "mayor": None}
        self.towns.append(t)
        return t

    def guild(self):
        name = "The " + self.unique(lambda: make_name(self.rng, 2)) + " " + self.rng.choice(GUILD_KINDS)
        g = {"name": name, "founder": None, "town": None, "year": self.rng.randint(1600, 1900),
             "product": self.rng.choice(PRODUCTS)}
        self.guilds.append(g)
        return g


def build(rng, target_chars):
    w = World(rng)
    docs = []  # (file name, text)
    size = 0
    while size < target_chars:
        # One town with its mayor and a guild: three documents that refer to each other.
        t = w.town()
        mayor = w.person()
        founder = w.person()
        g = w.guild()
        t["mayor"] = mayor["name"]
        g["founder"] = founder["name"]
        g["town"] = t["name"]
        home = rng.choice(w.towns)
        mayor["born"] = home["name"]
        founder["born"] = rng.choice(w.towns)["name"]
        fill = lambda: " ".join(rng.sample(FILLER, 2))
        town_doc = (f"# {t['name']}\n\n{t['name']} is a town on the river {t['river']}. "
                    f"It has {t['population']} inhabitants. {fill()}\n\n"
                    f"The mayor of {t['name']} is {t['mayor']}. The town is famous for its {t['product']}.\n")
        mayor_doc = (f"# {mayor['name']}\n\n{mayor['name']} is {mayor['profession']} who was born in {mayor['born']} "
                     f"in {mayor['year']}. {fill()}\n\n{mayor['name']} later became the mayor of {t['name']}.\n")
        founder_doc = (f"# {founder['name']}\n\n{founder['name']} was {founder['profession']}, born in "
                       f"{founder['born']} in {founder['year']}. {fill()}\n\n"
                       f"{founder['name']} founded {g['name']}.\n")
        guild_doc = (f"# {g['name']}\n\n{g['name']} was founded in {g['year']} by {g['founder']}. "
                     f"Its headquarters are in {g['town']}, and it is known for {g['product']}. {fill()}\n")
        for title, text in ((t["name"], town_doc), (mayor["name"], mayor_doc), (founder["name"], founder_doc),
                            (g["name"], guild_doc)):
            fname = title.lower().replace("the ", "").replace(" ", "_").replace("'", "") + ".md"
            docs.append((fname, text))
            size += len(text) + len(fname) + 12  # + the "Document: <name>" line kvcache-cag adds
    return w, docs


def questions(rng, w, count):
    singles, twohops = [], []
    for t in w.towns:
        singles.append((f"Who is the mayor of {t['name']}?", [t["mayor"]]))
        singles.append((f"On which river is the town of {t['name']}?", [t["river"], f"the river {t['river']}"]))
        singles.append((f"What is {t['name']} famous for?", [t["product"], f"its {t['product']}"]))
    people = {p["name"]: p for p in w.people}
    towns = {t["name"]: t for t in w.towns}
    for g in w.guilds:
        singles.append((f"In which year was {g['name']} founded?", [str(g["year"])]))
        singles.append((f"Who founded {g['name']}?", [g["founder"]]))
        founder = people[g["founder"]]
        twohops.append((f"In which town was the founder of {g['name']} born?", [founder["born"]]))
        twohops.append((f"Who is the mayor of the town where {g['name']} has its headquarters?",
                        [towns[g["town"]]["mayor"]]))
    for p in w.people:
        singles.append((f"Where was {p['name']} born?", [p["born"]]))
        if p["born"] in towns:
            twohops.append((f"On which river is the town where {p['name']} was born?", [towns[p["born"]]["river"]]))
    rng.shuffle(singles)
    rng.shuffle(twohops)
    n_two = min(len(twohops), count // 2)
    picked = [(q, a, "single") for q, a in singles[: count - n_two]] + [(q, a, "two-hop") for q, a in twohops[:n_two]]
    rng.shuffle(picked)
    return picked


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=4000, help="knowledge size in SmolLM2 tokens (estimated)")
    ap.add_argument("--chars-per-token", type=float, default=3.2,
                    help="characters per SmolLM2 token of the knowledge prompt (measured: about 3.2)")
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.tokens < 200 or args.questions < 1:
        ap.error("--tokens must be >= 200 and --questions >= 1")
    rng = random.Random(args.seed)
    w, docs = build(rng, int(args.tokens * args.chars_per_token))
    qs = questions(rng, w, args.questions)
    docs_dir = os.path.join(args.out, "docs")
    if os.path.isdir(docs_dir):
        shutil.rmtree(docs_dir)
    os.makedirs(docs_dir)
    for fname, text in docs:
        with open(os.path.join(docs_dir, fname), "w", encoding="utf-8") as f:
            f.write(text)
    with open(os.path.join(args.out, "qa.jsonl"), "w", encoding="utf-8") as f:
        for i, (q, answers, kind) in enumerate(qs):
            f.write(json.dumps({"id": f"s{args.seed}-{i}", "question": q, "answers": answers, "type": kind}) + "\n")
    chars = sum(len(t) for _, t in docs)
    print(f"{args.out}: {len(docs)} documents, {chars} characters (~{int(chars / args.chars_per_token)} tokens), "
          f"{len(qs)} questions ({sum(1 for q in qs if q[2] == 'two-hop')} two-hop)")


if __name__ == "__main__":
    main()
