"""A plain recommendation program: what a user would write without e2ebench.

    python benchmarks/plain/rs.py --work-list WORK.json --batch-size 16 --threads 2 [--variant full|tiny]

Everything runs on the main thread: read the request's byte range of the Criteo TSV file (``rows_per_request``
rows, one user's candidate list) -> parse the 40 columns, log(1+x) of the dense features, hash the categorical
ones into the embedding tables -> the batch's rows concatenated -> DLRM (the project's model class, seeded
random weights) under ``torch.inference_mode`` -> sigmoid, each request's rows ranked by click-through rate and
the ``top_k`` kept.  No LoadGen, no e2ebench worker, no phase clocks beyond four sums, no cgroups; the thread
count is set the way a user would (``torch.set_num_threads``).

Shared with e2ebench (so that the work per request is the same): the model class and its seeded weights
(``build_dlrm(variant, max_rows_per_table, seed)``, after ``torch.manual_seed(seed)`` as the app does), the
table sizes (``dlrm_config``), the byte-range reader and the row parser (``criteo.read_byte_range``,
``criteo.parse_rows``).  The app's option table (``Recommendation.options``, a class attribute) gives the
defaults of the work list's "options" (``rows_per_request``, ``top_k``, ``max_rows_per_table``, ``seed``).  Not
shared: the app instance and its methods; what they do is written out below (collate: dense rows concatenated,
sparse indices concatenated along rows, labels, request offsets; infer: the model, logits as float on the CPU;
postprocess: the app's answer dict with the top_k rows, every row's CTR and label).  Bad inputs are not caught
(e2ebench counts them as failed requests).

The work list (``benchmarks/plain/worklist.py``) names the byte ranges in the order LoadGen issues them in an
e2ebench run of the same scenario, so both programs do the same work.  The warm-up batch of the list runs first
through all phases; then the timed loop.  Prints one JSON object: ``wall_s`` (first read to last answer),
``throughput_sps`` (requests, not rows, per second), ``phases_s`` {io, pre, infer, post}, ``rows`` (rows of the
timed loop); ``--print-answers`` adds every answer (for checks).
"""

from __future__ import annotations

import json
from pathlib import Path

from loop import parse_arguments, work_options, report, run_batches  # benchmarks/plain/loop.py: the shared timed loop


def main() -> None:
    args, work, variant = parse_arguments(__doc__.split("\n\n")[0], default_batch_size=16)

    import numpy as np
    import torch

    from e2ebench.apps.recommendation import Recommendation
    from e2ebench.datasets.criteo import parse_rows, read_byte_range
    from e2ebench.models.dlrm import build_dlrm, dlrm_config

    options = work_options(work, "rs", Recommendation.options)
    seed = int(options["seed"])
    max_rows_per_table = int(options["max_rows_per_table"])
    rows_per_request = int(options["rows_per_request"])
    top_k = int(options["top_k"])

    torch.set_num_threads(args.threads)
    table_rows = np.asarray(dlrm_config(variant, max_rows_per_table).table_rows, dtype=np.uint64)
    torch.manual_seed(seed)
    model = build_dlrm(variant, max_rows_per_table, seed=seed).eval()

    def read(item: dict) -> bytes:
        start_byte, end_byte, first_line = item["locator"]
        return read_byte_range(Path(item["path"]), start_byte, end_byte)

    def preprocess(item: dict, raw: bytes):
        parsed = parse_rows(raw, table_rows, first_line=item["locator"][2], expected_rows=rows_per_request)
        return torch.from_numpy(parsed.dense), torch.from_numpy(parsed.sparse), parsed.labels

    def collate(rows: list):
        offsets = [0]
        for dense, _, _ in rows:
            offsets.append(offsets[-1] + int(dense.shape[0]))
        return (torch.cat([dense for dense, _, _ in rows], dim=0), torch.cat([sparse for _, sparse, _ in rows], dim=1),
                np.concatenate([labels for _, _, labels in rows]), offsets)

    def infer(dense, sparse):
        with torch.inference_mode():
            return model(dense, sparse).float().cpu()

    def postprocess(logits, labels, offsets: list[int], batch_items: list[dict]) -> list[dict]:
        ctr = torch.sigmoid(logits).numpy()
        answers = []
        for i, item in enumerate(batch_items):
            first_line = item["locator"][2]
            rows = slice(offsets[i], offsets[i + 1])
            request_ctr = ctr[rows]
            ranked = np.argsort(-request_ctr, kind="stable")[:top_k]
            answers.append({"file": item["path"], "first_line": first_line,
                            "top_k": [[first_line + int(row), float(request_ctr[row])] for row in ranked],
                            "ctr": request_ctr.tolist(), "label": labels[rows].tolist()})
        return answers

    loop = run_batches(work["warmup"], work["items"], args.batch_size, read=read, preprocess=preprocess,
                       collate=collate, infer=lambda batch: infer(batch[0], batch[1]),
                       postprocess=lambda logits, batch, pre, batch_items: postprocess(logits, batch[2], batch[3],
                                                                                        batch_items))
    result = report("rs", loop, len(work["items"]), args.batch_size, args.threads, variant=variant,
                    rows=sum(len(a["ctr"]) for a in loop["answers"]), rows_per_request=rows_per_request)
    if args.print_answers:
        result["answers"] = loop["answers"]
    print(json.dumps(result))

if __name__ == "__main__":
    main()
