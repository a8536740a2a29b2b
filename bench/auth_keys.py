"""What wrong API keys cost the server: 10,000 of them beside a floor of 401s without any
credential, in one run (issue 24: brute force costs no more than cheap requests).

    python bench/auth_keys.py [--db sqlite|postgresql] [--requests 10000] [--rounds 3]

One gunicorn gevent worker (CPU 0) with QUAERO_API_TOKEN set, on a fresh database with one
real key. From one keep-alive connection (CPU 1), one request at a time, ``GET /api/jobs``:
- ``none``:      no Authorization header (401; the floor: no credential to look at);
- ``wrong-key``: a random key of the right shape, ``qk_<16 hex>_<43 chars>`` (401 after one
  primary-key lookup of its id: no row);
- ``wrong-secret``: the real key's id with a wrong secret (401 after the lookup and one
  SHA-256 + compare_digest);
- ``garbage``:   a Bearer value that is no key (401 without touching the database);
- ``good-key``:  the real key (200, for scale: it also lists the jobs).
Printed per kind: requests/s and the worker's CPU per request (utime+stime from /proc), the
median of ``--rounds`` rounds, and each beside the floor. Keys are checked with SHA-256 (a
256-bit secret needs no slow KDF): a wrong key must cost about what a 401 without one does.
"""
import argparse
import http.client
import json
import os
import secrets
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import Server, cpu_seconds, median, revision, temp_database  # noqa: E402

TOKEN = "bench-" + "t0k3n" * 6


def run(conn, pid, headers_of, n):
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    statuses = {}
    for i in range(n):
        conn.request("GET", "/api/jobs?limit=1", headers=headers_of(i))
        r = conn.getresponse()
        r.read()
        statuses[r.status] = statuses.get(r.status, 0) + 1
    wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    return n / wall, cpu / n * 1e6, statuses


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {1})
    with temp_database(args.db) as url:
        srv = Server(url, cpus={0}, env={"QUAERO_API_TOKEN": TOKEN}).start()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
            conn.request("POST", "/api/keys", body=json.dumps({"name": "bench", "scopes": ["read"]}),
                         headers={"Authorization": f"Bearer {TOKEN}",
                                  "Content-Type": "application/json"})
            key = json.loads(conn.getresponse().read())["key"]
            key_id = key.split("_")[1]
            wrong = [f"qk_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
                     for _ in range(args.requests)]
            kinds = {
                "none": lambda i: {},
                "wrong-key": lambda i: {"Authorization": f"Bearer {wrong[i]}"},
                "wrong-secret": lambda i: {"Authorization":
                                           f"Bearer qk_{key_id}_{secrets.token_urlsafe(32)}"},
                "garbage": lambda i: {"Authorization": f"Bearer {wrong[i][3:]}"},
                "good-key": lambda i: {"Authorization": f"Bearer {key}"},
            }
            pid = srv.worker_pid()
            run(conn, pid, kinds["none"], 500)  # warm up
            results = {k: [] for k in kinds}
            for _ in range(args.rounds):
                for kind, headers_of in kinds.items():
                    results[kind].append(run(conn, pid, headers_of, args.requests))
            print(f"bench/auth_keys.py  db={args.db}  {args.requests} requests x {args.rounds} "
                  f"rounds, one gevent worker  commit {revision()}")
            floor_rps = median([r[0] for r in results["none"]])
            floor_cpu = median([r[1] for r in results["none"]])
            print(f"{'kind':14} {'req/s':>8} {'CPU us/req':>11} {'vs floor (CPU)':>15}  statuses")
            for kind, rows in results.items():
                rps, cpu = median([r[0] for r in rows]), median([r[1] for r in rows])
                print(f"{kind:14} {rps:8.0f} {cpu:11.0f} {cpu / floor_cpu:14.2f}x  "
                      f"{rows[-1][2]}")
            print(f"floor: 401 without credentials, {floor_rps:.0f} req/s")
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
