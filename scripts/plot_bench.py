#!/usr/bin/env python3
"""Plots bench_generation's JSON (Google Benchmark) and memory_report's JSON as PNG, and prints the fitted
slopes, the speedups and the cost model that explains them.

    python3 scripts/plot_bench.py --generation bench/results/generation.json \
        --memory bench/results/memory_random.json [--memory bench/results/memory_real.json] \
        [--note "2 cores, load 0.1"] --out bench/plots [--suffix _quick]

Writes
  generation_total.png  total time vs n (log-log) with least-squares slopes: ~2 without the cache, ~1 with it
  step_latency.png      time of one generation step vs its context length (log-log, and linear for the cache)
  speedup.png           time without / time with the cache vs n, measured and predicted from the step curves
  kv_memory.png         KV-cache bytes vs length: formula, bytes_allocated() and the process's RSS growth
  batched_decode.png    (with --batched, bench_batched's JSON; into --batched-out, docs/images from bench.sh)
                        aggregate decode tokens/s vs sequences decoding together at context 512 (beside
                        llama.cpp's quoted numbers), and the step latency of running streams while a 1024-token
                        prompt is admitted, by prompt tokens per step; --batched alone plots only this

Honesty rules the plots keep: measured points are markers; fits and predictions are dashed lines drawn only
over the range they were fitted on or predicted from; a series ends where its measurements end, and nothing
is extrapolated. Uses matplotlib from Debian's python3-matplotlib.
"""
import argparse
import json
import os
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

MODELS = ("random", "real", "seq2seq")
MODEL_LABEL = {
    "random": "random decoder 6L×8H×512, fp32",
    "real": "SmolLM2-135M Q4_1, 30L",
    "seq2seq": "encoder-decoder 6+6L×8H×512, fp32",
}
SHORT_LABEL = {"random": "random decoder", "real": "SmolLM2-135M Q4_1", "seq2seq": "encoder-decoder"}
MODEL_COLOR = {"random": "#1f77b4", "real": "#d62728", "seq2seq": "#2ca02c"}
FIT_MIN_N = 64  # slopes are fitted over n >= this: below it the prompt pass and fixed costs dominate
QUOTED_N = (128, 512, 1024)

plt.rcParams.update({
    "font.size": 10,
    "axes.titlesize": 11.5,
    "axes.labelsize": 10,
    "legend.fontsize": 8,
    "legend.framealpha": 0.92,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.dpi": 100,
})


def to_seconds(b):
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b.get("time_unit", "ns")]
    return b["real_time"] * scale


def load_generation(path):
    """Returns (context, {kind: {model: {mode: {n: record}}}}) from Google Benchmark JSON."""
    with open(path) as f:
        data = json.load(f)
    out = {}
    for b in data["benchmarks"]:
        if b.get("error_occurred"):
            continue
        # Repeated cases report only aggregates; of those, keep the minimum (the least disturbed run).
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "min":
            continue
        parts = b.get("run_name", b["name"]).split("/")
        kind = parts[0]
        try:
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
        except (IndexError, ValueError):
            print(f"plot_bench: ignoring unexpected benchmark name {b['name']}", file=sys.stderr)
            continue
        rec = dict(b)
        rec["seconds"] = to_seconds(b)
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
    return slope, intercept, x[keep].min(), x[keep].max(), int(keep.sum())


def fmt_seconds(s):
    if s >= 60:
        return f"{s / 60:.1f} min"
    if s >= 1:
        return f"{s:.1f} s"
    return f"{s * 1e3:.0f} ms"


def log2_axis(ax):
    """x axis in powers of two, labelled 16, 32, ... 1024 (plain numbers read faster than 2^k)."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def log10_axis_y(ax, unit="", subs=(1.0,)):
    """Log y axis labelled in plain numbers with a unit; subs=(1, 2, 5) labels 1-2-5 steps for short ranges."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}{unit}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def footer(fig, note):
    """The machine note, wrapped to the figure's width (about 17 characters of 7-point text per inch)."""
    if note:
        text = "\n".join(textwrap.wrap(note, width=int(fig.get_figwidth() * 17)))
        fig.text(0.995, 0.005, text, ha="right", va="bottom", fontsize=7, color="0.4")


