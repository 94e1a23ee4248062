#!/usr/bin/env python3
"""Two gateway builds measured in one run, rounds interleaved (order alternating), with
bench/run.py's set-up; medians at the end. By default S5 (cache hits, 3 B), S7 (cold cache, 3 B,
32 connections) and S7 on one connection; `--scenarios "S5 3B"` for fewer.

`bench/ab.py NAME=BINARY NAME=BINARY [--rounds N]`, e.g. the system-allocator build against the
default one: `bench/ab.py glibc=target/release/agentry-gateway-system-alloc
mimalloc=target/release/agentry-gateway` (bench/cost.sh builds both).
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("builds", nargs=2, help="NAME=BINARY")
ap.add_argument("--rounds", type=int, default=4)
ap.add_argument("--scenarios", default="S5 3B,S7 3B,S7 1conn",
                help="comma-separated SCENARIO BODY pairs (bench/run.py's names)")
cli = ap.parse_args()
bins = dict(b.split("=", 1) for b in cli.builds)
args = run.parser().parse_args(["--rounds", str(cli.rounds)])
b = run.Bench(args)
res = {}
try:
    b.seed()
    b.start_peers()
    for rnd in range(args.rounds):
        order = list(bins) if rnd % 2 == 0 else list(reversed(bins))
        for name in order:
            b.gateway = bins[name]
            b.stop("S5")
            b.start_gateway("S5", run.PORTS["S5"], run.GW_METRICS, b.db)
            for scen, body in (p.split() for p in cli.scenarios.split(",")):
                r = b.run_once(scen, body)
                res.setdefault((name, f"{scen} {body}"), []).append(r)
                print(f"round {rnd+1} {name} {scen} {body}: {r['rps']:.0f} req/s p99 {r['p99_ms']:.2f} ms "
                      f"cpu {r['cpu_ms_per_1k']:.1f} rss {r['rss_mib']:.1f}", flush=True)
finally:
    b.stop_all()
    b.drop_databases()
for key, rs in sorted(res.items()):
    def med(k, rs=rs):
        return statistics.median(r[k] for r in rs)
    print(f"{key[0]:9s} {key[1]}: req/s {med('rps'):8.0f}  p50 {med('p50_ms'):.2f}  "
          f"p99 {med('p99_ms'):.2f}  cpu ms/1k {med('cpu_ms_per_1k'):.1f}  rss {med('rss_mib'):.1f}  "
          f"(p99s {[round(r['p99_ms'], 1) for r in rs]}, "
          f"cpus {[round(r['cpu_ms_per_1k'], 1) for r in rs]})")
