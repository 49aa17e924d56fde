#!/usr/bin/env python3
"""bench/load_test.py: N concurrent clients against a running `dsmoe serve` for D seconds.

Each client sends one request after another until the time is up: /v1/completions or
/v1/chat/completions (chat only when the server answers a chat probe), streaming or not, with a
random max_tokens and temperature. About --abandon-fraction of them are given up on purpose: a
streaming one is closed after its first token, a non-streaming one once a random deadline passes
before its answer (a client's read timeout). Everything else must succeed:

  failure = a non-2xx status, a body that is not the expected JSON (or carries an error), broken
            server-sent-event framing (a line that is neither `data: ...` nor a `:` comment,
            a chunk that is not JSON, no final chunk with finish_reason, no usage chunk, no
            `data: [DONE]` or anything after it), usage.completion_tokens beyond max_tokens, or
            a connection error / timeout that the client did not cause.

Prints one markdown table and one JSON line (`LOAD_TEST_JSON {...}`), and exits 1 on any failure,
or when /metrics does not show 0 running and 0 waiting sequences once the clients are done.
Python 3 standard library only (threading + http.client).
"""
import argparse
import http.client
import json
import os
import random
import re
import socket
import sys
import threading
import time

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
    "DeepSeek-V3 在 14.8T tokens 上训练",
    "List three prime numbers:",
    "The quick brown fox",
    "Explain mixture-of-experts routing in one sentence.",
    "SELECT name FROM users WHERE",
]


class Abandoned(Exception):
    """The client gave up on purpose."""


class Failure(Exception):
    """The server did something a client must not see."""


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="load", help="the served model name")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--duration", type=float, default=300, help="seconds of load")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens is uniform in [1, this]")
    p.add_argument("--abandon-fraction", type=float, default=0.1)
    p.add_argument("--stream-fraction", type=float, default=0.5)
    p.add_argument("--request-timeout", type=float, default=300,
                   help="seconds without a byte before a request counts as a failure")
    p.add_argument("--server-pid", type=int, default=0, help="for the RSS (from /proc)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--drain-timeout", type=float, default=30,
                   help="seconds to wait for /metrics to show an idle server after the run")
    return p.parse_args()


