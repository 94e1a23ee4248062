#!/usr/bin/env python3
"""Cost per proxied request, counted instead of timed: heap allocations and instructions.

The system under test runs under valgrind (memcheck for `total heap usage: N allocs`, callgrind
for instructions), one worker thread, behind one keep-alive client connection, in front of a
fixed-200 upstream. Each scenario runs twice, with N1 and N2 requests; the per-request cost is
(total(N2) - total(N1)) / (N2 - N1), so start-up and shutdown cancel out. The counts repeat to
the instruction for the same binary and inputs, whatever else the machine does.

S4 is the minimal pingora passthrough (examples/pingora_passthrough) on the system allocator,
S4m the same on mimalloc (the gateway's allocator: a like-for-like count), S5 the gateway on
cache hits. Allocations are counted on a system-allocator build of the gateway (memcheck does
not see mimalloc); instructions on the build as shipped. Run through bench/cost.sh, which builds
the release binaries.
"""

import argparse
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import haproxy  # noqa: E402
from ports import free_port, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
# AGENTRY_GATEWAY_BIN: another build of the gateway (e.g. the previous commit) for A/B counts.
GATEWAY = os.environ.get("AGENTRY_GATEWAY_BIN", os.path.join(TARGET, "release/agentry-gateway"))
# Allocations are counted by memcheck, which sees only the system allocator's malloc: on a build
# without the `mimalloc` feature (bench/cost.sh makes it). The allocator does not change how many
# allocations the code asks for; instructions are counted on the binary as shipped.
GATEWAY_SYSTEM_ALLOC = os.environ.get(
    "AGENTRY_GATEWAY_SYSTEM_ALLOC_BIN",
    os.environ.get("AGENTRY_GATEWAY_BIN",
                   os.path.join(TARGET, "release/agentry-gateway-system-alloc")))
# AGENTRY_PASSTHROUGH_BIN / AGENTRY_PASSTHROUGH_MIMALLOC_BIN: other builds of S4 / S4m (e.g.
# profile-guided ones, to compare like with like against scripts/build-pgo.sh's gateway).
PASSTHROUGH = os.environ.get("AGENTRY_PASSTHROUGH_BIN",
                             os.path.join(TARGET, "release/examples/pingora_passthrough"))
PASSTHROUGH_MIMALLOC = os.environ.get(
    "AGENTRY_PASSTHROUGH_MIMALLOC_BIN",
    os.path.join(TARGET, "release/examples/pingora_passthrough_mimalloc"))
SEED = os.path.join(TARGET, "release/examples/bench_seed")
TOKEN = "agm_cost_" + hashlib.sha256(os.urandom(16)).hexdigest()[:32]
INBOX = "support@cost.example"


def upstream(port, stop):
    """A fixed 200 with a 3-byte body, keep-alive, one thread per connection."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(64)
    srv.settimeout(0.2)
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nabc"

    def serve(c):
        buf = b""
        with c:
            while not stop.is_set():
                try:
                    data = c.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    c.sendall(reply)

    while not stop.is_set():
        try:
            c, _ = srv.accept()
        except socket.timeout:
            continue
        threading.Thread(target=serve, args=(c,), daemon=True).start()
    srv.close()


def bearer(key):
    """The header line that carries `key`."""
    return f"Authorization: Bearer {key}\r\n"


def client(port, requests, expect=b" 200 "):
    """Sequential GETs on one kept-alive connection, one per (extra header lines, inbox) of
    `requests`; every answer must carry `expect` in its status line."""
    s = socket.create_connection(("127.0.0.1", port))
    f = s.makefile("rb")
    for extra, inbox in requests:
        s.sendall(f"GET /v0/inboxes/{inbox}/messages HTTP/1.1\r\nHost: cost\r\n{extra}\r\n".encode())
        status = f.readline()
        if expect not in status:
            raise RuntimeError(f"answer {status!r}")
        length = 0
        while True:
            line = f.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        f.read(length)
    s.close()


def gateway_config(d, port, mport, up, db):
    return f"""
