#!/usr/bin/env python3
"""Load benchmark of agentry-gateway against nginx, HAProxy and a bare pingora proxy.

Everything on loopback and pinned: the system under test on core 0 (one worker), wrk and the
upstream (nginx answering a fixed 200) on core 1. Scenarios are interleaved, each run three
times or more; the table reports medians and spreads, then the ratios that are the result.
Run through bench/run.sh, which installs and builds what this needs.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import haproxy  # noqa: E402
from ports import wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
GATEWAY = os.environ.get("AGENTRY_GATEWAY_BIN", os.path.join(TARGET, "release/agentry-gateway"))
# AGENTRY_PASSTHROUGH_BIN: another build of S4 (bench/cost.py takes the same variable).
PASSTHROUGH = os.environ.get("AGENTRY_PASSTHROUGH_BIN",
                             os.path.join(TARGET, "release/examples/pingora_passthrough"))
SEED = os.path.join(TARGET, "release/examples/bench_seed")
KEYS_LUA = os.path.join(ROOT, "bench/keys.lua")
MGMT_LUA = os.path.join(ROOT, "bench/mgmt.lua")

UPSTREAM = 19000
STATUS = 19009
PORTS = {"S0": UPSTREAM, "S1": 19001, "S2": 19002, "S3": 19003, "S4": 19004,
         "S5": 19005, "S6": 19005, "S7": 19007}
GW_METRICS = 19006
S7_METRICS = 19008
TOKEN = "agm_bench_" + hashlib.sha256(os.urandom(16)).hexdigest()[:32]
CORE_SUT, CORE_LOAD = "0", "1"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def http_get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def proc_cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return int(parts[11]) + int(parts[12])  # utime + stime


def proc_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def upstream_accepts():
    text = http_get(f"http://127.0.0.1:{STATUS}/status")
    return int(text.splitlines()[2].split()[0])


def metric(port, series):
    text = http_get(f"http://127.0.0.1:{port}/metrics")
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


class Bench:
    def __init__(self, args):
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="agentry-bench-")
        os.chmod(self.dir, 0o755)  # nginx workers run as nobody and read big.txt from here
        self.procs = {}
        self.pids = {}
        # The gateway build that start_gateway runs (bench/ab.py switches it between rounds).
        self.gateway = GATEWAY
        self.pg_dbs = []

    # -- processes ------------------------------------------------------------------------

    def spawn(self, name, cmd, core, port):
        log = open(os.path.join(self.dir, f"{name}.log"), "w")
        p = subprocess.Popen(["taskset", "-c", core] + cmd, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.procs[name] = p
        wait_port(port)
        self.pids[name] = p.pid
        return p

    def stop(self, name):
        p = self.procs.pop(name, None)
        if p and p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def stop_all(self):
        for name in list(self.procs):
            self.stop(name)

    def nginx_worker_pid(self, name):
        master = self.procs[name].pid
        kids = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
        return int(kids[0]) if kids else master

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def start_upstream(self):
        """The upstream every scenario proxies to: nginx on core 1 answering a fixed 200 of
        3 bytes (`/small`, any path) or 4 KiB (a path ending in `/big`)."""
        self.write("big.txt", "x" * 4095 + "\n")
        self.write("upstream.conf", f"""
worker_processes 1; daemon off; pid {self.dir}/upstream.pid; error_log {self.dir}/upstream.err;
events {{ worker_connections 8192; }}
http {{
  access_log off; keepalive_requests 100000000; keepalive_timeout 600s; default_type text/plain;
  server {{ listen 127.0.0.1:{UPSTREAM} backlog=4096;
    location / {{ return 200 "ok\\n"; }}
    location ~ /big$ {{ root {self.dir}; try_files /big.txt =404; }} }}
  server {{ listen 127.0.0.1:{STATUS}; location /status {{ stub_status; }} }}
}}""")
        self.spawn("upstream", ["nginx", "-c", f"{self.dir}/upstream.conf", "-p", self.dir], CORE_LOAD, UPSTREAM)

    def start_peers(self):
        self.start_upstream()
        self.write("nginx-proxy.conf", f"""
