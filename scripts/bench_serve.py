#!/usr/bin/env python3
"""Load benchmark of a running `mananera serve` (standard library only).

For each concurrency level, that many clients each stream one speech at the same time
(distinct topics, so every request is a cache miss) and the script reports time to first
token, tokens/s per request and in total. Then it measures a cache hit's latency end to end
over HTTP (JSON answer). Prints one JSON line per measurement, then a markdown table.

    scripts/bench_serve.py --url http://127.0.0.1:8080 --levels 1,4,8 --new-tokens 128
"""
import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse


def post(url, body, stream):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    headers = {"Content-Type": "application/json"}
    if stream:
        headers["Accept"] = "text/event-stream"
    conn.request("POST", "/api/generate", json.dumps(body), headers)
    return conn, conn.getresponse()


def stream_openai(url, topic, new_tokens, out):
    """One speech straight from an OpenAI-compatible server (`--openai MODEL`), for the peer."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = {"model": OPENAI_MODEL, "prompt": "PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR:\n" + topic,
            "max_tokens": new_tokens, "temperature": 0.8, "top_k": 50, "top_p": 0.95,
            "repeat_penalty": 1.1, "stream": True, "ignore_eos": True}
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        out.append({"error": resp.status, "body": resp.read().decode()})
        return
    first, tokens = None, 0
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.decode().strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if any(c.get("text") for c in chunk.get("choices", [])):
            tokens += 1
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    conn.close()
    out.append({"ttft_s": first - start, "seconds": end - start, "tokens": tokens,
                "tok_s": (tokens - 1) / (end - first) if end > first else 0.0, "stop": None})


OPENAI_MODEL = None


def stream_one(url, topic, new_tokens, out):
    if OPENAI_MODEL:
        return stream_openai(url, topic, new_tokens, out)
    body = {"topic": topic, "max_new_tokens": new_tokens, "max_words": 0}
    start = time.perf_counter()
    conn, resp = post(url, body, True)
    if resp.status != 200:
        out.append({"error": resp.status, "body": resp.read().decode()})
        return
    first = None
    event = None
    done = None
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.decode().rstrip("\n")
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            if event == "delta" and first is None:
                first = time.perf_counter()
            if event in ("done", "error"):
                done = json.loads(line[5:])
                break
    end = time.perf_counter()
    conn.close()
    tokens = done.get("new_tokens") or 0
    out.append({
        "ttft_s": first - start,
        "seconds": end - start,
        "tokens": tokens,
        # Tokens after the first, over the time after the first.
        "tok_s": (tokens - 1) / (end - first) if end > first else 0.0,
        "stop": done.get("stop_reason"),
    })


def level(url, c, new_tokens, tag):
    results = []
    threads = [
        threading.Thread(target=stream_one, args=(url, f"tema {tag} {i}", new_tokens, results))
        for i in range(c)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    errors = [r for r in results if "error" in r]
    if errors:
        raise SystemExit(f"requests failed: {errors}")
    total = sum(r["tokens"] for r in results)
    return {
        "concurrency": c,
        "ttft_ms_median": 1e3 * statistics.median(r["ttft_s"] for r in results),
        "ttft_ms_max": 1e3 * max(r["ttft_s"] for r in results),
        "per_request_tok_s": statistics.median(r["tok_s"] for r in results),
        "total_tok_s": total / wall,
        "tokens": total,
        "wall_s": wall,
    }


def cache_hit(url, n):
    body = {"topic": "la cache", "seed": 1, "max_new_tokens": 32, "max_words": 0}
    conn, resp = post(url, body, False)  # fills the key (a fixed seed keeps one variant)
    resp.read()
    conn.close()
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        conn.request("POST", "/api/generate", json.dumps(body), {"Content-Type": "application/json"})
        reply = json.loads(conn.getresponse().read())
        times.append(time.perf_counter() - start)
        assert reply["cached"] is True, reply
    conn.close()
    return {"cache_hit_ms_median": 1e3 * statistics.median(times),
            "cache_hit_ms_p99": 1e3 * sorted(times)[int(0.99 * (n - 1))], "requests": n}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--levels", default="1,4,8")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--hits", type=int, default=200)
    p.add_argument("--openai", metavar="MODEL", help="load an OpenAI-compatible server's /v1/completions directly (no cache-hit measurement)")
    a = p.parse_args()
    global OPENAI_MODEL
    OPENAI_MODEL = a.openai
    rows = []
    for c in map(int, a.levels.split(",")):
        row = level(a.url, c, a.new_tokens, f"c{c}-{time.time()}")
        print(json.dumps(row), flush=True)
        rows.append(row)
    if OPENAI_MODEL:
        return
    hit = cache_hit(a.url, a.hits)
    print(json.dumps(hit), flush=True)
    single = rows[0]["total_tok_s"]
    print("\n| concurrent requests | time to first token (median / max) | tokens/s per request | tokens/s in total | × single |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['ttft_ms_median']:.0f} / {r['ttft_ms_max']:.0f} ms "
              f"| {r['per_request_tok_s']:.1f} | {r['total_tok_s']:.1f} | {r['total_tok_s'] / single:.2f} |")
    print(f"\nCache hit, end to end over HTTP: median {hit['cache_hit_ms_median']:.2f} ms, "
          f"p99 {hit['cache_hit_ms_p99']:.2f} ms ({hit['requests']} requests).")


if __name__ == "__main__":
    main()
