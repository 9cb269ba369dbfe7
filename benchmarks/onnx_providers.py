"""ONNX Runtime execution providers and graph optimisation levels, side by side, on the same graphs.

Needs only numpy and an onnxruntime build (not lungct), so it also runs under another interpreter whose
onnxruntime has other providers, e.g. `onnxruntime-openvino`, which replaces the `onnxruntime` package and
therefore lives in its own environment:

    uv venv /tmp/ov && uv pip install --python /tmp/ov/bin/python onnxruntime-openvino numpy
    /tmp/ov/bin/python benchmarks/onnx_providers.py RUN/model.onnx RUN/model.int8.onnx --output out.json

benchmarks/serve.py runs it for the CPU provider, and under --openvino-python for OpenVINO. Each figure is
images per second over a fixed time on random inputs (speed does not depend on the pixel values); the
max |probability difference| to the CPU provider at full optimisation says whether a provider computes the
same thing.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnxruntime as ort

LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session(path: str, provider: str, level: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    provider_options = [{"num_of_threads": threads}] if provider == "OpenVINOExecutionProvider" else None
    return ort.InferenceSession(path, options, providers=[provider], provider_options=provider_options)


def rate(sess: ort.InferenceSession, x: np.ndarray, seconds: float) -> float:
    sess.run(["probabilities"], {"input": x})
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < 2:
        sess.run(["probabilities"], {"input": x})
        done += 1
    return done * len(x) / (time.perf_counter() - start)


def measure(
    paths: list[str], providers: list[str], levels: list[str], threads: list[int], batches: list[int], seconds: float
) -> dict:
    available = ort.get_available_providers()
    out: dict = {"onnxruntime": ort.__version__, "available_providers": available, "models": {}}
    rng = np.random.default_rng(0)
    for path in paths:
        size = session(path, "CPUExecutionProvider", "all", 1).get_inputs()[0].shape[-1]
        probe = rng.standard_normal((8, 3, size, size), dtype=np.float32)
        reference = session(path, "CPUExecutionProvider", "all", 1).run(["probabilities"], {"input": probe})[0]
        rows = []
        for provider in (p for p in providers if p in available):
            for level in levels:
                for n in threads:
                    sess = session(path, provider, level, n)
                    diff = float(np.abs(sess.run(["probabilities"], {"input": probe})[0] - reference).max())
                    row = {"provider": provider, "optimization": level, "threads": n, "max_prob_diff": diff}
                    for b in batches:
                        x = rng.standard_normal((b, 3, size, size), dtype=np.float32)
                        row[f"batch_{b}_images_per_s"] = round(rate(sess, x, seconds), 1)
                    rows.append(row)
        out["models"][path] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="ONNX graphs with input `input` and output `probabilities`")
    parser.add_argument("--providers", default="CPUExecutionProvider,OpenVINOExecutionProvider")
    parser.add_argument("--levels", default="basic,extended,all")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--output", help="write the JSON here as well as to stdout")
    args = parser.parse_args()
    result = measure(
        args.models,
        args.providers.split(","),
        args.levels.split(","),
        [int(t) for t in args.threads.split(",")],
        [int(b) for b in args.batches.split(",")],
        args.seconds,
    )
    text = json.dumps(result, indent=2)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
