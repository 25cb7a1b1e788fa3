#!/usr/bin/env python3
"""kvcache-server over HTTP: aggregate tokens/s and time to first token (TTFT) with 1, 4 and 8 concurrent
streaming clients; and the TTFT of a follow-up in the same conversation (its slot's cache reused) against the
same request cold, at ~1k tokens of history. Writes bench/results/server.json and bench/plots/server.png.

    python3 scripts/bench-server.py [--server build/apps/server/kvcache-server] [--threads 2] [--quick]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--server", default=os.path.join(root, "build/apps/server/kvcache-server"))
p.add_argument("--model", default=os.environ.get("KVCACHE_MODEL",
                                                 os.path.join(root, "models/SmolLM2-135M-Instruct.Q4_1.gguf")))
p.add_argument("--threads", type=int, default=1,
               help="threads per forward pass (1 on a shared machine: a barrier waiting for a descheduled thread stalls)")
p.add_argument("--clients", default="1,4,8")
p.add_argument("--requests", type=int, default=3, help="requests per client")
p.add_argument("--max-tokens", type=int, default=32)
p.add_argument("--history", type=int, default=1000, help="tokens of history for the follow-up test (about)")
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--quick", action="store_true", help="1 request per client, 2 repeats")
p.add_argument("--out", default=os.path.join(root, "bench"))
p.add_argument("--plot-only", action="store_true", help="plot <out>/results/server.json again")
args = p.parse_args()
if args.quick:
    args.requests, args.repeats = 1, 2


def start(*options):
    cmd = [args.server, "--model", args.model, "--port", "0", "--threads", str(args.threads)] + [str(o) for o in options]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = "http://" + proc.stdout.readline().split("http://", 1)[1].split("/", 1)[0]
    return proc, url


def stream(url, body):
    """(time to first token, seconds, completion tokens, response) of one streamed request."""
    import requests
    t0 = time.perf_counter()
    ttft, last = None, None
    with requests.post(url + "/v1/chat/completions", json={**body, "stream": True}, stream=True, timeout=600) as r:
        r.raise_for_status()
        for raw in r.iter_lines():
            if not raw.startswith(b"data: ") or raw == b"data: [DONE]":
                continue
            chunk = json.loads(raw[6:])
            if ttft is None and chunk["choices"] and chunk["choices"][0].get("delta", {}).get("content"):
                ttft = time.perf_counter() - t0
            last = chunk
    return ttft, time.perf_counter() - t0, last["usage"]["completion_tokens"], last


def concurrency(url, clients):
    ttfts, tokens = [], []
    lock = threading.Lock()

    def client(i):
        for j in range(args.requests):
            # distinct prompts, and the slot of an earlier one is never continued (no reuse but the system prompt)
            body = {"messages": [{"role": "user", "content": f"Client {i}, request {j}: write a short poem about the number {i * 10 + j}."}],
                    "max_tokens": args.max_tokens, "temperature": 0}
            ttft, _, n, _ = stream(url, body)
            with lock:
                ttfts.append(ttft)
                tokens.append(n)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(tokens), "tokens": sum(tokens), "seconds": wall,
            "tokens_per_second": sum(tokens) / wall, "ttft_median_ms": statistics.median(ttfts) * 1e3,
            "ttft_max_ms": max(ttfts) * 1e3}


def history_text(tokens):
    # ~1.8 tokens per word for this kind of text (numbers split into digits) with SmolLM2's tokenizer; checked with the server's usage
    sentences = [f"Fact {k}: the warehouse on street {k} stores {k * 7 % 100} crates of apples and {k * 3 % 50} of pears."
                 for k in range(1, 400)]
    text, k = "", 0
    while len(text.split()) * 1.77 < tokens:
        text += sentences[k] + " "
        k += 1
    return text.strip()


def follow_up(url):
    import requests
    history = [{"role": "user", "content": "Remember these facts.\n" + history_text(args.history)}]

    def first_turn():
        r = requests.post(url + "/v1/chat/completions", json={"messages": history[:1], "max_tokens": 8, "temperature": 0},
                          timeout=600).json()
        return r["choices"][0]["message"]["content"]

    def erase_all():
        for s in requests.get(url + "/slots").json():
            requests.post(url + f"/slots/{s['id']}?action=erase")

    history.append({"role": "assistant", "content": first_turn()})
    warm, cold = [], []
    for k in range(args.repeats):
        question = history + [{"role": "user", "content": f"How many crates of apples are on street {k + 5}?"}]
        # warm: the conversation continues in its slot; only the new turn is computed
        warm.append(stream(url, {"messages": question, "max_tokens": 4, "temperature": 0}))
        # cold: the same request with nothing cached (slots erased; the server runs without a prefix cache)
        erase_all()
        cold.append(stream(url, {"messages": question, "max_tokens": 4, "temperature": 0}))
        assert cold[-1][3]["usage"]["prompt_tokens_details"]["cached_tokens"] == 0, cold[-1][3]["usage"]
        assert warm[-1][3]["usage"]["prompt_tokens"] == cold[-1][3]["usage"]["prompt_tokens"]
        # back to the conversation after its first turn for the next round (the same answer: greedy, bitwise)
        erase_all()
        assert first_turn() == history[1]["content"]
    w_ttft = statistics.median(x[0] for x in warm) * 1e3
    c_ttft = statistics.median(x[0] for x in cold) * 1e3
    return {"history_tokens": warm[0][3]["usage"]["prompt_tokens"],
            "warm_cached_tokens": warm[0][3]["usage"]["prompt_tokens_details"]["cached_tokens"],
            "warm_ttft_ms": w_ttft, "cold_ttft_ms": c_ttft, "ratio": w_ttft / c_ttft,
            "warm_all_ms": [x[0] * 1e3 for x in warm], "cold_all_ms": [x[0] * 1e3 for x in cold]}


def main():
    if args.plot_only:
        with open(os.path.join(args.out, "results", "server.json")) as fh:
            return plot(json.load(fh))
    results = {"threads": args.threads, "max_tokens": args.max_tokens, "requests_per_client": args.requests,
               "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start"}
    proc, url = start("--slots", 16, "--ctx", 512, "--batch", 8)
    try:
        results["concurrency"] = []
        for c in [int(x) for x in args.clients.split(",")]:
            r = concurrency(url, c)
            print(f"{c} clients: {r['tokens']} tokens in {r['seconds']:.1f} s = {r['tokens_per_second']:.1f} tok/s, "
                  f"TTFT median {r['ttft_median_ms']:.0f} ms, max {r['ttft_max_ms']:.0f} ms", flush=True)
            results["concurrency"].append(r)
    finally:
        proc.terminate()
        proc.wait()
    proc, url = start("--slots", 4, "--ctx", 2048, "--prefix-cache-mb", 0)
    try:
        f = follow_up(url)
        results["follow_up"] = f
        print(f"follow-up at {f['history_tokens']} prompt tokens ({f['warm_cached_tokens']} reused): TTFT "
              f"{f['warm_ttft_ms']:.0f} ms vs cold {f['cold_ttft_ms']:.0f} ms = {f['ratio'] * 100:.1f} % of cold "
              f"(goal <= 10 %)", flush=True)
    finally:
        proc.terminate()
        proc.wait()
    os.makedirs(os.path.join(args.out, "results"), exist_ok=True)
    with open(os.path.join(args.out, "results", "server.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # matplotlib lives in Debian's python3; a pyenv/venv python3 may lack it
        cmd = ["/usr/bin/python3", os.path.abspath(__file__), "--plot-only", "--out", args.out]
        return subprocess.run(cmd, check=False).returncode
    plot(results)


def plot(results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    conc = results["concurrency"]
    xs = [r["clients"] for r in conc]
    a.plot(xs, [r["tokens_per_second"] for r in conc], "o-", color="tab:blue", label="aggregate tokens/s")
    a.set_xlabel("concurrent streaming clients")
    a.set_ylabel("tokens/s (all clients)", color="tab:blue")
    a.set_xticks(xs)
    a2 = a.twinx()
    a2.plot(xs, [r["ttft_median_ms"] for r in conc], "s--", color="tab:red", label="median time to first token")
    a2.set_ylabel("median time to first token (ms)", color="tab:red")
    a.set_title("kvcache-server over HTTP, SmolLM2-135M")
    lines = a.get_lines() + a2.get_lines()
    a.legend(lines, [l.get_label() for l in lines], loc="upper left", fontsize=8)
    f = results["follow_up"]
    bars = b.bar(["cold request", "follow-up\n(slot reused)"], [f["cold_ttft_ms"], f["warm_ttft_ms"]],
                 color=["tab:gray", "tab:green"])
    b.bar_label(bars, fmt="%.0f ms")
    b.set_ylabel("time to first token (ms)")
    b.set_title(f"{f['history_tokens']}-token conversation: follow-up = {f['ratio'] * 100:.1f} % of cold")
    fig.text(0.01, 0.01, f"{results['machine']}; {results['threads']} threads; {results['max_tokens']} tokens per answer",
             fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    os.makedirs(os.path.join(args.out, "plots"), exist_ok=True)
    path = os.path.join(args.out, "plots", "server.png")
    fig.savefig(path, dpi=110)
    print("plot:", path)


if __name__ == "__main__":
    sys.exit(main())
