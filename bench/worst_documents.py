#!/usr/bin/env python3
"""The most work an anonymous client can get from one GraphQL request of 1 KB, 10 KB and
100 KB, against a release node on loopback with 200 products.

For each document: the node's CPU seconds (utime + stime from /proc) and the wall time
of the request, the answer's size and code, and the node's peak RSS (VmHWM) at the end.
Each is the median of 5 runs; a plain `{ __typename }` is measured the same way as the
reference. Refused documents show what refusing costs; accepted ones, what the limits let
through.

Usage: python3 bench/worst_documents.py   (from the repo root; EMPORIUM_BIN=target/release/emporium)
"""

import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

BIN = os.environ.get("EMPORIUM_BIN", "target/release/emporium")
TICKS = os.sysconf("SC_CLK_TCK")
ROUNDS = int(os.environ.get("ROUNDS", "5"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def post(url, query, timeout=120):
    body = json.dumps({"query": query}).encode()
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def pad(text, size):
    """`text` with a trailing comment so the document is `size` bytes."""
    return text if len(text) >= size else text + "\n#" + "x" * (size - len(text) - 2)


def fan_out(size):
    levels, best = 1, None
    while True:
        text = "query{a:__typename ...F0}" + "".join(
            f"fragment F{i} on Query{{...F{i + 1} ...F{i + 1}}}" for i in range(levels)
        ) + f"fragment F{levels} on Query{{__typename}}"
        if len(text) > size:
            return best
        best, levels = text, levels + 1


def many(selection, count, size):
    """`{ selection(0) selection(1) … }`: as many as fit in `size` bytes, at most `count`
    (at least one, even when one alone is larger)."""
    parts, length = [], 2
    for i in range(count):
        part = selection(i)
        if parts and length + len(part) + 1 > size:
            break
        parts.append(part)
        length += len(part) + 1
    return "{" + " ".join(parts) + "}"


def introspection_tree(size, levels=4, roots=6):
    """`roots` aliases of `__schema { types { … } }`, each walking fields → type (and its
    wrappers) → fields `levels` times: depth 11, 6 × 323 fields (the limits are 12 and 2000)."""

    def walk(level):
        if level == 0:
            return ""
        inner = walk(level - 1)
        return f"fields{{name type{{name {inner} ofType{{name {inner} ofType{{name {inner}}}}}}}}}"

    return many(lambda i: f"s{i}:__schema{{types{{name {walk(levels)}}}}}", roots, size)


def products_everywhere(size):
    field = lambda i: (
        f"p{i}:products(first:100){{nodes{{id name description sku lowestPrice "
        f"registration{{status}} offers{{price itemsInStock}} priceTrend{{prices changePercent}}}}}}"
    )
    return many(field, 20, size)


def documents(size):
    return {
        "fragment fan-out": fan_out(size),
        "aliases of __typename": many(lambda i: f"a{i}:__typename", 100_000, size),
        "same field, no aliases": many(lambda i: "__typename", 100_000, size),
        "directives on one field": "{__typename" + " @include(if:true)" * ((size - 12) // 18) + "}",
        "20 × products(first:100) with offers and trends": pad(products_everywhere(size), size),
        "20 × introspection tree": pad(introspection_tree(size), size),
    }


def measure(url, pid, query):
    runs = []
    for _ in range(ROUNDS):
        cpu, started = cpu_seconds(pid), time.monotonic()
        status, body = post(url, query)
        runs.append((time.monotonic() - started, cpu_seconds(pid) - cpu, status, body))
    wall = statistics.median(run[0] for run in runs)
    cpu = statistics.median(run[1] for run in runs)
    status, body = runs[-1][2], runs[-1][3]
    try:
        answer = json.loads(body)
        code = (answer.get("errors") or [{}])[0].get("extensions", {}).get("code", "ok") if "errors" in answer else "ok"
    except ValueError:
        code = "?"
    return wall, cpu, status, len(body), code


def main():
    port = free_port()
    data = tempfile.mkdtemp()
    env = dict(os.environ, LISTEN=f"127.0.0.1:{port}", DATA_DIR=data, RUST_LOG="warn")
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    node = subprocess.Popen([BIN, "serve"], env=env)
    url = f"http://127.0.0.1:{port}/graphql"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        for i in range(200):
            post(url, f'mutation{{createProduct(input:{{name:"product {i}",description:"{"d" * 200}"}}){{id}}}}')
        reference = measure(url, node.pid, "{__typename}")
        print(f"reference {{__typename}}: wall {reference[0] * 1000:.1f} ms, cpu {reference[1] * 1000:.0f} ms")
        print(f"{'size':>6}  {'document':<48} {'bytes':>7} {'status':>6} {'code':<26} {'wall ms':>8} "
              f"{'cpu ms':>7} {'answer':>9}")
        for size in (1_000, 10_000, 100_000):
            for name, query in documents(size).items():
                wall, cpu, status, length, code = measure(url, node.pid, query)
                print(f"{size:>6}  {name:<48} {len(query):>7} {status:>6} {code:<26} {wall * 1000:>8.1f} "
                      f"{cpu * 1000:>7.0f} {length:>9}")
        print(f"peak RSS of the node: {peak_rss_mib(node.pid):.0f} MiB")
    finally:
        node.terminate()
        node.wait(timeout=30)


if __name__ == "__main__":
    main()
