"""What the request batcher's queue costs: queue.Queue (what MicroBatcher uses since it replaced SimpleQueue, whose
get(timeout) could hang a request on CPython 3.11) against SimpleQueue, with the model call replaced by a fixed sleep.

Client threads submit requests through `lungct.inference.batching.MicroBatcher` and wait for each answer; the model
call sleeps `--model-ms` per batch, so what differs between the two queues is the queue's own locking. One call
thread only: with one consumer SimpleQueue cannot hit the hang, so both queues finish. Reported per queue: requests
per second and the mean time per request beyond the model's share, median of `--repeats` rounds.

    .venv/bin/python benchmarks/batcher_queue.py [--requests 4000] [--clients 16] [--model-ms 2]
    -> benchmarks/results/batcher_queue.json
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import threading
import time
from pathlib import Path

from lungct.inference import batching

ROOT = Path(__file__).resolve().parents[1]


def one_round(queue_class: type, requests: int, clients: int, model_ms: float) -> dict:
    """Requests per second and batches through a batcher built on `queue_class`."""

    def model(batch):
        time.sleep(model_ms / 1000)
        return list(batch)

    original = batching.queue.Queue
    batching.queue.Queue = queue_class  # the batcher builds its queue as queue.Queue()
    try:
        batcher = batching.MicroBatcher(model, max_batch=16, max_wait_ms=2.0, calls=1)
    finally:
        batching.queue.Queue = original
    per_client = requests // clients

    def client(k: int) -> None:
        for i in range(per_client):
            assert batcher.submit((k, i)).result(timeout=30) == (k, i)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    batcher.close()
    done = per_client * clients
    return {"requests_per_s": done / seconds, "mean_batch": batcher.items / batcher.batches, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--model-ms", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "batcher_queue.json")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    results = {}
    for name, cls in (("Queue", queue.Queue), ("SimpleQueue", queue.SimpleQueue)):
        rounds = [one_round(cls, args.requests, args.clients, args.model_ms) for _ in range(args.repeats)]
        rps = statistics.median(r["requests_per_s"] for r in rounds)
        batch = statistics.median(r["mean_batch"] for r in rounds)
        # time per request beyond its share of the model's sleep (one call thread: batches run one after another)
        overhead_us = (1 / rps - args.model_ms / 1000 / batch) * 1e6
        results[name] = {
            "requests_per_s": round(rps, 1),
            "mean_batch": round(batch, 2),
            "overhead_us_per_request": round(overhead_us, 1),
            "requests_per_s_per_round": [round(r["requests_per_s"], 1) for r in rounds],
        }
        print(name, results[name], flush=True)
    out = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
        "results": results,
    }
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
