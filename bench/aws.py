"""The AWS side, measured in one run on loopback (moto and cargo-lambda's emulator):

- host CPU time per message: `jobhost run --drain` over N no-op jobs on SQS (moto) and on
  the embedded SQLite queue, the host process's user+system CPU divided by N. moto is slow
  and runs in another process, so the SQS figure is the host's own cost, not throughput.
- Lambda cold start: the binary started as a Lambda runtime over 10 handlers packaged by
  `jobhost package` (precompiled, read-only), time from exec to "runtime ready" (as logged,
  from main) and to the first answered invocation; RUNS runs, medians.

Usage: python bench/aws.py JOBHOST FIXTURES_DIR [N] [RUNS] [--latency-only]   (the tools
       venv's python: it needs boto3 and moto; `bench/aws.sh` runs it). --latency-only runs
       just the idle-queue latency (`bench/sqs-latency.sh`).
"""

import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import boto3

LATENCY_ONLY = "--latency-only" in sys.argv
ARGS = [a for a in sys.argv if a != "--latency-only"]
JOBHOST, FIXTURES = ARGS[1], ARGS[2]
N = int(ARGS[3]) if len(ARGS) > 3 else 2000
RUNS = int(ARGS[4]) if len(ARGS) > 4 else 15
TOOLS = os.path.dirname(os.path.dirname(sys.executable))
TEN = ["noop", "echo", "permanent", "transient", "busy", "cpu", "clock", "spin", "panics", "huge_output"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port):
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def cpu_of(args, env):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, elapsed, json.loads(out.stdout.strip().splitlines()[-1])


def idle_latency(sqs, env, handlers, jobs=20):
    """One job at a time on an idle queue, the host long-polling with its defaults (20 s
    waits): time from SendMessage to the message deleted (done), as seen by polling the
    queue's counts every 2 ms. Medians of `jobs`."""
    dlq = sqs.create_queue(QueueName="idle-dlq")["QueueUrl"]
    url = sqs.create_queue(QueueName="idle", Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
    host = subprocess.Popen([JOBHOST, "run", "--queue", url, "--dlq-url", dlq, "--plugins", handlers],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    latencies = []
    try:
        time.sleep(2)  # started and long-polling
        for _ in range(jobs):
            sent = time.perf_counter()
            sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"job": "noop", "payload": {}}))
            while True:
                attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
                if all(attrs[n] == "0" for n in names):
                    break
                if time.perf_counter() - sent > 60:
                    raise SystemExit("a job on the idle queue was not done within 60 s")
                time.sleep(0.002)
            latencies.append((time.perf_counter() - sent) * 1000)
            time.sleep(0.3)  # idle again between jobs
    finally:
        host.kill()
        host.wait()
    print(f"sqs idle send_to_done_ms_median={statistics.median(latencies):.1f} "
          f"max={max(latencies):.1f} jobs={jobs} (long polls of 20 s, counts polled every 2 ms)")