def rss_mib(pid):
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def get(args, path):
    conn = http.client.HTTPConnection(args.host, args.port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def metric(text, name):
    """The sum of every sample of `name` (all label sets) in a Prometheus text page."""
    total, found = 0.0, False
    for line in text.splitlines():
        m = re.match(r"^" + re.escape(name) + r"(\{[^}]*\})?\s+(\S+)$", line)
        if m:
            total += float(m.group(2))
            found = True
    return total if found else None


def check(cond, message):
    if not cond:
        raise Failure(message)


def check_usage(usage, max_tokens):
    check(isinstance(usage, dict), f"usage is not an object: {usage!r}")
    tokens = usage.get("completion_tokens")
    check(isinstance(tokens, int) and 0 <= tokens <= max_tokens,
          f"usage.completion_tokens {tokens!r} not in [0, max_tokens={max_tokens}]")
    check(isinstance(usage.get("prompt_tokens"), int) and usage["prompt_tokens"] > 0,
          f"bad usage.prompt_tokens {usage.get('prompt_tokens')!r}")
    return tokens


def check_finish(finish, tokens, max_tokens):
    check(finish in ("stop", "length"), f"finish_reason {finish!r}")
    check(finish != "length" or tokens == max_tokens,
          f"finish_reason length after {tokens} of max_tokens={max_tokens}")


def read_json_answer(resp, chat, max_tokens, give_up_at):
    """A non-streaming answer: leading probe spaces, then one JSON object."""
    body = b""
    while True:
        if give_up_at is not None and time.monotonic() >= give_up_at:
            raise Abandoned()
        piece = resp.read1(65536)
        if not piece:
            break
        body += piece
    try:
        answer = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Failure(f"body is not JSON ({e}): {body[:200]!r}")
    check(isinstance(answer, dict) and "error" not in answer, f"error answer: {body[:300]!r}")
    choices = answer.get("choices")
    check(isinstance(choices, list) and len(choices) == 1, f"choices: {choices!r}")
    choice = choices[0]
    if chat:
        message = choice.get("message")
        check(isinstance(message, dict) and message.get("role") == "assistant"
              and isinstance(message.get("content"), str), f"message: {message!r}")
    else:
        check(isinstance(choice.get("text"), str), f"text: {choice.get('text')!r}")
    tokens = check_usage(answer.get("usage"), max_tokens)
    check_finish(choice.get("finish_reason"), tokens, max_tokens)
    return tokens, None


def read_event_stream(resp, chat, max_tokens, abandon, start):
    """Server-sent events; returns (completion tokens, time to first token)."""
    check(resp.getheader("Content-Type", "").startswith("text/event-stream"),
          f"Content-Type {resp.getheader('Content-Type')!r}")
    ttft, finish, tokens, done, in_event = None, None, None, False, False
    while True:
        line = resp.readline()
        if not line:
            break
        check(line.endswith(b"\n"), f"truncated line {line[:200]!r}")
        line = line.rstrip(b"\n")
        if not line:
            in_event = False
            continue
        if line.startswith(b":"):
            continue
        check(line.startswith(b"data: "), f"not an SSE data line: {line[:200]!r}")
        check(not in_event, "two data lines in one event")
        check(not done, f"data after [DONE]: {line[:200]!r}")
        in_event = True
        data = line[len(b"data: "):]
        if data == b"[DONE]":
            done = True
            continue
        try:
            chunk = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise Failure(f"chunk is not JSON ({e}): {data[:200]!r}")
        check(isinstance(chunk, dict) and "error" not in chunk, f"error event: {data[:300]!r}")
        choices = chunk.get("choices")
        check(isinstance(choices, list), f"chunk without choices: {data[:200]!r}")
        if not choices:  # the usage chunk
            check(finish is not None, "usage chunk before the final chunk")
            tokens = check_usage(chunk.get("usage"), max_tokens)
            continue
        check(len(choices) == 1 and finish is None, f"chunk after the final one: {data[:200]!r}")
        choice = choices[0]
        piece = choice.get("delta", {}).get("content", "") if chat else choice.get("text")
        check(isinstance(piece, str), f"chunk text: {data[:200]!r}")
        if ttft is None:
            ttft = time.monotonic() - start
            if abandon:
                raise Abandoned()
        finish = choice.get("finish_reason")
    check(done, "the stream ended without data: [DONE]")
    check(finish is not None, "no chunk with finish_reason")
    check(tokens is not None, "no usage chunk")
    check_finish(finish, tokens, max_tokens)
    return tokens, ttft


def one_request(args, rng, chat):
    stream = rng.random() < args.stream_fraction
    abandon = rng.random() < args.abandon_fraction
    max_tokens = rng.randint(1, args.max_tokens)
    if abandon:  # long enough to be cut off mid-way
        max_tokens = args.max_tokens
    body = {"model": args.model, "max_tokens": max_tokens,
            "temperature": rng.choice([0, 0.7, 1.0]), "seed": rng.randint(0, 2**31)}
    prompt = rng.choice(PROMPTS)
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
        path = "/v1/chat/completions"
    else:
        body["prompt"] = prompt
        path = "/v1/completions"
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    kind = ("chat" if chat else "completions") + (" stream" if stream else "")
    start = time.monotonic()
    give_up_at = None
    if abandon and not stream:
        give_up_at = start + rng.uniform(0.05, 2.0)
    conn = http.client.HTTPConnection(args.host, args.port, timeout=args.request_timeout)
    try:
        conn.request("POST", path, body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        if give_up_at is not None:
            conn.sock.settimeout(max(0.01, give_up_at - time.monotonic()))
        resp = conn.getresponse()
        if resp.status // 100 != 2:
            raise Failure(f"status {resp.status}: {resp.read()[:300]!r}")
        if stream:
            tokens, ttft = read_event_stream(resp, chat, max_tokens, abandon, start)
        else:
            tokens, ttft = read_json_answer(resp, chat, max_tokens, give_up_at)
        return {"kind": kind, "outcome": "ok", "tokens": tokens, "ttft": ttft,
                "total": time.monotonic() - start}
    except Abandoned:
        return {"kind": kind, "outcome": "abandoned"}
    except Failure as e:
        return {"kind": kind, "outcome": "failed", "error": str(e)}
    except (socket.timeout, TimeoutError) as e:
        if give_up_at is not None:
            return {"kind": kind, "outcome": "abandoned"}
        return {"kind": kind, "outcome": "failed", "error": f"timeout: {e!r}"}
    except (OSError, http.client.HTTPException) as e:
        return {"kind": kind, "outcome": "failed", "error": f"connection: {e!r}"}
    finally:
        conn.close()


def client(args, index, deadline, chat_available, results, lock):
    rng = random.Random(args.seed * 1000003 + index)
    while time.monotonic() < deadline:
        chat = chat_available and rng.random() < 0.5
        result = one_request(args, rng, chat)
        result["end"] = time.monotonic()
        with lock:
            results.append(result)


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def probe_chat(args):
    conn = http.client.HTTPConnection(args.host, args.port, timeout=60)
    try:
        body = {"model": args.model, "max_tokens": 1,
                "messages": [{"role": "user", "content": "Hi"}]}
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status == 200
    finally:
        conn.close()


def wait_idle(args):
    """/metrics after the run: (running, waiting), polled until both are 0 or the time is up."""
    end = time.monotonic() + args.drain_timeout
    while True:
        _, page = get(args, "/metrics")
        running = metric(page, "dsmoe_running_sequences")
        waiting = metric(page, "dsmoe_queue_length")
        if (running == 0 and waiting == 0) or time.monotonic() >= end:
            return running, waiting, page
        time.sleep(0.5)


def fmt(value, spec=".3f"):
    return "-" if value is None else format(value, spec)


def main():
    args = parse_args()
    status, _ = get(args, "/health")
    if status != 200:
        sys.exit(f"load_test.py: /health answered {status}")
    chat_available = probe_chat(args)
    _, page = get(args, "/metrics")
    tokens_before = metric(page, "dsmoe_completion_tokens_total") or 0.0
    rss_start = rss_mib(args.server_pid)
    results, lock = [], threading.Lock()
    start = time.monotonic()
    deadline = start + args.duration
    threads = [threading.Thread(target=client, args=(args, i, deadline, chat_available, results,
                                                     lock), daemon=True)
               for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    running, waiting, page = wait_idle(args)
    tokens_after = metric(page, "dsmoe_completion_tokens_total") or 0.0
    rss_end = rss_mib(args.server_pid)

    ok = [r for r in results if r["outcome"] == "ok"]
    failed = [r for r in results if r["outcome"] == "failed"]
    abandoned = [r for r in results if r["outcome"] == "abandoned"]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    total = [r["total"] for r in ok]
    usage_tokens = sum(r["tokens"] for r in ok)
    kinds = {}
    for r in results:
        kinds.setdefault(r["kind"], {"ok": 0, "failed": 0, "abandoned": 0})[r["outcome"]] += 1
    summary = {
        "clients": args.clients, "duration_s": round(elapsed, 1),
        "chat": chat_available, "requests": len(results), "ok": len(ok),
        "failed": len(failed), "abandoned_on_purpose": len(abandoned),
        "ttft_s": {q: percentile(ttft, v) for q, v in (("p50", .5), ("p90", .9), ("p99", .99))},
        "total_s": {q: percentile(total, v) for q, v in (("p50", .5), ("p90", .9), ("p99", .99))},
        "completion_tokens_usage": usage_tokens,
        "tokens_per_s_usage": usage_tokens / elapsed,
        "completion_tokens_metrics": tokens_after - tokens_before,
        "tokens_per_s_metrics": (tokens_after - tokens_before) / elapsed,
        "rss_mib_start": rss_start, "rss_mib_end": rss_end,
        "running_after": running, "waiting_after": waiting, "by_kind": kinds,
    }
    print(f"| {args.clients} clients, {elapsed:.0f} s | value |")
    print("| --- | --- |")
    print(f"| requests ok / failed | {len(ok)} / {len(failed)} |")
    print(f"| disconnected or gave up on purpose | {len(abandoned)} |")
    for name, counts in sorted(kinds.items()):
        print(f"| {name}: ok / failed / on purpose | {counts['ok']} / {counts['failed']} / "
              f"{counts['abandoned']} |")
    print("| time to first token p50 / p90 / p99 (streams) | " +
          " / ".join(fmt(summary["ttft_s"][q]) for q in ("p50", "p90", "p99")) + " s |")
    print("| whole request p50 / p90 / p99 | " +
          " / ".join(fmt(summary["total_s"][q]) for q in ("p50", "p90", "p99")) + " s |")
    print(f"| completion tokens/s (usage of ok requests) | {summary['tokens_per_s_usage']:.1f} |")
    print(f"| completion tokens/s (/metrics, all requests) | "
          f"{summary['tokens_per_s_metrics']:.1f} |")
    print(f"| server RSS start -> end | {fmt(rss_start, '.1f')} -> {fmt(rss_end, '.1f')} MiB |")
    print(f"| /metrics after: running / waiting | {fmt(running, '.0f')} / {fmt(waiting, '.0f')} |")
    print("LOAD_TEST_JSON " + json.dumps(summary))
    for r in failed[:20]:
        print(f"failed ({r['kind']}): {r['error']}", file=sys.stderr)
    if failed or running != 0 or waiting != 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
