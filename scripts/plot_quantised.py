#!/usr/bin/env python3
"""Table (markdown, stdout) and plot (docs/images/quantised-caches.png) of scripts/measure-quantised.sh's results.

    /usr/bin/python3 scripts/plot_quantised.py [bench/results/quantised] [docs/images/quantised-caches.png]
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_0h", "k-q8_0_v-q4_0", "k-q4_0h_v-q4_0"]
LABELS = {"k-q8_0_v-q4_0": "K q8_0\nV q4_0", "k-q4_0h_v-q4_0": "K q4_0h\nV q4_0"}
BENCH_NAMES = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "q8_0": "q8_0", "q4_0": "q4_0", "q4_0h": "q4_0h"}


def main() -> None:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/quantised")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/images/quantised-caches.png")
    ppl = {t: json.loads((src / f"ppl_{t}.json").read_text()) for t in TYPES if (src / f"ppl_{t}.json").exists()}
    attn = {}
    bench = json.loads((src / "attention.json").read_text()) if (src / "attention.json").exists() else {"benchmarks": []}
    for b in bench["benchmarks"]:
        # BM_DecodeAttention/q8_0/context:8192/threads:1/manual_time
        parts = b["name"].split("/")
        if b.get("run_type") == "aggregate":
            continue
        attn[(parts[1], int(parts[2].split(":")[1]), int(parts[3].split(":")[1]))] = b

    base = ppl.get("f32", {}).get("perplexity")
    print("| cache | perplexity (ctx 2048) | vs f32 | KV bytes / token | attention ms, ctx 8192, 1 thread: mean | best call (GB/s) | 2 threads: best call (GB/s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for t in TYPES:
        p = ppl.get(t)
        if not p:  # not measured
            continue
        bytes_per_token = p["cache_bytes"] / p["ctx"] if p else float("nan")
        cells = []
        for threads in (1, 2):
            b = attn.get((BENCH_NAMES.get(t), 8192, threads))
            # best call: the same bytes at best_GB/s (robust to being descheduled on a shared machine)
            cells.append((b["real_time"] / 1000.0, b["real_time"] / 1000.0 * b["GB/s"] / b["best_GB/s"], b["best_GB/s"])
                         if b else (float("nan"),) * 3)
        rel = (p["perplexity"] / base - 1) * 100 if p and base else float("nan")
        rows.append((t, p["perplexity"] if p else float("nan"), rel, bytes_per_token, cells))
        print(f"| {t} | {rows[-1][1]:.4f} | {rel:+.2f} % | {bytes_per_token:,.0f} | {cells[0][0]:.3f} | "
              f"{cells[0][1]:.3f} ({cells[0][2]:.1f}) | {cells[1][1]:.3f} ({cells[1][2]:.1f}) |")
    for threads in (1, 2):
        f32 = attn.get(("fp32", 8192, threads))
        f16 = attn.get(("fp16", 8192, threads))
        q8 = attn.get(("q8_0", 8192, threads))
        if f32 and f16 and q8:
            best = lambda b: b["real_time"] * b["GB/s"] / b["best_GB/s"]  # noqa: E731
            print(f"\nq8_0 attention at context 8192, {threads} thread(s): mean {f32['real_time'] / q8['real_time']:.2f}x faster "
                  f"than fp32, {f16['real_time'] / q8['real_time']:.2f}x than fp16; best call {best(f32) / best(q8):.2f}x "
                  f"and {best(f16) / best(q8):.2f}x")
    for name in ("stream_sinks", "stream_window"):
        f = src / f"{name}.json"
        if f.exists() and f.stat().st_size:
            s = json.loads(f.read_text())
            print(f"{name}: perplexity {s['perplexity']:.4f} over {s['scored']} predictions of {s['tokens']} tokens, "
                  f"cache {s['sinks']} sinks + {s['window']} window")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    names = [LABELS.get(r[0], r[0]) for r in rows]
    axes[0].bar(names, [r[1] for r in rows], color="#4477aa")
    chunks = next(iter(ppl.values()))["chunks"]
    axes[0].set_title(f"SmolLM2 perplexity, ctx 2048 x {chunks} chunks (Genesis, KJV)")
    lo = min(r[1] for r in rows)
    axes[0].set_ylim(lo * 0.97, max(r[1] for r in rows) * 1.01)
    for i, r in enumerate(rows):
        axes[0].annotate(f"{r[2]:+.2f}%", (i, r[1]), ha="center", va="bottom", fontsize=8)
    axes[1].bar(names, [r[3] / 1024 for r in rows], color="#228833")
    axes[1].set_title("KV cache KiB per token (30 layers)")
    for k, threads in enumerate((1, 2)):
        axes[2].bar([i + 0.4 * k for i in range(len(rows))], [r[4][k][1] for r in rows], width=0.4,
                    label=f"{threads} thread{'s' if threads > 1 else ''} (best call)")
    axes[2].set_xticks([i + 0.2 for i in range(len(rows))], names)
    axes[2].set_title("decode attention ms per layer-step, ctx 8192")
    axes[2].legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"\nplot: {out}")


if __name__ == "__main__":
    main()