[server]
listen = "127.0.0.1:{port}"
threads = 1
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1
pid_file = "{d}/gw.pid"
upgrade_sock = "{d}/gw.sock"
[metrics]
listen = "127.0.0.1:{mport}"
[store]
kind = "sqlite"
path = "{db}"
[logging]
access_log = false
[limits]
failed_auth_per_ip = 0
[[management.tokens]]
name = "cost"
sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"
scope = "all"
[inbox_directory]
source = "none"
[[upstreams]]
name = "inbox"
addresses = ["127.0.0.1:{up}"]
[[routes]]
path = "/v0/inboxes/{{inbox_id}}"
upstream = "inbox"
"""


# S3's one key: HAProxy checks only that its SHA-256 is in the map, not the key format.
HAPROXY_KEY = "agk_" + hashlib.sha256(b"cost-s3").hexdigest()[:40]


def haproxy_config(d, port, up):
    """S3 as bench/run.py runs it (bench/haproxy.py), with this script's one key."""
    keys_map = os.path.join(d, "keys.map")
    haproxy.write_keys_map(keys_map, [(HAPROXY_KEY, INBOX)])
    cfg = os.path.join(d, f"haproxy-{port}.cfg")
    with open(cfg, "w") as f:
        f.write(haproxy.key_auth(f"127.0.0.1:{port}", up, keys_map))
    return cfg


def unknown_key(port):
    """A well-formed key (right checksum) that the store no longer holds: created, deleted."""
    key = create_key(port)
    listing = urllib.request.Request(
        f"http://127.0.0.1:{port}/human/v0/inboxes/{INBOX}/api-keys",
        headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(listing, timeout=60) as r:
        ident = json.load(r)["api_keys"][0]["api_key_id"]
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/human/v0/inboxes/{INBOX}/api-keys/{ident}",
        method="DELETE", headers={"Authorization": f"Bearer {TOKEN}"})
    urllib.request.urlopen(req, timeout=60).close()
    return key


def create_key(port):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/human/v0/inboxes/{INBOX}/api-keys",
        data=json.dumps({"name": "cost"}).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)["api_key"]


SCENARIOS = {
    "S3": "HAProxy key auth (sha2 + map)",
    "S4": "pingora passthrough",
    "S4m": "pingora passthrough on mimalloc (the gateway's allocator)",
    "S5": "agentry-gateway, cache hit",
    "S6": "agentry-gateway, unknown key (401)",
    "S7": "agentry-gateway, cache miss (store lookup)",
}


