"""Shared pieces of the benches that run several gateways on one PostgreSQL database
(bench/revocation_lag.py, bench/soak_changes.py): each gateway's config, a kept-alive client,
and a percentile."""

import hashlib
import http.client

# The catch-all route every such bench needs.
CATCH_ALL = """[[routes]]
path = "/v0/inboxes/{inbox_id}"
upstream = "inbox"
"""


def gateway_config(d, name, port, mport, upstream, url, token, store_extra="", routes=CATCH_ALL):
    """One gateway of the cluster: its ports, pid file and upgrade socket in `d`, the shared
    database `url`, the management `token` (hashed here), `store_extra` lines for [store] and
    the `routes` to the upstream on `upstream`."""
    token_hash = hashlib.sha256(token.encode()).hexdigest()
    return f"""
[server]
listen = "127.0.0.1:{port}"
threads = 1
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1
pid_file = "{d}/{name}.pid"
upgrade_sock = "{d}/{name}.sock"
[metrics]
listen = "127.0.0.1:{mport}"
[store]
kind = "postgres"
url = "{url}"
pool_size = 4
{store_extra}
[logging]
access_log = false
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
addresses = ["127.0.0.1:{upstream}"]
health_check = {{ path = "/healthz", interval_seconds = 1 }}
{routes}"""


class Client:
    """One kept-alive connection; after a failed call it reconnects and raises."""

    def __init__(self, port, timeout=10):
        self.port, self.timeout = port, timeout
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def call(self, method, path, auth, body=None):
        headers = {"Authorization": f"Bearer {auth}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            self.c.request(method, path, body=body, headers=headers)
            r = self.c.getresponse()
            return r.status, r.read()
        except (http.client.HTTPException, OSError):
            self.c.close()
            self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            raise


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
