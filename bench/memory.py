#!/usr/bin/env python3
"""Memory of the host, as the kernel counts it (VmHWM: peak resident set, file-backed pages
included), with the same `peer=... key=value` result line as bench/throughput.py:

1. rest: `jobhost run` idle on an empty queue with every handler of HANDLERS_DIR loaded
   from a warm artifact cache (`jobhost compile` first) -> rest_hwm_mib (median of RUNS)
2. in flight: INFLIGHT jobs of the `sleep` test guest (each waits `ms` on the monotonic
   clock) drained by `jobhost run --drain --concurrency INFLIGHT`, so all are in flight at
   once -> inflight_hwm_mib (median of RUNS), and the drain's wall time
3. churn: N no-op jobs drained at concurrency C -> churn_per_s and churn_hwm_mib, what the
   per-slot setting costs in throughput and holds in memory

Usage: memory.py JOBHOST_BIN HANDLERS_DIR SLEEP_WASM NOOP_WASM [RUNS] [INFLIGHT] [N] [C]
JOBHOST_BENCH_RUN_ARGS adds flags to every `jobhost run` (e.g. `--pool-keep-resident-kib 0`);
JOBHOST_BENCH_LABEL names the result line.
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def hwm_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise SystemExit("no VmHWM for %d" % pid)


def rest(jobhost, handlers, extra, env, tmp):
    """Peak RSS of an idle host, read from /proc once it has said it is running."""
    err = os.path.join(tmp, "rest.log")
    db = os.path.join(tmp, "rest.db")
    with open(err, "w") as log:
        proc = subprocess.Popen([jobhost, "run", "--plugins", handlers, "--db", db] + extra,
                                stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:
        end = time.time() + 120
        while "jobhost running" not in open(err).read():
            if proc.poll() is not None or time.time() > end:
                raise SystemExit("jobhost run did not start: %s" % open(err).read())
            time.sleep(0.05)
        time.sleep(1.0)
        return hwm_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait()
        os.remove(db)


def drain(jobhost, handlers, lines, c, extra, env, tmp):
    """Enqueue `lines`, drain them at concurrency `c`: (seconds, peak RSS in KiB)."""
    db = os.path.join(tmp, "drain.db")
    jobs = os.path.join(tmp, "jobs.ndjson")
    with open(jobs, "w") as f:
        f.writelines(lines)
    subprocess.run([jobhost, "enqueue", "--db", db, "--file", jobs], check=True,
                   stdout=subprocess.DEVNULL, env=env)
    t0 = time.perf_counter()
    proc = subprocess.Popen([jobhost, "run", "--db", db, "--plugins", handlers, "--drain",
                             "--concurrency", str(c)] + extra,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0 or '"unfinished":0' not in out:
        raise SystemExit("drain failed: %s" % out)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)
    return seconds, usage.ru_maxrss


def main():
    jobhost, handlers, sleep_wasm, noop_wasm = sys.argv[1:5]
    runs = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    inflight = int(sys.argv[6]) if len(sys.argv) > 6 else 100
    n = int(sys.argv[7]) if len(sys.argv) > 7 else 50000
    c = int(sys.argv[8]) if len(sys.argv) > 8 else 4
    extra = os.environ.get("JOBHOST_BENCH_RUN_ARGS", "").split()
    env = {k: v for k, v in os.environ.items() if k != "JOBHOST_LOG"}
    tmp = tempfile.mkdtemp(prefix="jobhost-memory.")
    try:
        subprocess.run([jobhost, "compile", handlers], check=True, stdout=subprocess.DEVNULL, env=env)
        sleepers = os.path.join(tmp, "sleep")
        os.mkdir(sleepers)
        shutil.copy(sleep_wasm, os.path.join(sleepers, "sleep.wasm"))
        shutil.copy(noop_wasm, os.path.join(sleepers, "noop.wasm"))
        subprocess.run([jobhost, "compile", sleepers], check=True, stdout=subprocess.DEVNULL, env=env)
        rests, flights, flight_s, churns, churn_hwm = [], [], [], [], []
        for _ in range(runs):
            rests.append(rest(jobhost, handlers, extra, env, tmp))
            s, kib = drain(jobhost, sleepers, ['{"job":"sleep","payload":{"ms":1000}}\n'] * inflight,
                           inflight, extra, env, tmp)
            flights.append(kib)
            flight_s.append(s)
            s, kib = drain(jobhost, sleepers, ['{"job":"noop","payload":{"i":%d}}\n' % i for i in range(n)],
                           c, extra, env, tmp)
            churns.append(n / s)
            churn_hwm.append(kib)
        mib = lambda xs: statistics.median(xs) / 1024
        label = os.environ.get("JOBHOST_BENCH_LABEL", "jobhost")
        print("peer=%s rest_hwm_mib=%.1f inflight=%d inflight_hwm_mib=%.1f inflight_drain_s=%.2f "
              "churn_per_s=%.0f churn_hwm_mib=%.1f runs=%d"
              % (label, mib(rests), inflight, mib(flights), statistics.median(flight_s),
                 statistics.median(churns), mib(churn_hwm), runs))
        sys.stdout.flush()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
