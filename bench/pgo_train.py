#!/usr/bin/env python3
"""The training run of the profile-guided build (scripts/build-pgo.sh): the load bench's traffic
through an instrumented gateway, then a graceful stop, so the gateway writes its profile.

Traffic, in bench/run.py's set-up (nginx upstream on 127.0.0.1:19000, SQLite stores seeded by
bench_seed): cache hits on 32 connections (3 B and 4 KiB bodies) and on one connection, rejected
keys (malformed, bad checksum, unknown), a cold cache (misses that go to the store) and the
management list. Each part checks its statuses, so a gateway that answers wrongly fails the
build instead of training it.

`bench/pgo_train.py --gateway INSTRUMENTED_BINARY --seed BENCH_SEED_BINARY --profile-dir DIR`
"""

import argparse
import glob
import os
import shutil
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402


def check(what, r, expect_ok):
    """All answers 2xx (expect_ok) or none of them, and at least one request."""
    bad = r["non2xx"] if expect_ok else r["requests"] - r["non2xx"]
    print(f"pgo-train: {what}: {r['requests']} requests, {r['non2xx']} non-2xx", flush=True)
    if r["requests"] == 0 or bad or r["socket_errors"]:
        sys.exit(f"pgo-train: {what}: unexpected answers ({r}); the instrumented gateway is not "
                 "answering as it should, so its profile would be wrong")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gateway", required=True, help="the instrumented agentry-gateway binary")
    ap.add_argument("--seed", required=True, help="the bench_seed example binary")
    ap.add_argument("--profile-dir", required=True,
                    help="where the instrumented build writes its .profraw files")
    ap.add_argument("--seconds", type=int, default=5, help="length of each part of the traffic")
    cli = ap.parse_args()
    secs = cli.seconds

    run.SEED = cli.seed
    args = run.parser().parse_args(["--s7-keys", "50000"])
    b = run.Bench(args)
    b.gateway = cli.gateway
    try:
        # bench_seed is built with the same instrumentation: its profile goes elsewhere, so
        # only the gateway's own run trains the build.
        os.environ["LLVM_PROFILE_FILE"] = os.path.join(b.dir, "seed-%p.profraw")
        b.seed()
        del os.environ["LLVM_PROFILE_FILE"]
        b.start_upstream()
        # The upstream first: the gateways' health checks must find it up.
        b.start_gateway("S5", run.PORTS["S5"], run.GW_METRICS, b.db)
        b.start_gateway("S7", run.PORTS["S7"], run.S7_METRICS, b.db7)
        s5, s7 = run.PORTS["S5"], run.PORTS["S7"]
        check("hits 3 B", b.wrk(s5, [b.keys_file, "/small"], secs, 32), True)
        check("hits 4 KiB", b.wrk(s5, [b.keys_file, "/big"], secs, 32), True)
        check("hits, one connection", b.wrk(s5, [b.keys_file, "/small"], secs, 1), True)
        check("rejected keys", b.wrk(s5, [b.bad_keys, "/small"], secs, 32), False)
        check("cold cache", b.wrk(s7, [b.keys7, "/small"], secs, 32), True)
        check("management list", b.wrk(
            s7, [run.TOKEN, "GET", "/human/v0/inboxes/inbox0@bench.example/api-keys?limit=100"],
            max(1, secs // 2), 4, script=run.MGMT_LUA), True)
        for name in ("S5", "S7"):
            p = b.procs.pop(name)
            p.send_signal(signal.SIGTERM)
            if p.wait(timeout=60) != 0:
                sys.exit(f"pgo-train: the {name} gateway exited with {p.returncode}")
    finally:
        b.stop_all()
        shutil.rmtree(b.dir, ignore_errors=True)
    raws = glob.glob(os.path.join(cli.profile_dir, "*.profraw"))
    if not raws:
        sys.exit(f"pgo-train: no .profraw in {cli.profile_dir}: was the gateway built with "
                 "-Cprofile-generate pointing there?")
    print(f"pgo-train: {len(raws)} profile file(s) in {cli.profile_dir}")


if __name__ == "__main__":
    main()