worker_processes 1; daemon off; pid {self.dir}/proxy.pid; error_log {self.dir}/proxy.err;
events {{ worker_connections 8192; }}
http {{
  access_log off; keepalive_requests 100000000; keepalive_timeout 600s;
  upstream up {{ server 127.0.0.1:{UPSTREAM}; keepalive 128; }}
  server {{ listen 127.0.0.1:{PORTS['S1']} backlog=4096;
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}
}}""")
        self.spawn("S1", ["nginx", "-c", f"{self.dir}/nginx-proxy.conf", "-p", self.dir], CORE_SUT, PORTS["S1"])
        self.pids["S1"] = self.nginx_worker_pid("S1")

        self.write("haproxy-plain.cfg", haproxy.plain(f"127.0.0.1:{PORTS['S2']}", UPSTREAM))
        self.spawn("S2", ["haproxy", "-db", "-f", f"{self.dir}/haproxy-plain.cfg"], CORE_SUT, PORTS["S2"])

        # S3: key auth done in HAProxy config alone (bench/haproxy.py).
        keys_map = os.path.join(self.dir, "keys.map")
        with open(self.keys_file) as f:
            haproxy.write_keys_map(keys_map, (line.split() for line in f))
        self.write("haproxy-auth.cfg", haproxy.key_auth(f"127.0.0.1:{PORTS['S3']}", UPSTREAM, keys_map))
        self.spawn("S3", ["haproxy", "-db", "-f", f"{self.dir}/haproxy-auth.cfg"], CORE_SUT, PORTS["S3"])

        self.spawn("S4", [PASSTHROUGH, f"127.0.0.1:{PORTS['S4']}", f"127.0.0.1:{UPSTREAM}", "1"],
                   CORE_SUT, PORTS["S4"])
        self.start_gateway("S5", PORTS["S5"], GW_METRICS, self.db)
        self.pids["S6"] = self.pids["S5"]

    def gateway_config(self, port, mport, db):
        token_hash = hashlib.sha256(TOKEN.encode()).hexdigest()
        return f"""
[server]
listen = "127.0.0.1:{port}"
threads = 1
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1
pid_file = "{self.dir}/gw{port}.pid"
upgrade_sock = "{self.dir}/gw{port}.sock"
{self.args.gw_server}
[metrics]
listen = "127.0.0.1:{mport}"
{self.store_toml(db)}
[usage]
flush_interval_ms = {self.args.flush_ms}
[logging]
access_log = {str(self.args.access_log).lower()}
[limits]
failed_auth_per_ip = 0
[[management.tokens]]
name = "bench"
sha256 = "{token_hash}"
scope = "all"
[inbox_directory]
source = "none"
[[upstreams]]
name = "inbox"
addresses = ["127.0.0.1:{UPSTREAM}"]
{self.args.gw_upstream}
[[routes]]
path = "/v0/inboxes/{{inbox_id}}"
upstream = "inbox"
{'require = { GET = "message_read" }' if self.args.require else ''}
"""

    def store_toml(self, db):
        if self.args.store == "postgres":
            return f'[store]\nkind = "postgres"\nurl = "{db}"\npool_size = 8'
        return f'[store]\nkind = "sqlite"\npath = "{db}"'

    def database(self, name):
        """A store location: a SQLite file here, or a fresh PostgreSQL database."""
        if self.args.store != "postgres":
            return os.path.join(self.dir, f"{name}.db")
        db = f"agentry_bench_{os.getpid()}_{name}"
        sh(["psql", self.args.pg_admin, "-qc", f"DROP DATABASE IF EXISTS {db}"])
        sh(["psql", self.args.pg_admin, "-qc", f"CREATE DATABASE {db}"])
        self.pg_dbs.append(db)
        return f"{self.args.pg_server} dbname={db}"

    def drop_databases(self):
        for db in self.pg_dbs:
            subprocess.run(["psql", self.args.pg_admin, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"],
                           check=False)

    def start_gateway(self, name, port, mport, db):
        cfg = self.write(f"gateway-{port}.toml", self.gateway_config(port, mport, db))
        env_cmd = ["env", "RUST_LOG=warn", self.gateway, "run", "--config", cfg]
        self.spawn(name, env_cmd, CORE_SUT, port)
        wait_port(mport)
        self.pids[name] = self.procs[name].pid
        # `env` execs the gateway, so the pid is the gateway's own.

    # -- data ----------------------------------------------------------------------------

    def seed(self):
        self.db = self.database("s5")
        self.keys_file = os.path.join(self.dir, "keys-1k.txt")
        sh([SEED, self.db, self.keys_file, "1000", "100"])
        self.db7 = self.database("s7")
        self.keys7 = os.path.join(self.dir, "keys-s7.txt")
        sh([SEED, self.db7, self.keys7, str(self.args.s7_keys), "1"])
        # S6: malformed, bad-checksum and unknown (well-formed, never issued) keys.
        self.bad_keys = os.path.join(self.dir, "keys-bad.txt")
        unknown = os.path.join(self.dir, "unknown.txt")
        sh([SEED, os.path.join(self.dir, "unknown.db"), unknown, "1000", "100"])
        with open(unknown) as f, open(self.bad_keys, "w") as out:
            for i, line in enumerate(f):
                key, inbox = line.split()
                if i % 3 == 0:
                    key = key[:20]  # malformed
                elif i % 3 == 1:
                    key = key[:-1] + ("A" if key[-1] != "A" else "B")  # bad checksum
                out.write(f"{key} {inbox}\n")

    # -- one measured run ---------------------------------------------------------------

    def wrk(self, port, script_args, duration, conns, script=KEYS_LUA):
        cmd = ["taskset", "-c", CORE_LOAD, "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency",
               "-s", script, f"http://127.0.0.1:{port}", "--"] + script_args
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return parse_wrk(out)

    def run_once(self, scen, body):
        suffix = "/big" if body == "4KiB" else "/small"
        port = PORTS[scen]
        keys = self.keys_file
        if scen == "S6":
            keys = self.bad_keys
        if scen == "S7":
            # A cold cache: a fresh gateway on the --s7-keys store (more keys than a run sends).
            self.stop("S7")
            self.start_gateway("S7", PORTS["S7"], S7_METRICS, self.db7)
            keys = self.keys7
            warm_keys = self.bad_keys
        else:
            warm_keys = keys
        self.wrk(port, [warm_keys, suffix], self.args.warmup, self.args.conns)
        pid = self.pids.get(scen)
        mport = {"S5": GW_METRICS, "S6": GW_METRICS, "S7": S7_METRICS}.get(scen)
        cpu0 = proc_cpu_ticks(pid) if pid and scen != "S0" else None
        acc0 = upstream_accepts()
        st0 = metric(mport, 'agentry_gateway_store_queries_total{op="record_usage"}') if mport else None
        q0 = metric(mport, 'agentry_gateway_store_queries_total{op="find_by_hash"}') if mport else None
        miss0 = metric(mport, 'agentry_gateway_auth_cache_total{result="miss"}') if mport else None
        conns = 1 if body == "1conn" else self.args.conns
        r = self.wrk(port, [keys, suffix], self.args.duration, conns)
        if cpu0 is not None:
            r["cpu_ms_per_1k"] = (proc_cpu_ticks(pid) - cpu0) * 10.0 / r["requests"] * 1000
            r["rss_mib"] = proc_hwm_kib(pid) / 1024
        r["upstream_conns_per_1k"] = max(0, upstream_accepts() - acc0 - 1) / r["requests"] * 1000
        if mport:
            r["store_writes_per_1k"] = (metric(mport, 'agentry_gateway_store_queries_total{op="record_usage"}') - st0) / r["requests"] * 1000
            misses = metric(mport, 'agentry_gateway_auth_cache_total{result="miss"}') - miss0
            queries = metric(mport, 'agentry_gateway_store_queries_total{op="find_by_hash"}') - q0
            r["queries_per_miss"] = queries / misses if misses else None
            r["misses"] = misses
        return r

    def management(self):
        """Create p99 and list-of-100 p99 from an inbox holding the S7 keys."""
        self.stop("S7")
        self.start_gateway("S7", PORTS["S7"], S7_METRICS, self.db7)
        out = {}
        for label, method, path in [
            ("list100", "GET", "/human/v0/inboxes/inbox0@bench.example/api-keys?limit=100"),
            ("create", "POST", "/human/v0/inboxes/inbox0@bench.example/api-keys"),
        ]:
            runs = [self.wrk(PORTS["S7"], [TOKEN, method, path], self.args.duration, 4, script=MGMT_LUA)
                    for _ in range(self.args.rounds)]
            out[label] = runs
        return out


def proc_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def soak(b, seconds):
    """A bounded soak: S5 traffic for `seconds`, in three equal parts; memory and p99 of the
    first and last part must be within 20%."""
    part = max(1, seconds // 3)
    pid = b.pids["S5"]
    b.wrk(PORTS["S5"], [b.keys_file, "/small"], 5, b.args.conns)  # warm caches and pools first
    rows = []
    for i in range(3):
        r = b.wrk(PORTS["S5"], [b.keys_file, "/small"], part, b.args.conns)
        r["rss_mib"] = proc_rss_kib(pid) / 1024
        rows.append(r)
        print(f"soak part {i + 1}: {r['rps']:.0f} req/s p99 {r['p99_ms']:.2f} ms "
              f"RSS {r['rss_mib']:.1f} MiB non-2xx {r['non2xx']}", flush=True)
    p99 = rows[2]["p99_ms"] / rows[0]["p99_ms"]
    rss = rows[2]["rss_mib"] / rows[0]["rss_mib"]
    ok = 0.8 <= p99 <= 1.2 and 0.8 <= rss <= 1.2 and all(r["non2xx"] == 0 for r in rows)
    print(f"soak {3 * part} s: last/first third p99 {p99:.3f}, RSS {rss:.3f} -> {'PASS' if ok else 'FAIL'}")
    return ok


def to_ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(out):
    r = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in", out)
    r["requests"] = int(m.group(1))
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        r[f"p{pct}_ms"] = to_ms(m.group(1), m.group(2))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    r["socket_errors"] = m.group(1).strip() if m else ""
    return r


def summarize(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    if not vals:
        return None, None
    return statistics.median(vals), (max(vals) - min(vals)) / statistics.median(vals) * 100 if statistics.median(vals) else 0.0


def fmt(v, digits=1):
    return "-" if v is None else f"{v:,.{digits}f}"


def parser():
    """The command line, also the defaults for bench/ab.py."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--s7-keys", type=int, default=200_000)
    ap.add_argument("--access-log", action="store_true", help="gateway access log on (default off)")
    ap.add_argument("--gw-server", default="", help="extra TOML lines for the gateway's [server]")
    ap.add_argument("--gw-upstream", default="", help="extra TOML lines for the gateway's upstream")
    ap.add_argument("--only", default="", help="comma-separated scenarios, e.g. S4,S5")
    ap.add_argument("--json", default="", help="also write raw results to this file")
    ap.add_argument("--flush-ms", type=int, default=1000, help="gateway usage.flush_interval_ms")
    ap.add_argument("--soak", type=int, default=0, help="run only the soak test, this many seconds")
    ap.add_argument("--require", action="store_true",
                    help="the gateway's route requires message_read for GET (a permission check per request)")
    ap.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite",
                    help="the gateways' store (postgres: a fresh database per gateway on --pg-server)")
    ap.add_argument("--pg-server", default="host=127.0.0.1 port=5432 user=postgres",
                    help="libpq key=value of the PostgreSQL server for --store postgres")
    ap.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres",
                    help="psql connection for creating and dropping the bench databases")
    return ap


