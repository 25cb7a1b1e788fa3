"""Shared by the kvcache-server tests: command line, a live server on a free port of 127.0.0.1, the reference
generator, small HTTP helpers and a tiny test runner (each test a function; failures are listed at the end).

Exit codes: 0 all passed, 1 a test failed, 77 skipped (no model file / missing browser), as ctest expects.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback

import requests

SKIP = 77


def parse_args(extra=None):
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True, help="kvcache-server executable")
    p.add_argument("--reference", required=True, help="server_reference executable")
    p.add_argument("--model", required=True, help="GGUF model file")
    p.add_argument("--verbose", action="store_true")
    if extra:
        extra(p)
    args = p.parse_args()
    if not os.path.exists(args.model):
        print(f"SKIP: model file {args.model} not found (bash scripts/fetch-model.sh)")
        sys.exit(SKIP)
    return args


class Server:
    """kvcache-server on 127.0.0.1 and a free port (--port 0; the port is read from its first line)."""

    def __init__(self, args, *options, api_key=None, env=None):
        self.api_key = api_key
        cmd = [args.server, "--model", args.model, "--port", "0", "--threads", "1"] + [str(o) for o in options]
        if api_key:
            cmd += ["--api-key", api_key]
        self.log = tempfile.NamedTemporaryFile(prefix="kvcache-server-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env={**os.environ, "KVCACHE_THREADS": "1", **(env or {})})
        line = self.proc.stdout.readline()
        if "http://" not in line:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r}\n{open(self.log.name).read()}")
        self.url = line.split("http://", 1)[1].split("/", 1)[0]
        self.url = "http://" + self.url
        self.port = int(self.url.rsplit(":", 1)[1])
        for _ in range(100):
            try:
                if requests.get(self.url + "/health", timeout=5).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)

    def headers(self):
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def get(self, path, **kw):
        return requests.get(self.url + path, headers={**self.headers(), **kw.pop("headers", {})}, timeout=600, **kw)

    def post(self, path, body=None, **kw):
        if body is not None and not isinstance(body, (str, bytes)):
            kw["json"] = body
        elif body is not None:
            kw["data"] = body
        return requests.post(self.url + path, headers={**self.headers(), **kw.pop("headers", {})}, timeout=600, **kw)

    def ok(self, path, body=None):
        r = self.post(path, body)
        assert r.status_code == 200, f"{path}: HTTP {r.status_code} {r.text}"
        return r.json()

    def health(self):
        return self.get("/health").json()

    def slots(self):
        return self.get("/slots").json()

    def metrics(self):
        out = {}
        for line in self.get("/metrics").text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def erase_all(self):
        for s in self.slots():
            r = self.post(f"/slots/{s['id']}?action=erase")
            assert r.status_code == 200, r.text

    def stop(self, sig=signal.SIGTERM, timeout=120):
        """Stops the server; it must exit 0 (a sanitizer report or a crash at shutdown fails the test)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise AssertionError("server did not stop within %d s of signal %d" % (timeout, sig))
        if self.proc.returncode != 0:
            raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
        return self.proc.returncode

    def log_text(self):
        return open(self.log.name).read()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        os.unlink(self.log.name)


def reference(args, requests_):
    """generate_with_cache's answers (prompt_tokens, tokens, text) for a list of request dicts."""
    out = subprocess.run([args.reference, args.model, json.dumps(requests_)], capture_output=True, text=True,
                         env={**os.environ, "KVCACHE_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def sse_events(response):
    """The data: payloads of a streamed response (comments skipped), up to [DONE]."""
    events = []
    for raw in response.iter_lines():
        line = raw.decode() if isinstance(raw, bytes) else raw
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            events.append("[DONE]")
            break
        events.append(json.loads(data))
    return events


def run_tests(tests, verbose=False):
    failed = []
    for test in tests:
        t0 = time.time()
        try:
            test()
            print(f"ok   {test.__name__} ({time.time() - t0:.1f} s)", flush=True)
        except Exception:  # noqa: BLE001 - every failure is reported, the others still run
            failed.append(test.__name__)
            print(f"FAIL {test.__name__} ({time.time() - t0:.1f} s)", flush=True)
            traceback.print_exc()
    print(f"{len(tests) - len(failed)}/{len(tests)} passed" + (f"; failed: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)