def save(fig, out, name, suffix, note):
    footer(fig, note)
    lines = len(textwrap.wrap(note, width=int(fig.get_figwidth() * 17))) if note else 0
    fig.tight_layout(rect=(0, 0.16 * lines / fig.get_figheight(), 1, 1))
    path = os.path.join(out, f"{name}{suffix}.png")
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ plots


def plot_total(gen, out, suffix, note, summary):
    fig, ax = plt.subplots(figsize=(8.6, 7.2))
    generate = gen.get("BM_Generate", {})
    for model in MODELS:
        if model not in generate:
            continue
        color = MODEL_COLOR[model]
        for mode in ("uncached", "cached"):
            if mode not in generate[model]:
                continue
            x, y = series(generate[model][mode])
            cached = mode == "cached"
            fit = fit_slope(x, y)
            label = f"{MODEL_LABEL[model]}, {'with' if cached else 'without'} cache"
            if fit:
                slope, intercept, lo, hi, k = fit
                label += f": slope {slope:.2f}"
                xs = np.geomspace(lo, hi, 20)
                ax.plot(xs, np.exp(intercept) * xs ** slope, linestyle="--", color=color, linewidth=1.3, alpha=0.8)
                summary.append(f"slope    {model:8s} {'with' if cached else 'without'} cache {slope:5.2f}  "
                               f"(least squares on log-log, n = {lo:.0f}..{hi:.0f}, {k} points)")
            ax.plot(x, y, marker="o" if cached else "s", linestyle="-" if cached else ":", linewidth=0.9,
                    color=color, markerfacecolor=color if cached else "white", markersize=6.5, label=label)
            if not cached and "cached" in generate[model] and x.max() < max(generate[model]["cached"]):
                ax.annotate(f"no-cache runs stop at n={x.max():.0f} ({fmt_seconds(y[-1])})", xy=(x[-1], y[-1]),
                            xytext=(-8, 4), textcoords="offset points", fontsize=7.5, color=color, ha="right",
                            va="bottom")
    log2_axis(ax)
    log10_axis_y(ax, " s")
    ax.set_xlabel("new tokens generated, n (after an 8-token prompt)")
    ax.set_ylabel("total generation time")
    ax.set_title("Generation time: O(n²) without the KV cache, O(n) with it")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", axis="y", alpha=0.12)
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], linestyle="--", color="0.3"))
    labels.append(f"least-squares fit over n ≥ {FIT_MIN_N} (slope = exponent)")
    # Below the axes: inside, it would cover the points of whichever series lies under it.
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=2, fontsize=7.5)
    return save(fig, out, "generation_total", suffix, note)


def plot_steps(gen, out, suffix, note, summary):
    steps = gen.get("BM_Step", {})
    prefill = gen.get("BM_Prefill", {})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12.5, 5.2))
    for model in MODELS:
        color = MODEL_COLOR[model]
        if model in prefill:
            x, y = series(prefill[model]["-"])
            ax1.plot(x, y * 1e3, marker="s", markerfacecolor="white", color=color, linestyle=":", linewidth=1,
                     markersize=5.5, label=f"{model}, without cache")
            summary.append(f"step     {model:8s} without cache: {y[0] * 1e3:7.1f} ms at L={x[0]:.0f} .. "
                           f"{y[-1] * 1e3:7.1f} ms at L={x[-1]:.0f}  ({x[-1] / y[-1]:.0f} tokens/s at L={x[-1]:.0f})")
        if model in steps:
            x, y = series(steps[model]["cached"])
            ax1.plot(x, y * 1e3, marker="o", color=color, linestyle="-", linewidth=1, markersize=5.5,
                     label=f"{model}, with cache")
            ax2.plot(x, y * 1e3, marker="o", color=color, linestyle="-", linewidth=1, markersize=4.5,
                     label=MODEL_LABEL[model])
            summary.append(f"step     {model:8s} with cache:    {y[0] * 1e3:7.2f} ms at L={x[0]:.0f} .. "
                           f"{y[-1] * 1e3:7.2f} ms at L={x[-1]:.0f}")
    log2_axis(ax1)
    log10_axis_y(ax1, " ms")
    ax1.set_xlabel("context length L (positions the step attends over)")
    ax1.set_ylabel("time of one generation step")
    ax1.set_title("One step: O(L) without the cache, ~constant with it")
    ax1.grid(True, which="major", alpha=0.35)
    ax1.grid(True, which="minor", axis="y", alpha=0.12)
    ax1.legend(loc="upper left", ncol=1)
    ax2.set_xlabel("context length L")
    ax2.set_ylabel("time of one step with the cache (ms)")
    ax2.set_ylim(bottom=0)
    ax2.set_xlim(left=0)
    ax2.set_title("With the cache, linear axes: attention adds a slope")
    ax2.grid(True, alpha=0.35)
    ax2.legend(loc="lower right")
    return save(fig, out, "step_latency", suffix, note)


