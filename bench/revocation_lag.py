#!/usr/bin/env python3
"""Cross-instance revocation lag: three gateways on one PostgreSQL database.

Each cycle creates a key through A, uses it on A and C (so both have it cached), deletes it
through B, and from B's 204 polls A and C on kept-alive connections until each answers 401.
The lag of a cycle is the time from B's 204 to that first 401. Prints p50/p99/max per instance.
Run through bench/revocation_lag.sh, which builds the release binary.
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ports import free_port, wait_port  # noqa: E402
from pg_cluster import Client, gateway_config, pct  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
GATEWAY = os.path.join(TARGET, "release/agentry-gateway")
TOKEN = "agm_bench_" + hashlib.sha256(os.urandom(16)).hexdigest()[:32]
INBOX = "support@bench.example"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cycles", type=int, default=500)
    ap.add_argument("--pg-server", default="host=127.0.0.1 port=5432 user=postgres")
    ap.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()

    d = tempfile.mkdtemp(prefix="agentry-revlag-")
    db = f"agentry_revlag_{os.getpid()}"
    subprocess.run(["psql", args.pg_admin, "-qc", f"CREATE DATABASE {db}"], check=True)
    url = f"{args.pg_server} dbname={db}"
    procs = []
    try:
        upstream = free_port()
        ports = []
        for i, name in enumerate("ABC"):
            port, mport = free_port(), free_port()
            path = os.path.join(d, f"{name}.toml")
            with open(path, "w") as f:
                f.write(gateway_config(d, name, port, mport, upstream, url, TOKEN))
            cmd = [GATEWAY, "run", "--config", path] + (["--demo-upstream"] if i == 0 else [])
            log = open(os.path.join(d, f"{name}.log"), "w")
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                          env=dict(os.environ, RUST_LOG="warn"),
                                          start_new_session=True))
            wait_port(port)
            wait_port(mport)
            ports.append(port)
        a, b, c = (Client(p, timeout=5) for p in ports)
        target = f"/v0/inboxes/{INBOX}/m"
        keys_path = f"/human/v0/inboxes/{INBOX}/api-keys"
        # Wait for the demo upstream to be healthy everywhere.
        deadline = time.time() + 10
        while True:
            st, body = a.call("POST", keys_path, TOKEN, json.dumps({"name": "warm"}))
            key = json.loads(body)["api_key"]
            if all(g.call("GET", target, key)[0] == 200 for g in (a, b, c)):
                break
            if time.time() > deadline:
                raise RuntimeError("the gateways never accepted a key")
            time.sleep(0.2)
        lags = {"A": [], "C": []}
        for i in range(args.cycles):
            st, body = a.call("POST", keys_path, TOKEN, json.dumps({"name": f"c{i}"}))
            assert st == 201, st
            created = json.loads(body)
            key, kid = created["api_key"], created["api_key_id"]
            for g in (a, c):
                st, _ = g.call("GET", target, key)
                assert st == 200, st
            st, _ = b.call("DELETE", f"{keys_path}/{kid}", TOKEN)
            assert st == 204, st
            t0 = time.perf_counter()
            pending = {"A": a, "C": c}
            while pending:
                for name in list(pending):
                    st, _ = pending[name].call("GET", target, key)
                    if st == 401:
                        lags[name].append((time.perf_counter() - t0) * 1000)
                        del pending[name]
                    elif st != 200:
                        raise RuntimeError(f"{name} answered {st}")
                if time.perf_counter() - t0 > 10:
                    raise RuntimeError(f"not revoked after 10 s on {list(pending)}")
        print(f"revocation lag over {args.cycles} create-use-delete cycles "
              f"(B's 204 to the first 401), ms:")
        print("| instance | p50 | p99 | max |")
        print("| --- | --- | --- | --- |")
        for name, xs in lags.items():
            print(f"| {name} | {statistics.median(xs):.2f} | {pct(xs, 99):.2f} | {max(xs):.2f} |")
        both = lags["A"] + lags["C"]
        print(f"| both | {statistics.median(both):.2f} | {pct(both, 99):.2f} | {max(both):.2f} |")
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


if __name__ == "__main__":
    main()
