#!/usr/bin/env python3
"""Key-change soak (issue #24): three gateways on one PostgreSQL database, on 127.0.0.1 only.

One key K is used by 12 kept-alive clients (4 on each gateway, `POST .../messages`, which needs
`message_send`) and renamed by 3 clients (one per gateway) without pause, while a changer
narrows and widens it: PATCH wide, 10 ms, PATCH narrow, 40 ms, through A, B and C in turn.

Reports, for each narrowing PATCH's 200 (the change's 2xx):
  - on the changing instance: requests sent after the 200 and answered before the next widening
    was sent that passed with the removed permission. The guarantee: zero.
  - on each other instance: the lag, how long after the 200 a request could still pass there
    (the send time of the last passing request, 0 when none did), as p50/p99/max.
Not for CI: bounded by --seconds (default 600). Run through bench/soak_changes.sh, which builds
the release binary; --gateway runs another build.
"""

import argparse
import bisect
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ports import free_port, wait_port  # noqa: E402
from pg_cluster import CATCH_ALL, Client, gateway_config, pct  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
TOKEN = "agm_bench_" + hashlib.sha256(os.urandom(16)).hexdigest()[:32]
INBOX = "support@bench.example"
NAMES = "ABC"
WIDE = json.dumps({"permissions": {"message_read": True, "message_send": True}})
NARROW = json.dumps({"permissions": {"message_read": True}})