def main():
    moto_port, lambda_port = free_port(), free_port()
    moto = subprocess.Popen([f"{TOOLS}/bin/moto_server", "-H", "127.0.0.1", "-p", str(moto_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    emulator = subprocess.Popen([f"{TOOLS}/bin/cargo-lambda", "lambda", "watch", "--only-lambda-apis",
                                 "--invoke-address", "127.0.0.1", "--invoke-port", str(lambda_port),
                                 "--manifest-path", "host/Cargo.toml"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = tempfile.mkdtemp()
    try:
        wait_port(moto_port)
        wait_port(lambda_port)
        endpoint = f"http://127.0.0.1:{moto_port}"
        env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                   AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true", AWS_ENDPOINT_URL=endpoint,
                   JOBHOST_LOG="warn")
        sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="bench", aws_secret_access_key="bench")
        handlers = os.path.join(work, "noop")
        os.makedirs(handlers)
        shutil.copy(f"{FIXTURES}/noop.wasm", handlers)
        subprocess.run([JOBHOST, "compile", handlers], env=env, check=True, capture_output=True)
        if LATENCY_ONLY:
            idle_latency(sqs, env, handlers)
            return

        # SQS: N no-op jobs sent in batches of 10, drained by the host.
        dlq = sqs.create_queue(QueueName="bench-dlq")["QueueUrl"]
        url = sqs.create_queue(QueueName="bench", Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
        body = json.dumps({"job": "noop", "payload": {"user": 42}})
        for i in range(0, N, 10):
            sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(j), "MessageBody": body} for j in range(10)])
        cpu, elapsed, summary = cpu_of([JOBHOST, "run", "--drain", "--queue", url, "--dlq-url", dlq,
                                        "--sqs-wait", "1s", "--concurrency", "4", "--plugins", handlers], env)
        assert summary["done"] >= N, summary
        sqs_us = cpu / N * 1e6

        # The embedded queue, same jobs, same measure.
        db = os.path.join(work, "q.db")
        lines = os.path.join(work, "jobs.ndjson")
        with open(lines, "w") as f:
            for _ in range(N):
                f.write(body + "\n")
        subprocess.run([JOBHOST, "enqueue", "--db", db, "--file", lines], env=env, check=True, capture_output=True)
        cpu, _, summary = cpu_of([JOBHOST, "run", "--drain", "--db", db, "--concurrency", "4", "--plugins", handlers], env)
        assert summary["done"] == N, summary
        sqlite_us = cpu / N * 1e6
        print(f"sqs host_cpu_us_per_msg={sqs_us:.1f} sqlite host_cpu_us_per_msg={sqlite_us:.1f} "
              f"ratio={sqs_us / sqlite_us:.2f} (N={N}, SQS drain wall {elapsed:.1f}s: moto-bound)")
        idle_latency(sqs, env, handlers)

        # Lambda: 10 handlers packaged for this machine, read-only, as on Lambda.
        ten = os.path.join(work, "ten")
        os.makedirs(ten)
        for name in TEN:
            shutil.copy(f"{FIXTURES}/{name}.wasm", ten)
        stub = os.path.join(work, "stub")
        open(stub, "w").write("#!/bin/sh\n")
        dist = os.path.join(work, "dist")
        subprocess.run([JOBHOST, "package", "--plugins", ten, "--out", dist, "--bootstrap", stub],
                       env=env, check=True, capture_output=True)
        unpacked = os.path.join(work, "unpacked")
        shutil.unpack_archive(f"{dist}/handlers-x86_64.zip", unpacked, "zip")
        subprocess.run(["chmod", "-R", "a-w", unpacked], check=True)
        lambda_env = dict(env, AWS_LAMBDA_RUNTIME_API=f"http://127.0.0.1:{lambda_port}/.rt",
                          AWS_LAMBDA_FUNCTION_NAME="_", AWS_LAMBDA_FUNCTION_MEMORY_SIZE="512",
                          AWS_LAMBDA_FUNCTION_VERSION="1", JOBHOST_PLUGINS=f"{unpacked}/handlers",
                          JOBHOST_LOG="info", JOBHOST_LOG_FORMAT="json")
        lambda_env.pop("JOBHOST_CACHE_DIR", None)
        init_ms, ready_ms, first_ms = [], [], []
        for _ in range(RUNS):
            started = time.perf_counter()
            proc = subprocess.Popen([JOBHOST], env=lambda_env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
            for line in proc.stderr:
                if "runtime ready" in line:
                    ready_ms.append((time.perf_counter() - started) * 1000)
                    fields = json.loads(line)["fields"]
                    assert fields["precompiled"] == 10, fields
                    init_ms.append(fields["init_ms"])
                    break
            request = urllib.request.Request(
                f"http://127.0.0.1:{lambda_port}/2015-03-31/functions/_/invocations",
                data=json.dumps({"job": "noop", "payload": {}}).encode(), method="POST")
            answer = json.loads(urllib.request.urlopen(request).read())
            assert answer["outcome"] == "done", answer
            first_ms.append((time.perf_counter() - started) * 1000)
            proc.kill()
            proc.wait()
        subprocess.run(["chmod", "-R", "u+w", unpacked])
        print(f"lambda handlers=10 init_ms_median={statistics.median(init_ms):.1f} "
              f"exec_to_ready_ms_median={statistics.median(ready_ms):.1f} "
              f"exec_to_first_answer_ms_median={statistics.median(first_ms):.1f} runs={RUNS}")
    finally:
        for p in (moto, emulator):
            p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


main()
