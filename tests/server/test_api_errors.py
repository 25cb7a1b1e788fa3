"""kvcache-server: every bad request gets a 4xx with an OpenAI-style {"error": {message, type, code}} body and
changes nothing (slots, pool); --api-key guards every endpoint but /health and the UI files."""
from harness import Server, parse_args, run_tests

args = parse_args()
KEY = "test-key-123"
server = Server(args, "--slots", 3, "--ctx", 128, "--max-body-bytes", 4096, api_key=KEY)


def state():
    h = server.health()
    return server.slots(), h["kv"]["blocks_used"], h["kv"]["sequences"], h["slots"]


def expect_error(status, method, path, body=None, code=None, **kw):
    before = state()
    r = server.get(path, **kw) if method == "GET" else server.post(path, body, **kw)
    assert r.status_code == status, f"{method} {path} {body!r:.80}: HTTP {r.status_code} {r.text[:300]}"
    e = r.json()["error"]
    assert isinstance(e["message"], str) and e["message"] and isinstance(e["type"], str), e
    if code:
        assert e["code"] == code, e
    assert state() == before, f"{method} {path} changed the server's state"
    return e


def make_slot():
    return server.ok("/generate", {"prompt": "Hi", "max_tokens": 2})["slot_id"]


def test_malformed_bodies():
    expect_error(400, "POST", "/v1/chat/completions", "{not json", "invalid_json")
    expect_error(400, "POST", "/v1/chat/completions", "[1, 2]", "invalid_body")
    expect_error(400, "POST", "/v1/chat/completions", "", "invalid_json")
    expect_error(413, "POST", "/v1/chat/completions", '{"messages": "' + "x" * 5000 + '"}')


def test_wrong_types_and_values():
    m = [{"role": "user", "content": "Hi"}]
    cases = [
        ({}, "missing_field"),
        ({"messages": "Hi"}, "invalid_type"),
        ({"messages": []}, "invalid_value"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "invalid_value"),
        ({"messages": [{"role": "user"}]}, "missing_field"),
        ({"messages": [{"role": "user", "content": 5}]}, "invalid_type"),
        ({"messages": m, "temperature": "hot"}, "invalid_type"),
        ({"messages": m, "temperature": -1}, "invalid_value"),
        ({"messages": m, "max_tokens": 0}, "invalid_value"),
        ({"messages": m, "max_tokens": 1.5}, "invalid_type"),
        ({"messages": m, "max_tokens": "10"}, "invalid_type"),
        ({"messages": m, "top_p": 0}, "invalid_value"),
        ({"messages": m, "top_k": -3}, "invalid_value"),
        ({"messages": m, "min_p": 2}, "invalid_value"),
        ({"messages": m, "repeat_penalty": 0}, "invalid_value"),
        ({"messages": m, "seed": "x"}, "invalid_type"),
        ({"messages": m, "stop": 7}, "invalid_type"),
        ({"messages": m, "stop": ["a", 1]}, "invalid_type"),
        ({"messages": m, "stream": "yes"}, "invalid_type"),
        ({"messages": m, "n": 2}, "unsupported_value"),
        ({"messages": m, "logprobs": True}, "unsupported_value"),
        ({"messages": m, "tools": []}, "unsupported_value"),
    ]
    for body, code in cases:
        expect_error(400, "POST", "/v1/chat/completions", body, code)
    expect_error(400, "POST", "/v1/completions", {"prompt": 12}, "invalid_type")
    expect_error(400, "POST", "/v1/completions", {"prompt": ""}, "invalid_value")
    expect_error(400, "POST", "/generate", {"prompt": "x", "slot_id": -1}, "invalid_value")
    expect_error(400, "POST", "/v1/chat/branch", {"prompt": "x"}, "missing_field")
    expect_error(400, "POST", "/v1/chat/branch", {"parent_slot_id": 0, "prompt": "x", "branch_mode": "copy"}, "invalid_value")


def test_too_many_tokens_for_the_slot():
    m = [{"role": "user", "content": "Hi"}]
    expect_error(400, "POST", "/v1/chat/completions", {"messages": m, "max_tokens": 129}, "invalid_value")
    expect_error(400, "POST", "/v1/chat/completions", {"messages": m, "max_tokens": 120}, "context_length_exceeded")
    long_text = "word " * 300
    expect_error(400, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": long_text}]},
                 "context_length_exceeded")
    expect_error(400, "POST", "/v1/completions", {"prompt": long_text}, "context_length_exceeded")


