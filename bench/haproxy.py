"""The HAProxy configs the benchmarks compare against: plain proxying (S2) and key auth done
in HAProxy's config alone (S3: sha2(256) of the bearer token looked up in a map of key hashes,
inbox checked against the path, credential stripped, identity added). One place, so run.py,
tls.py and cost.py measure the same HAProxy."""

import hashlib


def _common(upstream):
    return f"""
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  http-reuse always
backend up
  server s1 127.0.0.1:{upstream}
"""


def plain(bind, upstream):
    """S2: `bind` (HAProxy's bind arguments, e.g. "127.0.0.1:19002") proxied to the upstream."""
    return _common(upstream) + f"""
frontend f
  bind {bind}
  default_backend up
"""


def write_keys_map(path, pairs):
    """The map S3 looks keys up in: the SHA-256 (hex) of each key, then its inbox."""
    with open(path, "w") as m:
        for key, inbox in pairs:
            m.write(f"{hashlib.sha256(key.encode()).hexdigest()} {inbox}\n")


def key_auth(bind, upstream, keys_map):
    """S3 on `bind` (add "ssl crt FILE alpn h2,http/1.1" for TLS), with the map at `keys_map`."""
    return _common(upstream) + f"""
frontend f
  bind {bind}
  http-request set-var(txn.key) req.hdr(authorization),regsub(^[Bb][Ee][Aa][Rr][Ee][Rr]\\ ,)
  http-request set-var(txn.inbox) var(txn.key),sha2(256),hex,lower,map({keys_map})
  http-request deny deny_status 401 unless {{ var(txn.inbox) -m found }}
  http-request set-var(txn.pathinbox) path,field(4,/)
  http-request deny deny_status 403 unless {{ var(txn.inbox),strcmp(txn.pathinbox) eq 0 }}
  http-request del-header authorization
  http-request del-header x-agentry-inbox-id
  http-request set-header x-agentry-inbox-id %[var(txn.inbox)]
  default_backend up
"""
