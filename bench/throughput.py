#!/usr/bin/env python3
"""Throughput benchmark of jobhost on its embedded SQLite queue, with the same steps and the
same `peer=... key=value` result line as ../shared/bench/peers (so median.py works on it):

1. enqueue N no-op jobs in bulk (`jobhost enqueue --file`, one transaction) -> enqueue_per_s
2. drain: launch `jobhost run --drain` (concurrency C) and time until it exits with all N
   done -> process_per_s = N / drain_s; peak RSS of that process -> worker_rss_mb
3. latency probe: with `jobhost run --http` idle, send PROBE jobs one at a time from one
   client on one kept-open connection: `POST /jobs?wait_ms=...`, which answers once the
   result is recorded -> p50/p99 enqueue-to-done, in ms. JOBHOST_BENCH_PROBE=poll probes
   with two calls instead (POST /jobs, then GET /jobs/{id}?wait_ms=...).

Usage: throughput.py JOBHOST_BIN HANDLERS_DIR [N] [C] [PROBE]
JOBHOST_BENCH_DB puts the queue elsewhere (a PostgreSQL URL).
JOBHOST_BENCH_RUN_ARGS adds flags to the drain's `jobhost run` (e.g. `--metrics 127.0.0.1:0`
to measure it with metrics on); JOBHOST_BENCH_LABEL names the result line's peer.
Durability: WAL with synchronous=NORMAL (a commit survives a crash of the process; the last
commits before a power loss may not).
"""
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit("jobhost run exited early: %s" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise SystemExit("port %d never opened" % port)


def main():
    jobhost, handlers = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 100000
    c = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    probe = int(sys.argv[5]) if len(sys.argv) > 5 else 200
    tmp = tempfile.mkdtemp(prefix="jobhost-bench.")
    # JOBHOST_BENCH_DB: another queue, e.g. a PostgreSQL URL (bench/postgres/run.sh).
    db = os.environ.get("JOBHOST_BENCH_DB") or os.path.join(tmp, "bench.db")
    # jobhost's default logging (a line per job at info for `run`), to a log file.
    env = {k: v for k, v in os.environ.items() if k != "JOBHOST_LOG"}
    log = open(os.path.join(tmp, "run.log"), "w")
    # Compile once so neither timed step pays for it.
    subprocess.run([jobhost, "compile", handlers], check=True, stdout=subprocess.DEVNULL, env=env)

    jobs = os.path.join(tmp, "jobs.ndjson")
    with open(jobs, "w") as f:
        for i in range(n):
            f.write('{"job":"noop","payload":{"i":%d}}\n' % i)
    t0 = time.perf_counter()
    subprocess.run([jobhost, "enqueue", "--db", db, "--file", jobs], check=True, stdout=subprocess.DEVNULL, env=env)
    enqueue_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    extra = os.environ.get("JOBHOST_BENCH_RUN_ARGS", "").split()
    drain = subprocess.Popen([jobhost, "run", "--db", db, "--plugins", handlers, "--drain", "--concurrency", str(c)] + extra,
                             stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    stdout = drain.stdout.read()
    _, status, usage = os.wait4(drain.pid, 0)
    drain_s = time.perf_counter() - t0
    drain.returncode = os.waitstatus_to_exitcode(status)
    if drain.returncode != 0:
        raise SystemExit("jobhost run --drain failed: %s" % drain.returncode)
    worker_kb = usage.ru_maxrss  # this process alone, not the enqueuer
    summary = json.loads(stdout.strip().splitlines()[-1])
    if summary["done"] != n:
        raise SystemExit("only %s of %d jobs done: %s" % (summary["done"], n, summary))

    port = free_port()
    proc = subprocess.Popen([jobhost, "run", "--db", db, "--plugins", handlers, "--concurrency", str(c),
                             "--http", "127.0.0.1:%d" % port], stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:
        wait_port(port, proc)
        # One client on one kept-open connection, as the peers' probes hold theirs: the POST
        # that enqueues and answers once the result is recorded (or, with
        # JOBHOST_BENCH_PROBE=poll, the POST, then the long-poll GET).
        two_calls = os.environ.get("JOBHOST_BENCH_PROBE") == "poll"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=40)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def call(method, path, body=None):
            headers = {"content-type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return json.loads(response.read())

        # Warm the connection and the host's first-use paths (the first claim, settle and
        # retention prune of a new process) before timing, as the peers' probes run in the
        # process that has just drained.
        call("GET", "/healthz")
        for i in range(20):
            call("POST", "/jobs?wait_ms=10000", json.dumps({"job": "noop", "payload": {"warm": i}}))
        lat = []
        for i in range(probe):
            t = time.perf_counter()
            body = json.dumps({"job": "noop", "payload": {"probe": i}})
            if two_calls:
                job = call("POST", "/jobs", body)
                record = call("GET", "/jobs/%s?wait_ms=10000" % job["id"])
            else:
                record = call("POST", "/jobs?wait_ms=10000", body)
            lat.append((time.perf_counter() - t) * 1000)
            if record["state"] != "done":
                raise SystemExit("probe job not done: %s" % record)
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lat.sort()

    def pct(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))]

    print(" ".join([
        "peer=%s" % os.environ.get("JOBHOST_BENCH_LABEL", "jobhost-sqlite-wal-normal"), "n=%d" % n, "c=%d" % c,
        "enqueue_per_s=%d" % round(n / enqueue_s),
        "process_per_s=%d" % round(n / drain_s),
        "enqueue_s=%.3f" % enqueue_s, "drain_s=%.3f" % drain_s,
        "p50_latency_ms=%.3f" % pct(0.5), "p99_latency_ms=%.3f" % pct(0.99),
        "rss_mb=%.1f" % (worker_kb / 1024), "worker_rss_mb=%.1f" % (worker_kb / 1024),
        "server_rss_mb=0.0",
    ]), flush=True)


if __name__ == "__main__":
    main()
