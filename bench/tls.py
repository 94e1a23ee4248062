#!/usr/bin/env python3
"""TLS load benchmark: the gateway terminating TLS (S5 over TLS: HTTP/1.1 keep-alive and
HTTP/2) beside HAProxy terminating TLS with the same key-auth config (S3 over TLS), the plain
S5 as the baseline, and handshakes per second with a new connection per request.

Same rules as bench/run.py (it reuses its set-up): the system under test on core 0, load and
upstream on core 1, scenarios interleaved, medians and spreads. HTTP/1.1 load is wrk (keys
cycled per request, as in run.py); HTTP/2 load is h2load (one key, 10 streams per connection).
Run through bench/tls.sh.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import haproxy  # noqa: E402
import run  # noqa: E402
from run import CORE_LOAD, PORTS, KEYS_LUA, fmt, summarize, proc_cpu_ticks, parse_wrk  # noqa: E402

T3, T5, T5_METRICS = 19103, 19105, 19106


def h2load(port, key, inbox, duration, conns, streams):
    cmd = ["taskset", "-c", CORE_LOAD, "h2load", "-t1", f"-c{conns}", f"-m{streams}",
           f"-D{duration}", "--warm-up-time=1", "-H", f"authorization: Bearer {key}",
           f"https://127.0.0.1:{port}/v0/inboxes/{inbox}/small"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    m = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    status = re.search(r"status codes: (\d+) 2xx", out)
    proto = re.search(r"Application protocol: (\S+)", out)
    assert proto and proto.group(1) == "h2", out
    return {"rps": float(m.group(1)), "requests": int(done.group(1)),
            "non2xx": int(done.group(1)) - int(status.group(1)), "p99_ms": None}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--conns", type=int, default=32)
    args = ap.parse_args()
    run_args = types.SimpleNamespace(
        rounds=args.rounds, duration=args.duration, warmup=2, conns=args.conns, s7_keys=10,
        access_log=False, gw_server="", gw_upstream="", flush_ms=1000, require=False,
        store="sqlite", pg_server="", pg_admin="")
    b = run.Bench(run_args)
    results = {}
    try:
        b.seed()
        b.start_peers()  # upstream, S3 (HAProxy key auth) and S5 (the gateway, plaintext)
        cert, key = os.path.join(b.dir, "cert.pem"), os.path.join(b.dir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "2", "-subj", "/CN=bench", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True)
        with open(os.path.join(b.dir, "combined.pem"), "w") as f:
            f.write(open(cert).read() + open(key).read())
        cfg = haproxy.key_auth(f"127.0.0.1:{T3} ssl crt {b.dir}/combined.pem alpn h2,http/1.1",
                               run.UPSTREAM, os.path.join(b.dir, "keys.map"))
        b.write("haproxy-tls.cfg", cfg)
        b.spawn("T3", ["haproxy", "-db", "-f", f"{b.dir}/haproxy-tls.cfg"], run.CORE_SUT, T3)
        b.args.gw_server = f'[server.tls]\ncert_path = "{cert}"\nkey_path = "{key}"\n'
        b.start_gateway("T5", T5, T5_METRICS, b.db)
        first_key, first_inbox = open(b.keys_file).readline().split()

        def wrk_tls(port, extra, conns):
            cmd = ["taskset", "-c", CORE_LOAD, "wrk", "-t1", f"-c{conns}", f"-d{args.duration}s",
                   "--latency", "-s", KEYS_LUA, f"https://127.0.0.1:{port}", "--",
                   b.keys_file, "/small"] + extra
            return parse_wrk(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)

        plan = {
            "S5 plain h1": ("S5", lambda: b.wrk(PORTS["S5"], [b.keys_file, "/small"], args.duration, args.conns)),
            "S5 TLS h1": ("T5", lambda: wrk_tls(T5, [], args.conns)),
            "S3 TLS h1": ("T3", lambda: wrk_tls(T3, [], args.conns)),
            "S5 TLS h2": ("T5", lambda: h2load(T5, first_key, first_inbox, args.duration, 8, 10)),
            "S3 TLS h2": ("T3", lambda: h2load(T3, first_key, first_inbox, args.duration, 8, 10)),
            "S5 TLS new conn/req": ("T5", lambda: wrk_tls(T5, ["close"], 8)),
            "S3 TLS new conn/req": ("T3", lambda: wrk_tls(T3, ["close"], 8)),
        }
        for label, (proc, fn) in plan.items():  # warm-up
            fn()
        for rnd in range(args.rounds):
            for label, (proc, fn) in plan.items():
                pid = b.pids[proc]
                cpu0 = proc_cpu_ticks(pid)
                r = fn()
                r["cpu_ms_per_1k"] = (proc_cpu_ticks(pid) - cpu0) * 10.0 / r["requests"] * 1000
                results.setdefault(label, []).append(r)
                print(f"round {rnd + 1} {label}: {r['rps']:.0f} req/s non-2xx {r['non2xx']}",
                      file=sys.stderr, flush=True)
    finally:
        b.stop_all()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(b.dir, ignore_errors=True)

    print(f"\n{'scenario':<24} {'req/s':>9} {'spread':>7} {'p99 ms':>7} {'CPU ms/1k':>9} {'non-2xx':>8}")
    med = {}
    for label, runs in results.items():
        rps, spread = summarize(runs, "rps")
        med[label] = {"rps": rps, "cpu": summarize(runs, "cpu_ms_per_1k")[0]}
        print(f"{label:<24} {fmt(rps, 0):>9} {fmt(spread) + '%':>7} "
              f"{fmt(summarize(runs, 'p99_ms')[0], 2):>7} {fmt(med[label]['cpu'], 1):>9} "
              f"{sum(r['non2xx'] for r in runs):>8}")

    def ratio(a, b_, k="rps"):
        return med[a][k] / med[b_][k] if med.get(a) and med.get(b_) and med[b_][k] else None

    print("\nratios (req/s):")
    print(f"  S5 TLS h1 / S5 plain h1       {fmt(ratio('S5 TLS h1', 'S5 plain h1'), 3)}")
    print(f"  S5 TLS h1 / S3 TLS h1         {fmt(ratio('S5 TLS h1', 'S3 TLS h1'), 3)}")
    print(f"  S5 TLS h2 / S3 TLS h2         {fmt(ratio('S5 TLS h2', 'S3 TLS h2'), 3)}")
    print(f"  S5 TLS h2 / S5 TLS h1         {fmt(ratio('S5 TLS h2', 'S5 TLS h1'), 3)}")
    print(f"  handshakes/s S5 / S3          {fmt(ratio('S5 TLS new conn/req', 'S3 TLS new conn/req'), 3)}")
    print(f"  CPU/req S5 TLS h1 / S5 plain  {fmt(ratio('S5 TLS h1', 'S5 plain h1', 'cpu'), 3)}")


if __name__ == "__main__":
    main()