def interp_loglog(d, L):
    """Time at context L from measured points d {L: rec}: log-log interpolation inside the measured range."""
    x, y = series(d)
    return float(np.exp(np.interp(np.log(L), np.log(x), np.log(y))))


def predicted_speedup(gen, model, n):
    """Cost model from the per-step curves: without the cache, the step at context L costs a prefill of L
    tokens; with it, one decode step at L. The prompt pass is common to both. None outside the measured range."""
    g = gen["BM_Generate"][model]["cached"]
    prompt = int(g[min(g)].get("prompt", 8))
    pre = gen["BM_Prefill"][model]["-"]
    step = gen["BM_Step"][model]["cached"]
    lo = max(min(pre), min(step))
    hi = min(max(pre), max(step))
    first = prompt + 1
    if first < lo or prompt + n - 1 > hi:
        return None
    lengths = np.arange(first, prompt + n)  # the steps after the prompt pass
    common = interp_loglog(pre, max(prompt, lo))
    uncached = common + sum(interp_loglog(pre, L) for L in lengths)
    cached = common + sum(interp_loglog(step, L) for L in lengths)
    return uncached / cached


def plot_speedup(gen, out, suffix, note, summary):
    generate = gen.get("BM_Generate", {})
    fig, ax = plt.subplots(figsize=(8.6, 6.6))
    for model in MODELS:
        g = generate.get(model, {})
        if "cached" not in g:
            continue
        color = MODEL_COLOR[model]
        ns = sorted(set(g["cached"]) & set(g.get("uncached", {})))
        sp = [g["uncached"][n]["seconds"] / g["cached"][n]["seconds"] for n in ns]
        if ns:
            ax.plot(ns, sp, marker="o", color=color, linestyle="-", linewidth=1.2, markersize=6,
                    label=f"{SHORT_LABEL[model]}: measured")
            for n, s in zip(ns, sp):
                if n in QUOTED_N or n == ns[-1]:
                    ax.annotate(f"{s:.0f}×", (n, s), textcoords="offset points", xytext=(-4, 8), fontsize=8.5,
                                color=color, ha="right", fontweight="bold")
            same = [g["uncached"][n].get("same_tokens", 1.0) for n in ns]
            summary.append(f"tokens   {model:8s} without cache == with cache, token for token, for every n: "
                           f"{'yes' if all(s == 1 for s in same) else 'NO'}")
        pred = {}
        if model in gen.get("BM_Prefill", {}) and model in gen.get("BM_Step", {}):
            for n in sorted(g["cached"]):
                p = predicted_speedup(gen, model, n)
                if p:
                    pred[n] = p
            if pred:
                ax.plot(list(pred), list(pred.values()), linestyle="--", color=color, linewidth=1.2, alpha=0.85,
                        label=f"{SHORT_LABEL[model]}: predicted from step times")
                for n, s in pred.items():
                    if n not in ns and n in QUOTED_N:
                        ax.annotate(f"~{s:.0f}×", (n, s), textcoords="offset points", xytext=(-4, 8), fontsize=8.5,
                                    color=color, ha="right")
        parts = []
        for n in (16, 64) + QUOTED_N:
            if n in ns:
                parts.append(f"n={n}: {g['uncached'][n]['seconds'] / g['cached'][n]['seconds']:.1f}x")
            elif n in pred:
                parts.append(f"n={n}: ~{pred[n]:.1f}x (predicted, not run)")
        summary.append(f"speedup  {model:8s} " + "  ".join(parts))
        if pred:
            summary.append(f"predict  {model:8s} from step curves: " + "  ".join(
                f"n={n}: {pred[n]:.1f}x" for n in (16, 64) + QUOTED_N if n in pred))
    log2_axis(ax)
    log10_axis_y(ax, "×", subs=(1.0, 2.0, 5.0))
    ax.set_xlabel("new tokens generated, n")
    ax.set_ylabel("speedup = time without cache / time with cache")
    ax.set_title("What the KV cache buys: speedup grows ~linearly with n")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", axis="y", alpha=0.12)
    ax.margins(x=0.06)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=3, fontsize=7.5)
    return save(fig, out, "speedup", suffix, note)


