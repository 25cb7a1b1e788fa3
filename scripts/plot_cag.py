#!/usr/bin/env python3
"""Plots `kvcache-cag eval --json` results: time per answer (log scale) and exact match / F1 per mode.

    python3 scripts/plot_cag.py --out cag.png results_2k.json results_4k.json results_7k.json

With several files (one per knowledge size) the x axis is the knowledge size in tokens; with one file, bars.
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"cag": "#1b9e77", "rag": "#7570b3", "none": "#d95f02"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--title", default="")
    ap.add_argument("results", nargs="+", help="JSON files written by kvcache-cag eval --json")
    args = ap.parse_args()
    runs = []
    for path in args.results:
        with open(path, encoding="utf-8") as f:
            runs.append(json.load(f))
    runs.sort(key=lambda r: r["knowledge_tokens"])
    modes = [m for m in ("cag", "rag", "none") if any(m in r["modes"] for r in runs)]
    fig, (ax_t, ax_a) = plt.subplots(1, 2, figsize=(12, 4.8))
    sizes = [r["knowledge_tokens"] for r in runs]
    width = 0.8 / max(1, len(modes))
    for i, m in enumerate(modes):
        xs = [r["knowledge_tokens"] for r in runs if m in r["modes"]]
        secs = [r["modes"][m]["seconds_per_answer"] for r in runs if m in r["modes"]]
        if len(runs) > 1:
            ax_t.plot(xs, secs, "o-", color=COLORS[m], label=m)
            for x, s in zip(xs, secs):
                ax_t.annotate(f"{s:.2f}s", (x, s), textcoords="offset points", xytext=(4, 4), fontsize=8)
        else:
            ax_t.bar([i], secs, color=COLORS[m], label=m)
        for j, r in enumerate(runs):
            if m not in r["modes"]:
                continue
            s = r["modes"][m]
            x = j + (i - (len(modes) - 1) / 2) * width
            ax_a.bar(x, s["exact_match"], width * 0.9, color=COLORS[m], label=m if j == 0 else None)
            ax_a.plot([x - width * 0.45, x + width * 0.45], [s["f1"], s["f1"]], color="black", lw=1.5)
            ax_a.annotate(f"n={s['questions']}", (x, 0.01), ha="center", fontsize=7, rotation=90, color="white")
    ax_t.set_yscale("log")
    ax_t.set_ylabel("seconds per answer (log)")
    if len(runs) > 1:
        ax_t.set_xlabel("knowledge (tokens)")
        ax_t.set_xticks(sizes)
    else:
        ax_t.set_xticks(range(len(modes)))
        ax_t.set_xticklabels(modes)
    ax_t.set_title("time per answer (cag excludes the one-off knowledge prefill)")
    ax_t.legend()
    ax_t.grid(True, which="both", alpha=0.3)
    ax_a.set_xticks(range(len(runs)))
    ax_a.set_xticklabels([f"{s} tokens" for s in sizes])
    ax_a.set_ylim(0, 1)
    ax_a.set_ylabel("exact match (bars), F1 (black lines)")
    ax_a.set_title("accuracy")
    ax_a.legend()
    model = runs[0].get("model", "")
    fig.suptitle(args.title or f"kvcache-cag on {runs[0].get('qa_file', '')} — {model}", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
