#!/usr/bin/env python3
"""Plots `kvcache-cag eval --json` results: time per answer (log scale) and exact match, F1 and "contains" per mode.

    python3 scripts/plot_cag.py --out cag.png results_2k.json results_4k.json results_7k.json

With several files (one per knowledge size) the time panel's x axis is the knowledge size in tokens.
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"cag": "#1b9e77", "rag": "#7570b3", "none": "#d95f02"}
METRICS = [("exact_match", "exact match (SQuAD)"), ("f1", "token F1 (SQuAD)"), ("contains", "answer contains the gold answer")]


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
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax_t = axes[0][0]
    width = 0.8 / max(1, len(modes))
    all_secs = []
    for i, m in enumerate(modes):
        pts = [(j, r["knowledge_tokens"], r["modes"][m]) for j, r in enumerate(runs) if m in r["modes"]]
        xs = [j for j, _, _ in pts]
        secs = [s["seconds_per_answer"] for _, _, s in pts]
        all_secs += secs
        ax_t.plot(xs, secs, "o-", color=COLORS[m], label=m)
        for x, s in zip(xs, secs):
            ax_t.annotate(f"{s:.2f} s", (x, s), textcoords="offset points", xytext=(5, 3), fontsize=8)
        for k, (metric, title) in enumerate(METRICS):
            ax = axes[(k + 1) // 2][(k + 1) % 2]
            for j, _, s in pts:
                x = j + (i - (len(modes) - 1) / 2) * width
                v = s.get(metric, 0.0)
                ax.bar(x, v, width * 0.9, color=COLORS[m], label=m if j == pts[0][0] else None)
                ax.annotate(f"{v:.2f}\nn={s['questions']}", (x, v), ha="center", va="bottom", fontsize=7)
    labels = [f"{r['knowledge_tokens']} tokens" for r in runs]
    ax_t.set_yscale("log")
    if all_secs:
        ax_t.set_ylim(min(all_secs) / 2, max(all_secs) * 2)
    ax_t.set_xticks(range(len(runs)))
    ax_t.set_xticklabels(labels)
    ax_t.set_xlim(-0.5, len(runs) - 0.5)
    ax_t.set_ylabel("seconds per answer (log)")
    ax_t.set_title("time per answer (cag: without the one-off knowledge prefill)", fontsize=10)
    ax_t.grid(True, which="both", alpha=0.3)
    ax_t.legend()
    for k, (metric, title) in enumerate(METRICS):
        ax = axes[(k + 1) // 2][(k + 1) % 2]
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels(labels)
        ax.set_ylim(0, 1.15)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
    model = runs[0].get("model", "")
    fig.suptitle(args.title or f"kvcache-cag eval — {model}", fontsize=11)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