def plot_memory(memories, gen, out, suffix, note, summary):
    fig, ax = plt.subplots(figsize=(8.6, 5.8))
    styles = {"fp32": "-", "fp16": "--"}
    for mem in memories:
        key = "random" if mem["model"].startswith("random") else "real"
        color = MODEL_COLOR[key]
        for dtype in ("fp32", "fp16"):  # bf16 has fp16's bytes: one line for both
            rows = [r for r in mem["rows"] if r["dtype"] == dtype]
            if not rows:
                continue
            L = np.array([r["length"] for r in rows], dtype=float)
            computed = np.array([r["computed"] for r in rows], dtype=float) / 2**20
            allocated = np.array([r["allocated"] for r in rows], dtype=float) / 2**20
            rss = np.array([r["rss_growth"] for r in rows], dtype=float) / 2**20
            name = "fp16/bf16" if dtype == "fp16" else dtype
            ax.plot(L, computed, linestyle=styles[dtype], color=color, linewidth=1.3,
                    label=f"{MODEL_LABEL[key].split(',')[0]}, {name}: {rows[0]['bytes_per_token'] / 1024:g} KiB/token")
            ax.plot(L, allocated, marker="o", linestyle="none", color=color, markersize=7, markerfacecolor="none")
            ax.plot(L, rss, marker="x", linestyle="none", color=color, markersize=5)
        longest = max(r["length"] for r in mem["rows"])
        summary.append(f"memory   {key:8s} " + "  ".join(
            f"{r['dtype']} {r['bytes_per_token']} B/token = {r['allocated'] / 2**20:.0f} MiB at {r['length']}"
            for r in mem["rows"] if r["length"] == longest))
        summary.append(f"memory   {key:8s} bytes_allocated() == formula for every row: "
                       f"{'yes' if all(r['allocated'] == r['computed'] for r in mem['rows']) else 'NO'}; "
                       f"RSS growth / allocated: {min(r['rss_growth'] / r['allocated'] for r in mem['rows']):.3f} .. "
                       f"{max(r['rss_growth'] / r['allocated'] for r in mem['rows']):.3f}")
    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="0.3", linestyle="-"),
                Line2D([], [], marker="o", color="0.3", linestyle="none", markerfacecolor="none", markersize=7),
                Line2D([], [], marker="x", color="0.3", linestyle="none", markersize=5)]
    labels += ["line: formula 2·layers·kv_heads·head_dim·bytes·L", "cache.bytes_allocated()",
               "growth of the process's resident memory"]
    log2_axis(ax)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g} MiB"))
    ax.set_xlabel("tokens held in the cache, L (batch 1)")
    ax.set_ylabel("KV-cache memory")
    ax.set_title("KV-cache memory grows linearly with the length")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", axis="y", alpha=0.12)
    ax.legend(handles, labels, loc="upper left")
    return save(fig, out, "kv_memory", suffix, note)


# ------------------------------------------------------------------------------------------------ text