def main():
    args = parser().parse_args()
    b = Bench(args)
    results = {}
    try:
        b.seed()
        b.start_peers()
        if args.soak:
            ok = soak(b, args.soak)
            sys.exit(0 if ok else 1)
        b.start_gateway("S7", PORTS["S7"], S7_METRICS, b.db7)
        plan = [(s, body) for s in ["S0", "S1", "S2", "S3", "S4", "S5"] for body in ("3B", "4KiB")]
        # S7 twice: saturated (32 connections) and one connection (a miss's own latency).
        plan += [("S6", "3B"), ("S7", "3B"), ("S7", "1conn")]
        if args.only:
            wanted = set(args.only.split(","))
            plan = [p for p in plan if p[0] in wanted]
        for rnd in range(args.rounds):
            for scen, body in plan:
                r = b.run_once(scen, body)
                results.setdefault(f"{scen} {body}", []).append(r)
                print(f"round {rnd + 1} {scen} {body}: {r['rps']:.0f} req/s p99 {r['p99_ms']:.2f} ms "
                      f"non-2xx {r['non2xx']}", file=sys.stderr, flush=True)
        mgmt = b.management() if not args.only or "M" in args.only.split(",") else {}
    finally:
        b.stop_all()
        b.drop_databases()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(b.dir, ignore_errors=True)

    names = {"S0": "client -> upstream", "S1": "nginx proxy_pass", "S2": "HAProxy plain",
             "S3": "HAProxy key auth", "S4": "pingora passthrough", "S5": "agentry-gateway (hits)",
             "S6": "agentry-gateway (401s)", "S7": "agentry-gateway (cold)"}
    print(f"\n{'scenario':<34} {'req/s':>9} {'spread':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'CPU ms/1k':>9} {'RSS MiB':>8} {'up conn/1k':>10} {'writes/1k':>9} {'non-2xx':>8}")
    med = {}
    for label, runs in results.items():
        scen = label.split()[0]
        rps, spread = summarize(runs, "rps")
        row = {k: summarize(runs, k)[0] for k in ("p50_ms", "p99_ms", "cpu_ms_per_1k", "rss_mib",
                                                    "upstream_conns_per_1k", "store_writes_per_1k")}
        row["rps"] = rps
        med[label] = row
        print(f"{scen + ' ' + names[scen] + ' ' + label.split()[1]:<34} {fmt(rps, 0):>9} {fmt(spread)+'%':>7} "
              f"{fmt(row['p50_ms'], 2):>7} {fmt(row['p99_ms'], 2):>7} {fmt(row['cpu_ms_per_1k'], 1):>9} "
              f"{fmt(row['rss_mib'], 1):>8} {fmt(row['upstream_conns_per_1k'], 2):>10} "
              f"{fmt(row['store_writes_per_1k'], 3):>9} {sum(r['non2xx'] for r in runs):>8}")

    def ratio(a, b, k):
        if a in med and b in med and med[a][k] and med[b][k]:
            return med[a][k] / med[b][k]
        return None

    print("\nratios (medians, same run)")
    for body in ("3B", "4KiB"):
        print(f"  {body}: S5/S4 req/s {fmt(ratio(f'S5 {body}', f'S4 {body}', 'rps'), 3)}"
              f"  S5/S4 CPU/req {fmt(ratio(f'S5 {body}', f'S4 {body}', 'cpu_ms_per_1k'), 3)}"
              f"  S5/S3 req/s {fmt(ratio(f'S5 {body}', f'S3 {body}', 'rps'), 3)}"
              f"  S5/S1 req/s {fmt(ratio(f'S5 {body}', f'S1 {body}', 'rps'), 3)}"
              f"  S4/S1 req/s {fmt(ratio(f'S4 {body}', f'S1 {body}', 'rps'), 3)}")
    print(f"  S6/S5 req/s {fmt(ratio('S6 3B', 'S5 3B', 'rps'), 3)}")
    if "S7 3B" in results:
        qpm = [r["queries_per_miss"] for r in results["S7 3B"] if r.get("queries_per_miss")]
        if "S7 1conn" in med:
            print(f"  S7 one connection (no queueing): p50 {fmt(med['S7 1conn']['p50_ms'], 3)} ms, "
                  f"p99 {fmt(med['S7 1conn']['p99_ms'], 3)} ms")
        print(f"  S7 p99 {fmt(med['S7 3B']['p99_ms'], 3)} ms; store queries per miss "
              f"{fmt(statistics.median(qpm) if qpm else None, 3)}; misses per run "
              f"{[int(r['misses']) for r in results['S7 3B']]}")
    if mgmt:
        for label, runs in mgmt.items():
            p99 = statistics.median(r["p99_ms"] for r in runs)
            rps = statistics.median(r["rps"] for r in runs)
            print(f"  management {label}: p99 {p99:.2f} ms, {rps:.0f} req/s (4 connections)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"scenarios": results, "management": mgmt}, f, indent=1)


if __name__ == "__main__":
    main()
