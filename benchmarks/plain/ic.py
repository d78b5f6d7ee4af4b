"""A plain image-classification program: what a user would write without e2ebench.

    python benchmarks/plain/ic.py --work-list WORK.json --batch-size 8 --threads 2 [--backend torch|onnxruntime]

Everything runs on the main thread: read the JPEG -> decode/resize/crop/normalise -> stack a batch -> ResNet50-v1.5
(the project's model class, seeded random weights, or the same network exported to ONNX and run by ONNX Runtime
with its defaults plus ``intra_op_num_threads``) -> softmax/top-5 with torch and one answer dict per image (as the app's post-processing).  No LoadGen, no e2ebench worker, no phase clocks
beyond four sums, no cgroups; the thread count is set the way a user would (``torch.set_num_threads``).

The work list (``benchmarks/plain/worklist.py``) names the files in the order LoadGen issues them in an e2ebench
run of the same scenario, so both programs do the same work.  The warm-up batch of the list (one full batch, the
worker's warm-up) runs first; then the timed loop.  Prints one JSON object: ``wall_s`` (first read to last answer), ``throughput_sps``,
``phases_s`` {io, pre, infer, post}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-list", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch")
    parser.add_argument("--variant", default="full")
    parser.add_argument("--onnx-dir", type=Path, default=Path(tempfile.gettempdir()) / "e2ebench-plain-onnx",
                        help="where the exported ONNX file is kept between runs")
    args = parser.parse_args()

    import numpy as np
    import torch

    from e2ebench.apps.image_classification import preprocess_image
    from e2ebench.models.resnet import build_resnet50

    torch.set_num_threads(args.threads)
    work = json.loads(args.work_list.read_text())
    paths = [item["path"] for item in work["items"]]
    warmup_paths = [item["path"] for item in work["warmup"]]
    model = build_resnet50(args.variant, seed=0).eval()

    if args.backend == "torch":
        def infer(pixels: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(pixels)).numpy()
    else:
        import onnxruntime

        args.onnx_dir.mkdir(parents=True, exist_ok=True)
        onnx_path = args.onnx_dir / f"resnet50-{args.variant}-seed0-torch{torch.__version__}.onnx"
        if not onnx_path.exists():
            partial = onnx_path.with_suffix(f".{os.getpid()}.partial")
            torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(partial), input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=17,
                              dynamo=False)
            os.replace(partial, onnx_path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

        def infer(pixels: np.ndarray) -> np.ndarray:
            return session.run(["y"], {"x": pixels})[0]

    class_names = [f"class {i}" for i in range(1000)]

    def postprocess(logits: np.ndarray) -> list:
        """What the app's post-processing does: torch softmax and top-5 on the logits, one answer dict per image."""
        probabilities = torch.softmax(torch.from_numpy(logits).float(), dim=1)
        top = torch.topk(probabilities, k=5, dim=1)
        return [{"top5": [[c, p, class_names[c]] for c, p in zip(ids, values)]}
                for ids, values in zip(top.indices.tolist(), top.values.tolist())]

    totals = {"io": 0.0, "pre": 0.0, "infer": 0.0, "post": 0.0}

    def one_batch(batch_paths: list[str]) -> None:
        pixels = []
        for path in batch_paths:
            a = time.perf_counter()
            with open(path, "rb") as f:
                raw = f.read()
            b = time.perf_counter()
            pixels.append(preprocess_image(raw))
            totals["io"] += b - a
            totals["pre"] += time.perf_counter() - b
        a = time.perf_counter()
        stacked = np.stack(pixels)
        b = time.perf_counter()
        logits = infer(stacked)
        c = time.perf_counter()
        postprocess(logits)
        d = time.perf_counter()
        totals["pre"] += b - a
        totals["infer"] += c - b
        totals["post"] += d - c

    b = args.batch_size
    t = time.perf_counter()
    one_batch(warmup_paths)                            # warm-up: one full batch, as the worker does
    warmup_s = time.perf_counter() - t
    totals = dict.fromkeys(totals, 0.0)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    for i in range(0, len(paths), b):
        one_batch(paths[i:i + b])
    wall_s = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    counters = {"user_cpu_s": after.ru_utime - usage.ru_utime, "system_cpu_s": after.ru_stime - usage.ru_stime,
                "minor_page_faults": after.ru_minflt - usage.ru_minflt,
                "involuntary_ctx_switches": after.ru_nivcsw - usage.ru_nivcsw}
    print(json.dumps({"program": "plain", "app": "ic", "backend": args.backend, "requests": len(paths),
                      "batch_size": b, "threads": args.threads, "wall_s": wall_s,
                      "throughput_sps": len(paths) / wall_s, "phases_s": totals, "warmup_s": warmup_s, "counters": counters,
                      "pid": os.getpid(), "python": sys.version.split()[0]}))


if __name__ == "__main__":
    main()