def cost_model_summary(gen, summary):
    """The numbers behind the speedup. A decode step streams every weight once (memory-bound); a step without
    the cache is a prefill of L tokens, batched matmuls (compute-bound). With t_dec the decode step and
    t_tok the prefill time per token, the uncached step at L costs ~L·t_tok, so
    speedup(n) ~ sum_L L·t_tok / sum_L t_dec ~ (P + n/2)·t_tok / t_dec."""
    bw = None
    if "BM_ReadBandwidth" in gen:
        rec = gen["BM_ReadBandwidth"]["-"]["-"][256]
        bw = rec.get("bytes/s", 256 * 2**20 / rec["seconds"]) / 1e9
        summary.append(f"machine  read bandwidth (sum over 256 MiB on the models' threads): {bw:.1f} GB/s")
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
        line = (f"model    {model:8s} decode: {wbytes / 1e6:.1f} MB of weights streamed per token, step at L={L0} "
                f"{dec_s * 1e3:.2f} ms = {wbytes / dec_s / 1e9:.1f} GB/s")
        if bw:
            line += f" ({100 * wbytes / dec_s / 1e9 / bw:.0f}% of the read bandwidth)"
        line += f", {fpt / dec_s / 1e9:.1f} GFLOP/s"
        summary.append(line)
        Lp = max(L for L in pre if L <= 512)
        t_tok = pre[Lp]["seconds"] / Lp
        summary.append(f"model    {model:8s} prefill at L={Lp}: {t_tok * 1e3:.3f} ms/token, {fpt / 1e6:.0f} MFLOP/token "
                       f"(weight matmuls) = {fpt / t_tok / 1e9:.1f} GFLOP/s; t_decode / t_prefill_token = "
                       f"{dec_s / t_tok:.1f}")
        summary.append(f"model    {model:8s} simple model speedup ~ (8 + n/2)·t_prefill_token / t_decode: " + "  ".join(
            f"n={n}: {(8 + n / 2) * t_tok / dec_s:.0f}x" for n in QUOTED_N))


def cache_ops_summary(gen, summary):
    for kind, what in (("BM_CacheAppend", "append 1 token to all layers"), ("BM_CacheCopy", "copy()"),
                       ("BM_DecodeAttention", "attention, 1 query, all layers")):
        for model, d in gen.get(kind, {}).items():
            parts = []
            for L, rec in sorted(d["-"].items()):
                gbs = rec.get("bytes/s", 0) / 1e9
                parts.append(f"L={L}: {rec['seconds'] * 1e6:.1f} us ({gbs:.1f} GB/s)")
            summary.append(f"cacheop  {model:8s} {what}: " + "; ".join(parts))


def load_batched(path):
    """bench_batched's JSON as {name: {args: benchmark record}}; args is the tuple of the case's numbers (S for
    the decode cases, (budget, streams) for admission). With --benchmark_repetitions the median is used (the
    machine is shared: a median is steadier than a best), otherwise the best of repeated runs."""
    with open(path) as f:
        data = json.load(f)
    out, medians = {}, {}
    for b in data.get("benchmarks", []):
        if "error_occurred" in b:
            continue
        name, _, rest = b["run_name"].partition("/") if "run_name" in b else b["name"].partition("/")
        nums = tuple(int(p) for p in rest.split("/") if p.isdigit())
        key = nums[0] if len(nums) == 1 else nums
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") == "median":
                medians.setdefault(name, {})[key] = b
            continue
        prev = out.setdefault(name, {}).get(key)
        if prev is None or to_seconds(b) < to_seconds(prev):
            out[name][key] = b
    for name, cases in medians.items():
        out.setdefault(name, {}).update(cases)
    return out


# llama.cpp's llama-batched-bench on SmolLM2-135M (S_TG, tok/s at context 512-544, 2 threads, f16 K/V), run on this
# project's 2-core AMD EPYC VM (Zen 4, AVX-512 VNNI) on 2026-12-03, right before the curve in docs/images (command
# in docs/batching.md).
LLAMA_CPP_BATCHED = {1: 89.9, 2: 108.3, 4: 126.6, 8: 138.6}


