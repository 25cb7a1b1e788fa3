#!/usr/bin/env python3
"""Plots bench_generation's JSON (Google Benchmark) and memory_report's JSON as PNG, and prints the fitted
slopes and speedups.

    python3 scripts/plot_bench.py --generation bench/results/generation.json \
        --memory bench/results/memory_random.json [--memory bench/results/memory_real.json] --out bench/plots

Writes generation_total.png (total time vs n, log-log, with least-squares slopes), step_latency.png (time of
one step vs context length), speedup.png (uncached / cached total time vs n, with the cost-model prediction)
and kv_memory.png (KV-cache bytes vs length: formula, bytes_allocated() and RSS growth).

Honesty rules the plots keep: measured points are markers, fits and predictions are dashed lines drawn only
over the range they were fitted on or predicted from; a series ends where its measurements end (the text says
so), and nothing is extrapolated. Uses matplotlib from Debian's python3-matplotlib.
"""
import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MODEL_LABEL = {
    "random": "random-weight decoder 6x8x512 (fp32 weights)",
    "real": "SmolLM2-135M Q4_1 (30 layers, GQA 9/3)",
    "seq2seq": "encoder-decoder 6+6 x 8 x 512 (fp32)",
}
MODEL_COLOR = {"random": "tab:blue", "real": "tab:red", "seq2seq": "tab:green"}
FIT_MIN_N = 64  # the slopes are fitted over n >= this: below it the prompt and fixed costs dominate


def to_seconds(b):
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b.get("time_unit", "ns")]
    return b["real_time"] * scale


def load_generation(path):
    """Returns (context, {kind: {model: {mode: {n: record}}}}) from Google Benchmark JSON."""
    with open(path) as f:
        data = json.load(f)
    out = {}
    for b in data["benchmarks"]:
        # Repeated cases report only aggregates; of those, keep the minimum (the least disturbed run).
        if "error_occurred" in b or b.get("error_occurred"):
            continue
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "min":
            continue
        parts = b.get("run_name", b["name"]).split("/")
        kind = parts[0]
        if kind == "BM_Generate":  # BM_Generate/<model>/<mode>/<n>/...
            model, mode, n = parts[1], parts[2], int(parts[3])
        elif kind == "BM_Step":  # BM_Step/<model>/cached/<L>
            model, mode, n = parts[1], "cached", int(parts[3])
        elif kind in ("BM_Prefill", "BM_CacheAppend", "BM_CacheCopy", "BM_DecodeAttention"):
            model, mode, n = parts[1], "-", int(parts[2])
        elif kind == "BM_ReadBandwidth":
            model, mode, n = "-", "-", int(parts[1])
        else:
            continue
        rec = dict(b)
        rec["seconds"] = to_seconds(b)
        rec["repetitions"] = b.get("repetitions", 1)
        out.setdefault(kind, {}).setdefault(model, {}).setdefault(mode, {})[n] = rec
    return data.get("context", {}), out


def series(d):
    ns = sorted(d)
    return np.array(ns, dtype=float), np.array([d[n]["seconds"] for n in ns])


def fit_slope(x, y, min_x=FIT_MIN_N):
    """Least-squares slope and intercept of log y against log x over x >= min_x (None if < 3 points)."""
    keep = x >= min_x
    if keep.sum() < 3:
        return None
    slope, intercept = np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)
    return slope, intercept, x[keep].min(), x[keep].max()