def run(scenario, tool, n, d, up_port):
    """One run under valgrind: returns the tool's total (allocations or instructions)."""
    port = free_port()
    out = os.path.join(d, f"{scenario}-{tool}-{n}.out")
    if tool == "callgrind":
        vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    elif tool == "dhat":
        vg = ["valgrind", "--tool=dhat", f"--dhat-out-file={out}"]
    else:
        vg = ["valgrind", "--leak-check=no"]
    mport = None
    if scenario in ("S4", "S4m"):
        binary = PASSTHROUGH_MIMALLOC if scenario == "S4m" and tool != "memcheck" else PASSTHROUGH
        cmd = vg + [binary, f"127.0.0.1:{port}", f"127.0.0.1:{up_port}", "1"]
    elif scenario == "S3":
        cmd = vg + ["haproxy", "-db", "-f", haproxy_config(d, port, up_port)]
    else:
        mport = free_port()
        db = os.path.join(d, f"gw-{scenario}-{tool}-{n}.db")
        if scenario == "S7":
            # Every request a key never seen before: n + warm-up keys, seeded in one inbox.
            keys_file = db + ".keys"
            subprocess.run([SEED, db, keys_file, str(n + 60), "1"], check=True, capture_output=True)
        cfg = os.path.join(d, f"gw-{scenario}-{tool}-{n}.toml")
        with open(cfg, "w") as f:
            f.write(gateway_config(d, port, mport, up_port, db))
        gateway = GATEWAY_SYSTEM_ALLOC if tool == "memcheck" else GATEWAY
        cmd = vg + [gateway, "run", "--config", cfg]
    log = open(os.path.join(d, f"{scenario}-{tool}-{n}.log"), "w")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                         env=dict(os.environ, RUST_LOG="error"))
    try:
        wait_port(port, timeout=120)
        if mport:
            wait_port(mport, timeout=120)
        expect = b" 200 "
        if scenario == "S7":
            # Every measured request a key never seen before; the warm-up takes the extra ones.
            with open(keys_file) as f:
                keys = [(bearer(k), inbox) for k, inbox in (line.split() for line in f)]
            warm, measured = keys[n:], keys[:n]
        else:
            if scenario == "S6":
                # A key issued, then deleted: the negative cache answers after its first
                # lookup, as for a client retrying a revoked key.
                extra, expect = bearer(unknown_key(port)), b" 401 "
            elif scenario == "S5":
                extra = bearer(create_key(port))
            elif scenario == "S3":
                extra = bearer(HAPROXY_KEY)
            else:
                extra = ""
            warm, measured = [(extra, INBOX)] * 50, [(extra, INBOX)] * n
        client(port, warm, expect)  # warm caches, pools and the upstream connection
        client(port, measured, expect)
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        log.close()
    text = open(os.path.join(d, f"{scenario}-{tool}-{n}.log")).read()
    if tool == "dhat":
        return None, out
    if tool == "memcheck":
        m = re.search(r"total heap usage: ([\d,]+) allocs", text)
        if not m:
            raise RuntimeError(f"no heap summary for {scenario} {n}:\n{text[-2000:]}")
        return int(m.group(1).replace(",", "")), out
    with open(out) as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1]), out
    raise RuntimeError(f"no callgrind totals for {scenario} {n}")


# Frames that are the allocator or a container growing, not the code that asked.
PLUMBING = re.compile(r"alloc::|__rust|malloc|realloc|calloc|RawVec|raw_vec|hashbrown::raw|"
                      r"bytes::bytes_mut|bytes::bytes::|<alloc|core::ptr|vec::Vec|::clone|"
                      r"from_iter|::extend|::reserve|::with_capacity|::to_vec|::to_owned|"
                      r"String::from|::into|::push|::collect")


def allocation_sites(path, n, depth):
    """Heap blocks per request by allocating call site: the first `depth` frames above the
    allocator plumbing, from a dhat profile of `n` requests (start-up included, so sites with
    fewer than one block per request are start-up)."""
    with open(path) as f:
        prof = json.load(f)
    names = prof["ftbl"]
    sites = {}
    for pp in prof["pps"]:
        frames = [names[i] for i in pp["fs"]]
        own = [fr for fr in frames if not PLUMBING.search(fr)]
        key = " <- ".join(re.sub(r"^0x[0-9A-F]+: ", "", fr).split(" (")[0] for fr in own[:depth])
        sites[key] = sites.get(key, 0) + pp["tbk"]
    return {k: v / n for k, v in sites.items()}