def plot_batched(batched, out, suffix, note, summary, before=None):
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13.5, 5.8), gridspec_kw={"width_ratios": [3, 2]})
    styles = {"BM_BatchedDecode": ("batched forward (Decoder)", "#d62728", "o", "-"),
              "BM_BatchedDecodeQ8_0": ("batched forward, q8_0 K/V (3.8x fewer attention bytes)", "#9467bd", "^", "-"),
              "BM_SchedulerDecode": ("through the Scheduler (sampling, bookkeeping)", "#1f77b4", "s", "-"),
              "BM_BatchedDecodeInt8": ("batched forward, int8 matmuls (MatmulPrecision::int8)", "#2ca02c", "D", "-"),
              "BM_SchedulerDecodeInt8": ("through the Scheduler, int8 matmuls", "#17becf", "v", "-"),
              "BM_BatchedDecodeInt8Q8_0": ("batched forward, int8 matmuls + q8_0 K/V", "#8c564b", "P", "-")}
    curves = [(batched, name, style) for name, style in styles.items()]
    if before:
        curves.append((before, "BM_BatchedDecode", ("batched forward, 4 tokens per weight block (before; another run)", "#ff9896",
                                                     "o", ":")))
    # Ratios to one sequence of the same run: on a shared machine absolute tokens/s move with the load, the
    # ratio within a run much less. Each point is annotated with its aggregate tokens/s.
    for data, name, (label, color, marker, ls) in curves:
        cases = {k: v for k, v in data.get(name, {}).items() if isinstance(k, int)}
        if 1 not in cases:
            continue
        xs = sorted(cases)
        base = cases[1]["tokens_per_second"]
        ys = [cases[x]["tokens_per_second"] / base for x in xs]
        ax.plot(xs, ys, marker=marker, color=color, ls=ls, label=label)
        for x, y in zip(xs, ys):
            ax.annotate(f"{cases[x]['tokens_per_second']:.0f}", (x, y), textcoords="offset points", xytext=(0, 7),
                        ha="center", fontsize=7.5, color=color)
        summary.append(f"batched  {label}: aggregate tokens/s " +
                       ", ".join(f"{x} seq {cases[x]['tokens_per_second']:.1f}" for x in xs) +
                       "; vs one sequence " + ", ".join(f"{x}: {y:.2f}x" for x, y in zip(xs, ys)))
        if name == "BM_BatchedDecode" and data is batched:
            ax.plot(xs, xs, ls="--", color="0.6", lw=1, label="linear (weights read once, nothing else costs)")
    # The fastest configuration against the default's one sequence (f32 matmuls, f32 K/V): what a server gains by
    # batching with int8 and q8_0 over serving one conversation at a time with the defaults.
    fast = {k: v for k, v in batched.get("BM_BatchedDecodeInt8Q8_0", {}).items() if isinstance(k, int)}
    default = batched.get("BM_BatchedDecode", {}).get(1)
    if fast and default:
        xs = sorted(fast)
        ys = [fast[x]["tokens_per_second"] / default["tokens_per_second"] for x in xs]
        ax.plot(xs, ys, marker="P", color="#8c564b", ls=":",
                label="int8 + q8_0 K/V, relative to the default's one sequence (f32, f32 K/V)")
        summary.append("batched  int8 + q8_0 K/V against the default one sequence: " +
                       ", ".join(f"{x}: {y:.2f}x" for x, y in zip(xs, ys)))
    ax.plot([8], [4], ls="", marker="*", markersize=12, color="0.2", label="goal of issue 11: 4x at 8 sequences")
    lx = sorted(LLAMA_CPP_BATCHED)
    ax.plot(lx, [LLAMA_CPP_BATCHED[x] / LLAMA_CPP_BATCHED[1] for x in lx], marker="D", ls="-.", color="#2ca02c",
            label="llama.cpp llama-batched-bench (same machine, 2026-12-03)")
    for x in lx:
        ax.annotate(f"{LLAMA_CPP_BATCHED[x]:.0f}", (x, LLAMA_CPP_BATCHED[x] / LLAMA_CPP_BATCHED[1]),
                    textcoords="offset points", xytext=(0, -13), ha="center", fontsize=7.5, color="#2ca02c")
    log2_axis(ax)
    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_xlabel("sequences decoding together (each at context 512)")
    ax.set_ylabel("aggregate decode tokens/s, relative to one sequence (labels: tokens/s)")
    ax.set_title("SmolLM2-135M Q4_1: batched decode against one sequence")
    ax.legend(loc="upper left", fontsize=7.5)
    adm = {k: v for k, v in batched.get("BM_Admission", {}).items() if isinstance(k, tuple)}
    if adm:
        keys = sorted(adm, key=lambda k: (k[1], k[0]))  # by streams, then budget
        normal = [adm[k]["normal_step_ms"] for k in keys]
        mean = [adm[k]["admission_step_ms"] for k in keys]
        worst = [adm[k]["admission_worst_ms"] for k in keys]
        pos = np.arange(len(keys))
        bx.bar(pos - 0.27, normal, 0.27, label="normal step", color="#7f7f7f")
        bx.bar(pos, mean, 0.27, label="step while the prompt is admitted (mean)", color="#ff7f0e")
        bx.bar(pos + 0.27, worst, 0.27, label="... (worst)", color="#d62728")
        for i, (budget, streams) in enumerate(keys):
            rec = adm[(budget, streams)]
            bx.annotate(f"{mean[i] / normal[i]:.1f}x\n{rec['admission_steps']:.0f} steps", (pos[i], mean[i]),
                        textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7)
            summary.append(f"batched  admission of a 1024-token prompt beside {streams} decoding stream(s), "
                           f"prefill_tokens_per_decode {budget}: normal step {normal[i]:.1f} ms, during admission "
                           f"mean {mean[i]:.1f} ms (x{mean[i] / normal[i]:.2f}), worst {worst[i]:.1f} ms, "
                           f"{rec['admission_steps']:.0f} steps, {rec['admission_seconds']:.2f} s to admit")
        bx.axhline(0, color="k", lw=0.5)
        bx.set_xticks(pos)
        bx.set_xticklabels([f"{b}/stream\n{s} str" for b, s in keys], fontsize=7.5)
        bx.set_yscale("log")
        bx.set_ylabel("step time (ms)")
        bx.set_xlabel("prompt tokens per step per stream (default 2) / streams")
        bx.set_title("steps while a 1024-token prompt comes in (goal <= 3x)")
        bx.legend(loc="upper left", fontsize=7.5)
    return save(fig, out, "batched_decode", suffix, note)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generation", action="append", default=[],
                    help="bench_generation JSON (--benchmark_out); repeatable: later files add cases (e.g. a "
                         "separate run of one long case) and replace cases of the same name")
    ap.add_argument("--memory", action="append", default=[], help="memory_report --json output (repeatable)")
    ap.add_argument("--out", default="bench/plots", help="directory for the PNGs")
    ap.add_argument("--suffix", default="", help="appended to each PNG's name (e.g. _quick)")
    ap.add_argument("--note", default="", help="machine note printed in each figure's corner")
    ap.add_argument("--batched", help="bench_batched JSON (--benchmark_out): adds batched_decode.png")
    ap.add_argument("--batched-before", help="an earlier bench_batched JSON drawn beside it (before/after)")
    ap.add_argument("--batched-out", help="directory for batched_decode.png (default: --out)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if not args.generation:  # only the batched plot
        if not args.batched:
            ap.error("give --generation and/or --batched")
        summary = [f"run      {args.note}"]
        os.makedirs(args.batched_out or args.out, exist_ok=True)
        before = load_batched(args.batched_before) if args.batched_before else None
        path = plot_batched(load_batched(args.batched), args.batched_out or args.out, args.suffix, args.note, summary,
                            before)
        for line in summary:
            print(line)
        print(f"wrote {path} ({os.path.getsize(path) // 1024} KB)")
        return 0
    context, gen = load_generation(args.generation[0])
    for extra in args.generation[1:]:
        for kind, models in load_generation(extra)[1].items():
            for model, modes in models.items():
                for mode, cases in modes.items():
                    gen.setdefault(kind, {}).setdefault(model, {}).setdefault(mode, {}).update(cases)
    memories = []
    for m in args.memory:
        with open(m) as f:
            memories.append(json.load(f))
    note = args.note
    if not note:
        load = context.get("load_avg")
        note = (f"{context.get('num_cpus', '?')} CPUs, load at start "
                f"{load[0]:.2f}" if load else f"{context.get('num_cpus', '?')} CPUs") + f", {context.get('date', '')}"
    summary = [f"run      {context.get('date', '?')}, {context.get('num_cpus', '?')} CPUs; {args.note or note}"]
    paths = [plot_total(gen, args.out, args.suffix, note, summary),
             plot_steps(gen, args.out, args.suffix, note, summary),
             plot_speedup(gen, args.out, args.suffix, note, summary)]
    if memories:
        paths.append(plot_memory(memories, gen, args.out, args.suffix, note, summary))
    if args.batched:
        before = load_batched(args.batched_before) if args.batched_before else None
        os.makedirs(args.batched_out or args.out, exist_ok=True)
        paths.append(plot_batched(load_batched(args.batched), args.batched_out or args.out, args.suffix, note, summary,
                                  before))
    cost_model_summary(gen, summary)
    cache_ops_summary(gen, summary)
    for line in summary:
        print(line)
    for p in paths:
        print(f"wrote {p} ({os.path.getsize(p) // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