def test_unknown_and_gone_slots():
    expect_error(404, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "slot_id": 999},
                 "unknown_slot")
    expect_error(404, "POST", "/generate", {"prompt": "x", "slot_id": 999}, "unknown_slot")
    expect_error(404, "POST", "/v1/chat/branch", {"parent_slot_id": 999, "prompt": "x"}, "unknown_slot")
    expect_error(404, "POST", "/focus", {"slot_id": 999, "text_excerpt": "a", "prompt": "x"}, "unknown_slot")
    expect_error(404, "POST", "/continue", {"slot_id": 999, "message_index": 0, "prompt": "x"}, "unknown_slot")
    expect_error(404, "GET", "/slots/999", code="unknown_slot")
    expect_error(404, "POST", "/slots/999?action=erase", code="unknown_slot")
    expect_error(400, "POST", "/slots/abc?action=erase", code="invalid_value")
    slot = make_slot()
    expect_error(400, "POST", f"/slots/{slot}?action=explode", code="invalid_value")
    expect_error(400, "POST", "/v1/chat/branch", {"parent_slot_id": slot, "text_excerpt": "zebra crossing nowhere",
                                                  "prompt": "x"}, "excerpt_not_found")
    expect_error(400, "POST", "/continue", {"slot_id": slot, "message_index": 7, "prompt": "x"}, "invalid_value")
    expect_error(400, "POST", "/v1/chat/branch", {"parent_slot_id": slot, "message_index": 9, "prompt": "x"},
                 "invalid_value")
    expect_error(400, "POST", f"/slots/{slot}?action=save", {}, "slot_save_disabled")
    server.ok(f"/slots/{slot}?action=erase")
    # a branch of a slot that is gone
    expect_error(404, "POST", "/v1/chat/branch", {"parent_slot_id": slot, "prompt": "x"}, "unknown_slot")
    expect_error(404, "POST", "/generate", {"prompt": "x", "slot_id": slot}, "unknown_slot")


def test_unknown_endpoint_and_method():
    expect_error(404, "GET", "/v2/nothing")
    expect_error(404, "POST", "/v1/engines")


def test_api_key():
    no_key = {"Authorization": ""}
    for path in ["/v1/models", "/slots", "/metrics"]:
        e = expect_error(401, "GET", path, headers=no_key, code="invalid_api_key")
        assert e["type"] == "authentication_error"
        expect_error(401, "GET", path, headers={"Authorization": "Bearer wrong"}, code="invalid_api_key")
    expect_error(401, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]},
                 headers={"Authorization": "Bearer " + KEY + "x"}, code="invalid_api_key")
    import requests
    assert requests.get(server.url + "/health").status_code == 200
    assert requests.get(server.url + "/").status_code == 200  # the UI page itself holds no data
    assert server.get("/v1/models").status_code == 200


def test_bad_command_lines_exit_with_a_message():
    import subprocess
    for extra, needle in [(["--chat-template", "jinja9"], "--chat-template"), (["--ctx", "3"], "--ctx"),
                          (["--model", "/nonexistent.gguf"], "not found"), (["--port", "70000"], "--port")]:
        model = [] if "--model" in extra else ["--model", args.model]
        r = subprocess.run([args.server, "--port", "0"] + model + extra, capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and needle in r.stderr + r.stdout, (extra, r.returncode, r.stderr[-300:])


def test_nothing_leaked():
    server.erase_all()
    h = server.health()
    assert h["kv"]["sequences"] == 0 and h["kv"]["blocks_used"] == h["kv"]["prefix_cache_blocks"], h
    assert h["kv"]["running"] == 0 and h["kv"]["queued"] == 0, h


try:
    run_tests([test_malformed_bodies, test_wrong_types_and_values, test_too_many_tokens_for_the_slot,
               test_unknown_and_gone_slots, test_unknown_endpoint_and_method, test_api_key, test_bad_command_lines_exit_with_a_message,
               test_nothing_leaked])
finally:
    server.stop()