def top_functions(path, count):
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", path],
                         capture_output=True, text=True).stdout
    rows = [l for l in out.splitlines() if re.match(r"^\s*[\d,]+ \(", l)]
    return rows[:count]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n1", type=int, default=1000)
    ap.add_argument("--n2", type=int, default=6000)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--scenarios", default="S4,S4m,S5,S6,S7",
                    help="comma-separated, of S3, S4, S4m, S5, S6, S7")
    ap.add_argument("--tools", default="memcheck,callgrind",
                    help="which counts: memcheck (allocations), callgrind (instructions)")
    ap.add_argument("--sites", action="store_true",
                    help="instead: allocation sites per request of S4 and S5 (valgrind dhat)")
    ap.add_argument("--depth", type=int, default=2, help="frames per allocation site (--sites)")
    args = ap.parse_args()
    if args.sites:
        return print_sites(args)
    d = tempfile.mkdtemp(prefix="agentry-cost-")
    up_port = free_port()
    stop = threading.Event()
    threading.Thread(target=upstream, args=(up_port, stop), daemon=True).start()
    results = {}
    tools = args.tools.split(",")
    scenarios = args.scenarios.split(",")
    try:
        for tool in tools:
            for scenario in scenarios:
                if tool == "memcheck" and scenario == "S4m" and ("S4", tool) in results:
                    # The allocation count is the code's, not the allocator's: S4m's is S4's
                    # (memcheck runs both on the system allocator).
                    results[(scenario, tool)] = results[("S4", tool)]
                    continue
                t1, _ = run(scenario, tool, args.n1, d, up_port)
                t2, out2 = run(scenario, tool, args.n2, d, up_port)
                per = (t2 - t1) / (args.n2 - args.n1)
                if tool == "memcheck" and scenario in ("S5", "S6", "S7") and per < 10:
                    raise RuntimeError(
                        f"{scenario}: {per:.1f} allocations per request: memcheck does not see "
                        "this build's allocator; count allocations on a build without the "
                        "mimalloc feature (bench/cost.sh makes one)")
                results[(scenario, tool)] = (per, out2)
                print(f"{scenario} {tool}: {per:,.1f} per request "
                      f"({t1:,} at {args.n1}, {t2:,} at {args.n2})", file=sys.stderr, flush=True)
    finally:
        stop.set()
    print("| scenario | heap allocations / request | vs S4 | instructions / request | vs S4 "
          "| vs S4m |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    a4 = results.get(("S4", "memcheck"), (None,))[0]
    i4 = results.get(("S4", "callgrind"), (None,))[0]
    i4m = results.get(("S4m", "callgrind"), (None,))[0]
    for scenario in scenarios:
        a = results.get((scenario, "memcheck"), (None,))[0]
        i = results.get((scenario, "callgrind"), (None,))[0]
        da = f"{a - a4:+,.1f}" if a is not None and a4 is not None else "-"
        ri = f"{i / i4:.3f}×" if i is not None and i4 else "-"
        rim = f"{i / i4m:.3f}×" if i is not None and i4m else "-"
        print(f"| {scenario} {SCENARIOS[scenario]} | {'-' if a is None else f'{a:,.1f}'} | {da} "
              f"| {'-' if i is None else f'{i:,.0f}'} | {ri} | {rim} |")
    if ("S5", "callgrind") in results and args.top:
        print(f"\nS5 top functions by inclusive instructions ({args.n2} requests, whole run):")
        for row in top_functions(results[("S5", "callgrind")][1], args.top):
            print("  " + row.strip())


def print_sites(args):
    """Allocation sites per request, S5 beside S4, largest S5 first."""
    d = tempfile.mkdtemp(prefix="agentry-cost-")
    up_port = free_port()
    stop = threading.Event()
    threading.Thread(target=upstream, args=(up_port, stop), daemon=True).start()
    try:
        per = {}
        for scenario in ("S4", "S5"):
            _, out = run(scenario, "dhat", args.n2, d, up_port)
            per[scenario] = allocation_sites(out, args.n2, args.depth)
    finally:
        stop.set()
    print(f"{'S5':>6} {'S4':>6}  allocating site (blocks per request, {args.n2} requests)")
    for site, v in sorted(per["S5"].items(), key=lambda kv: -kv[1])[: args.top]:
        if v >= 0.5:
            print(f"{v:6.2f} {per['S4'].get(site, 0.0):6.2f}  {site}")


if __name__ == "__main__":
    main()