# Sends need `message_send`, reads `message_read`: what the changer narrows and widens.
MESSAGES_ROUTE = """[[routes]]
path = "/v0/inboxes/{inbox_id}/messages"
upstream = "inbox"
require = { GET = "message_read", POST = "message_send" }
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--gateway", default=os.path.join(TARGET, "release/agentry-gateway"))
    ap.add_argument("--staleness-ms", type=int, default=2000,
                    help="store.revocation_max_staleness_ms of every gateway")
    ap.add_argument("--pg-server", default="host=127.0.0.1 port=5432 user=postgres")
    ap.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()

    d = tempfile.mkdtemp(prefix="agentry-soak-")
    db = f"agentry_soak_{os.getpid()}"
    subprocess.run(["psql", args.pg_admin, "-qc", f"CREATE DATABASE {db}"], check=True)
    url = f"{args.pg_server} dbname={db}"
    procs = []
    try:
        upstream = free_port()
        ports = []
        for i, name in enumerate(NAMES):
            port, mport = free_port(), free_port()
            path = os.path.join(d, f"{name}.toml")
            with open(path, "w") as f:
                f.write(gateway_config(
                    d, name, port, mport, upstream, url, TOKEN,
                    store_extra=f"revocation_max_staleness_ms = {args.staleness_ms}",
                    routes=MESSAGES_ROUTE + CATCH_ALL))
            cmd = [args.gateway, "run", "--config", path] + (["--demo-upstream"] if i == 0 else [])
            log = open(os.path.join(d, f"{name}.log"), "w")
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                          env=dict(os.environ, RUST_LOG="warn"),
                                          start_new_session=True))
            wait_port(port)
            wait_port(mport)
            ports.append(port)
        run(args, ports)
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        subprocess.run(["psql", args.pg_admin, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"],
                       check=False)
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(d, ignore_errors=True)


def run(args, ports):
    keys_path = f"/human/v0/inboxes/{INBOX}/api-keys"
    target = f"/v0/inboxes/{INBOX}/messages"
    admin = Client(ports[0])
    deadline = time.time() + 15
    while True:
        st, body = admin.call("POST", keys_path, TOKEN, json.dumps({"name": "K"}))
        assert st == 201, (st, body)
        created = json.loads(body)
        key, kid = created["api_key"], created["api_key_id"]
        if all(Client(p).call("POST", target, key)[0] == 200 for p in ports):
            break
        if time.time() > deadline:
            raise RuntimeError("the gateways never accepted a key")
        time.sleep(0.2)
    stop = threading.Event()
    seen = [[] for _ in ports]  # per instance: (sent, answered, status)
    errors = []

    def client(i):
        c, out = Client(ports[i]), []
        while not stop.is_set():
            sent = time.perf_counter()
            try:
                st, _ = c.call("POST", target, key)
            except Exception as e:  # noqa: BLE001 (counted, the soak goes on)
                errors.append(repr(e))
                continue
            out.append((sent, time.perf_counter(), st))
        seen[i].extend(out)

    renames = [0]

    def renamer(i):
        c, n = Client(ports[i]), 0
        while not stop.is_set():
            try:
                st, body = c.call("PATCH", f"{keys_path}/{kid}", TOKEN,
                                  json.dumps({"name": f"r{i}-{n}"}))
                if st != 200:
                    errors.append(f"rename {st} {body[:200]!r}")
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
            n += 1
        renames[0] += n

    threads = [threading.Thread(target=client, args=(i % 3,)) for i in range(12)]
    threads += [threading.Thread(target=renamer, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    changers = [Client(p) for p in ports]
    windows = []  # (changing instance, narrow 200 at, next widen sent at)
    start = time.perf_counter()
    narrowed = None
    cycle = 0
    while time.perf_counter() - start < args.seconds:
        i = cycle % 3
        widen_sent = time.perf_counter()
        if narrowed:
            windows.append((narrowed[0], narrowed[1], widen_sent))
        st, body = changers[i].call("PATCH", f"{keys_path}/{kid}", TOKEN, WIDE)
        assert st == 200, (st, body)
        time.sleep(0.010)
        st, body = changers[i].call("PATCH", f"{keys_path}/{kid}", TOKEN, NARROW)
        assert st == 200, (st, body)
        narrowed = (i, time.perf_counter())
        time.sleep(0.040)
        cycle += 1
    windows.append((narrowed[0], narrowed[1], time.perf_counter()))
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    report(args, seen, windows, cycle, renames[0], errors, elapsed)


def report(args, seen, windows, cycles, renames, errors, elapsed):
    for s in seen:
        s.sort()
    violations = []  # (cycle, ms after the 200)
    lags = {n: [] for n in NAMES}
    for w, (changer, ok_at, until) in enumerate(windows):
        for i, s in enumerate(seen):
            lo = bisect.bisect_left(s, (ok_at, 0, 0))
            hi = bisect.bisect_left(s, (until, 0, 0))
            # Sent after the 2xx and answered before the next widening was sent (one answered
            # later may have been served after the widening: that is its right).
            passed = [t for t, done, st in s[lo:hi] if st == 200 and done < until]
            if i == changer:
                violations += [(w, (t - ok_at) * 1000) for t in passed]
            else:
                lags[NAMES[i]].append((passed[-1] - ok_at) * 1000 if passed else 0.0)
    statuses = {}
    for s in seen:
        for _, _, st in s:
            statuses[st] = statuses.get(st, 0) + 1
    total = sum(statuses.values())
    print(f"key-change soak: 3 gateways on PostgreSQL, 12 clients, 3 renamers, {cycles} "
          f"narrow/widen cycles in {elapsed:.0f} s ({args.gateway})")
    print(f"requests: {total} ({total / elapsed:.0f}/s), statuses {statuses}, renames {renames}, "
          f"client errors {len(errors)}")
    print(f"passed with a removed permission after the 2xx on the changing instance: "
          f"{len(violations)}" + (f" (first: cycle {violations[0][0]}, +{violations[0][1]:.2f} ms)"
                                  if violations else ""))
    print("lag to the other instances (the last request that still passed, after the 2xx), ms:")
    print("| instance | narrowings seen | p50 | p99 | max |")
    print("| --- | --- | --- | --- | --- |")
    both = []
    for name, xs in lags.items():
        if xs:
            both += xs
            print(f"| {name} | {len(xs)} | {statistics.median(xs):.2f} | {pct(xs, 99):.2f} | "
                  f"{max(xs):.2f} |")
    if both:
        print(f"| all | {len(both)} | {statistics.median(both):.2f} | {pct(both, 99):.2f} | "
              f"{max(both):.2f} |")
    for e in errors[:5]:
        print("error:", e)
    if violations:
        sys.exit(1)


if __name__ == "__main__":
    main()