def plot_total(gen, out, suffix, summary):
    fig, ax = plt.subplots(figsize=(8.5, 6))
    generate = gen.get("BM_Generate", {})
    for model in ("random", "real", "seq2seq"):
        if model not in generate:
            continue
        color = MODEL_COLOR[model]
        for mode, marker, fill in (("uncached", "s", "none"), ("cached", "o", color)):
            if mode not in generate[model]:
                continue
            x, y = series(generate[model][mode])
            label = f"{model}, {'without' if mode == 'uncached' else 'with'} cache"
            ax.plot(x, y, marker=marker, linestyle="none", color=color, markerfacecolor=fill, markersize=7,
                    label=label + " (measured)")
            ax.plot(x, y, linestyle=":", color=color, linewidth=0.8, alpha=0.6)
            fit = fit_slope(x, y)
            if fit:
                slope, intercept, lo, hi = fit
                xs = np.geomspace(lo, hi, 20)
                ax.plot(xs, np.exp(intercept) * xs ** slope, linestyle="--", color=color, linewidth=1.6,
                        label=f"  fit n={lo:.0f}..{hi:.0f}: slope {slope:.2f}")
                summary.append(f"slope {model:8s} {mode:9s} {slope:5.2f}  (log-log least squares over n = "
                               f"{lo:.0f}..{hi:.0f}, {int(((x >= lo) & (x <= hi)).sum())} points)")
            if mode == "uncached" and "cached" in generate[model]:
                cached_max = max(generate[model]["cached"])
                if x.max() < cached_max:
                    ax.annotate(f"{model}: no runs without the cache\nbeyond n={x.max():.0f} (cost ~n²)",
                                xy=(x.max(), y[-1]), xytext=(8, -4), textcoords="offset points", fontsize=8,
                                color=color)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("new tokens generated, n")
    ax.set_ylabel("total generation time (s)")
    ax.set_title("Generation time: O(n²) without the KV cache, O(n) with it")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = os.path.join(out, f"generation_total{suffix}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_steps(gen, out, suffix, summary):
    steps = gen.get("BM_Step", {})
    prefill = gen.get("BM_Prefill", {})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    for model in ("random", "real"):
        color = MODEL_COLOR.get(model)
        if model in prefill:
            x, y = series(prefill[model]["-"])
            ax1.plot(x, y * 1e3, marker="s", markerfacecolor="none", color=color, linestyle="-",
                     label=f"{model}, without cache (= prefill of L tokens)")
        if model in steps:
            x, y = series(steps[model]["cached"])
            ax1.plot(x, y * 1e3, marker="o", color=color, linestyle="-", label=f"{model}, with cache (1 token)")
            ax2.plot(x, y * 1e3, marker="o", color=color, linestyle="-", label=f"{model}, with cache")
            summary.append(f"step     {model:8s} with cache: {y[0]*1e3:.2f} ms at L={x[0]:.0f} .. "
                           f"{y[-1]*1e3:.2f} ms at L={x[-1]:.0f}")
        if model in prefill:
            x, y = series(prefill[model]["-"])
            summary.append(f"step     {model:8s} without cache: {y[0]*1e3:.1f} ms at L={x[0]:.0f} .. "
                           f"{y[-1]*1e3:.1f} ms at L={x[-1]:.0f}  (prefill {x[-1]/y[-1]:.0f} tokens/s at L={x[-1]:.0f})")
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    ax1.set_xlabel("context length L (tokens the step sees)")
    ax1.set_ylabel("time of one generation step (ms)")
    ax1.set_title("One step: O(L) without the cache, ~O(1) with it", fontsize=11)
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.set_xlabel("context length L")
    ax2.set_ylabel("time of one step with the cache (ms)")
    ax2.set_ylim(bottom=0)
    ax2.set_xlim(left=0)
    ax2.set_title("With the cache (linear axes): attention adds O(L)", fontsize=11)
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, f"step_latency{suffix}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def interp_loglog(d, L):
    """Step time at context L from measured points d {L: rec}: log-log interpolation, clamped to the ends."""
    x, y = series(d)
    return float(np.exp(np.interp(np.log(L), np.log(x), np.log(y))))


def predicted_speedup(gen, model, n):
    """Cost model: uncached total = sum of prefills of length P+i; cached = prefill(P) + sum of decode steps,
    each from the measured per-step curves. Only defined where both curves were measured."""
    prompt = gen["BM_Generate"][model]["cached"][min(gen["BM_Generate"][model]["cached"])].get("prompt", 8)
    prompt = int(prompt)
    pre = gen["BM_Prefill"][model]["-"]
    step = gen["BM_Step"][model]["cached"]
    hi = min(max(pre), max(step))
    if prompt + n - 1 > hi:
        return None
    lengths = np.arange(prompt + 1, prompt + n)  # contexts of the steps after the prompt pass
    uncached = interp_loglog(pre, prompt) + sum(interp_loglog(pre, L) for L in lengths)
    cached = interp_loglog(pre, prompt) + sum(interp_loglog(step, L) for L in lengths)
    return uncached / cached


def plot_speedup(gen, out, suffix, summary):
    generate = gen.get("BM_Generate", {})
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for model in ("random", "real", "seq2seq"):
        g = generate.get(model, {})
        if "cached" not in g or "uncached" not in g:
            continue
        ns = sorted(set(g["cached"]) & set(g["uncached"]))
        sp = [g["uncached"][n]["seconds"] / g["cached"][n]["seconds"] for n in ns]
        color = MODEL_COLOR[model]
        ax.plot(ns, sp, marker="o", color=color, linestyle="-", label=f"{model} (measured)")
        for n, s in zip(ns, sp):
            if n in (128, 512, 1024) or n == ns[-1]:
                ax.annotate(f"{s:.0f}x", (n, s), textcoords="offset points", xytext=(-10, 7), fontsize=8, color=color)
        wanted = [n for n in (16, 64, 128, 256, 512, 1024) if n in ns]
        summary.append(f"speedup  {model:8s} " + "  ".join(f"n={n}: {g['uncached'][n]['seconds'] / g['cached'][n]['seconds']:.1f}x"
                                                       for n in wanted))
        same = [g["uncached"][n].get("same_tokens", 1.0) for n in ns]
        summary.append(f"tokens   {model:8s} uncached == cached tokens for every n: {'yes' if all(s == 1 for s in same) else 'NO'}")
        if model in gen.get("BM_Prefill", {}) and model in gen.get("BM_Step", {}):
            pn = [n for n in ns if predicted_speedup(gen, model, n)]
            if pn:
                pred = [predicted_speedup(gen, model, n) for n in pn]
                ax.plot(pn, pred, linestyle="--", color=color, linewidth=1.2,
                        label=f"{model}: predicted from the per-step curves")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("new tokens generated, n")
    ax.set_ylabel("speedup = time without cache / time with cache")
    ax.set_title("KV-cache speedup grows ~linearly with n (only where both were measured)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, f"speedup{suffix}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_memory(memories, gen, out, suffix, summary):
    fig, ax = plt.subplots(figsize=(8, 5.5))
    styles = {"fp32": "-", "fp16": "--", "bf16": ":"}
    for mem in memories:
        name = mem["model"]
        key = "random" if name.startswith("random") else "real"
        color = MODEL_COLOR[key]
        for dtype in ("fp32", "fp16", "bf16"):
            rows = [r for r in mem["rows"] if r["dtype"] == dtype]
            if not rows:
                continue
            L = np.array([r["length"] for r in rows], dtype=float)
            computed = np.array([r["computed"] for r in rows], dtype=float) / 2**20
            allocated = np.array([r["allocated"] for r in rows], dtype=float) / 2**20
            rss = np.array([r["rss_growth"] for r in rows], dtype=float) / 2**20
            if dtype == "bf16":  # the same bytes as fp16: draw its formula only, not a third marker set
                continue
            ax.plot(L, computed, linestyle=styles[dtype], color=color, linewidth=1.2,
                    label=f"{key} {dtype}{'/bf16' if dtype == 'fp16' else ''}: formula ({rows[0]['bytes_per_token']} B/token)")
            ax.plot(L, allocated, marker="o", linestyle="none", color=color, markersize=6, markerfacecolor="none",
                    label=f"{key} {dtype}: bytes_allocated()")
            ax.plot(L, rss, marker="x", linestyle="none", color=color, markersize=6, label=f"{key} {dtype}: RSS growth")
        r8 = [r for r in mem["rows"] if r["length"] == max(x["length"] for x in mem["rows"])]
        summary.append(f"memory   {key:8s} " + "  ".join(
            f"{r['dtype']} {r['bytes_per_token']} B/token, {r['allocated'] / 2**20:.0f} MiB at {r['length']}" for r in r8))
        summary.append(f"memory   {key:8s} bytes_allocated() == formula for all rows: "
                       f"{'yes' if all(r['allocated'] == r['computed'] for r in mem['rows']) else 'NO'}; RSS growth / allocated: "
                       f"{min(r['rss_growth'] / r['allocated'] for r in mem['rows']):.3f} .. "
                       f"{max(r['rss_growth'] / r['allocated'] for r in mem['rows']):.3f}")
    # The generation benchmark's own caches (capacity prompt + n, fp32) as a cross-check.
    for model, g in gen.get("BM_Generate", {}).items():
        if model == "seq2seq" or "cached" not in g:
            continue
        ns = sorted(g["cached"])
        cap = np.array([n + g["cached"][n].get("prompt", 0) for n in ns], dtype=float)
        kv = np.array([g["cached"][n]["kv_bytes"] for n in ns]) / 2**20
        ax.plot(cap, kv, marker="^", linestyle="none", color=MODEL_COLOR[model], markersize=5, alpha=0.7,
                label=f"{model}: cache in bench_generation (fp32)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens held in the cache")
    ax.set_ylabel("KV-cache memory (MiB)")
    ax.set_title("KV-cache memory grows linearly with length (batch 1)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out, f"kv_memory{suffix}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def cost_model_summary(gen, summary):
    """The numbers behind the speedup: decode streams the weights (bandwidth-bound), the uncached path runs
    batched GEMMs (compute-bound). Speedup ~ (n/2 + prompt) * t_prefill_per_token / t_decode_step."""
    bw = None
    if "BM_ReadBandwidth" in gen:
        rec = gen["BM_ReadBandwidth"]["-"]["-"][256]
        bw = 256 * 2**20 / rec["seconds"] / 1e9
        summary.append(f"machine  read bandwidth (sum of 256 MiB, model threads): {bw:.1f} GB/s")
    for model in ("random", "real"):
        if model not in gen.get("BM_Step", {}) or model not in gen.get("BM_Prefill", {}):
            continue
        steps = gen["BM_Step"][model]["cached"]
        pre = gen["BM_Prefill"][model]["-"]
        L0 = min(steps)
        st = steps[L0]
        wbytes = st.get("weight_bytes", 0)
        fpt = st.get("flops_per_token", 0)
        dec_s = st["seconds"]
        line = (f"model    {model:8s} weights streamed per token {wbytes / 2**20:.1f} MiB, {fpt / 1e6:.0f} MFLOP/token; "
                f"decode step at L={L0}: {dec_s * 1e3:.2f} ms = {wbytes / dec_s / 1e9:.1f} GB/s of weights")
        if bw:
            line += f" ({100 * wbytes / dec_s / 1e9 / bw:.0f}% of read bandwidth)"
        summary.append(line)
        Lp = max(L for L in pre if L <= 512)
        t_tok = pre[Lp]["seconds"] / Lp
        summary.append(f"model    {model:8s} prefill at L={Lp}: {t_tok * 1e3:.3f} ms/token = {fpt / t_tok / 1e9:.1f} GFLOP/s "
                       f"of weight matmuls; decode/prefill time per token = {dec_s / t_tok:.1f}; "
                       f"speedup model (n/2)*t_prefill_token/t_decode at n=128/512/1024: "
                       + "/".join(f"{n / 2 * t_tok / dec_s:.0f}x" for n in (128, 512, 1024)))


def cache_ops_summary(gen, summary):
    for kind, what in (("BM_CacheAppend", "append 1 token, all layers"), ("BM_CacheCopy", "copy()"),
                       ("BM_DecodeAttention", "attention 1 query, all layers")):
        for model, d in gen.get(kind, {}).items():
            parts = []
            for L, rec in sorted(d["-"].items()):
                gbs = rec.get("bytes/s", 0) / 1e9
                parts.append(f"L={L}: {rec['seconds'] * 1e6:.1f} us ({gbs:.1f} GB/s)")
            summary.append(f"cacheop  {model:8s} {what}: " + "; ".join(parts))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generation", required=True, help="bench_generation JSON (--benchmark_out)")
    ap.add_argument("--memory", action="append", default=[], help="memory_report --json output (repeatable)")
    ap.add_argument("--out", default="bench/plots", help="directory for the PNGs")
    ap.add_argument("--suffix", default="", help="appended to each PNG's name (e.g. _quick)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    context, gen = load_generation(args.generation)
    memories = []
    for m in args.memory:
        with open(m) as f:
            memories.append(json.load(f))
    summary = []
    load = context.get("load_avg")
    summary.append(f"run      {context.get('date', '?')}, {context.get('num_cpus', '?')} CPUs, load average at start "
                   f"{', '.join(f'{x:.2f}' for x in load) if load else '?'}")
    paths = [plot_total(gen, args.out, args.suffix, summary), plot_steps(gen, args.out, args.suffix, summary),
             plot_speedup(gen, args.out, args.suffix, summary)]
    if memories:
        paths.append(plot_memory(memories, gen, args.out, args.suffix, summary))
    cost_model_summary(gen, summary)
    cache_ops_summary(gen, summary)
    for line in summary:
        print(line)
    for p in paths:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
