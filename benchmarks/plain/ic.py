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

import json
import os
import tempfile
from pathlib import Path

from loop import parse_arguments, read_file, report, run_batches  # benchmarks/plain/loop.py: the shared timed loop


def main() -> None:
    def ic_options(parser) -> None:
        parser.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch")
        parser.add_argument("--onnx-dir", type=Path, default=Path(tempfile.gettempdir()) / "e2ebench-plain-onnx",
                            help="where the exported ONNX file is kept between runs")

    args, work, variant = parse_arguments(__doc__.split("\n\n")[0], default_batch_size=8, add=ic_options)

    import numpy as np
    import torch

    from e2ebench.apps.image_classification import preprocess_image
    from e2ebench.models.resnet import build_resnet50

    torch.set_num_threads(args.threads)
    model = build_resnet50(variant, seed=0).eval()

    if args.backend == "torch":
        def infer(pixels: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(pixels)).numpy()
    else:
        import onnxruntime

        args.onnx_dir.mkdir(parents=True, exist_ok=True)
        onnx_path = args.onnx_dir / f"resnet50-{variant}-seed0-torch{torch.__version__}.onnx"
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

    loop = run_batches(work["warmup"], work["items"], args.batch_size, read=read_file,
                       preprocess=lambda item, raw: preprocess_image(raw), collate=np.stack, infer=infer,
                       postprocess=lambda logits, batch, pre, batch_items: postprocess(logits))
    print(json.dumps(report("ic", loop, len(work["items"]), args.batch_size, args.threads, backend=args.backend,
                            variant=variant)))

if __name__ == "__main__":
    main()
