"""The work list the plain programs read: which inputs, in which order, in batches of which size.

An e2ebench run of ``APP`` with ``--requests N`` processes the samples LoadGen issues (a seeded performance set
and order).  ``write_work_list`` asks LoadGen for that same sequence, in this (driver) process, and writes it
with each sample's file and locator, so that a plain program in its own process reads exactly the same bytes
in the same order without importing LoadGen or the worker.

Format (JSON)::

    {"app": "ic", "data": "/path", "batch_size": 8, "variant": "full", "options": {},
     "warmup": [ITEM, ...],          # the first batch_size samples in index order (the worker's warm-up)
     "items": [ITEM, ...]}           # LoadGen's issue order
    ITEM = {"index": 3, "path": "/path/file", "locator": null | [...]}

Locators: ``ic``, ``sr``: null; ``nlp``: [question_id, offset_bytes, length_bytes, question_index];
``rs``: [start_byte, end_byte, first_line].
"""

from __future__ import annotations

import json
from pathlib import Path


def _locator(app: str, locator) -> object:
    if locator is None:
        return None
    if app == "nlp":
        return [str(locator), getattr(locator, "offset_bytes", None), getattr(locator, "length_bytes", None),
                getattr(locator, "question_index", None)]
    if isinstance(locator, tuple):
        return list(locator)
    return locator


def work_list(app: str, data: Path, requests: int, batch_size: int, *, variant: str = "full", seed: int = 0,
              loadgen_scenario: str = "offline", options: dict | None = None) -> dict:
    from e2ebench.apps import create_app
    from e2ebench.spec import WorkerSpec
    from e2ebench.worker import _loadgen_sample_indices

    instance = create_app(app, variant=variant, options=options or {})
    refs = list(instance.samples(Path(data)))
    spec = WorkerSpec(app=app, deployment={}, requests=requests, batch_size=batch_size, seed=seed,
                      loadgen_scenario=loadgen_scenario)
    indices = _loadgen_sample_indices(spec, len(refs))

    def item(index: int) -> dict:
        ref = refs[index]
        return {"index": index, "path": ref.path, "locator": _locator(app, ref.locator)}

    return {"app": app, "data": str(data), "batch_size": batch_size, "variant": variant, "options": options or {},
            "warmup": [item(i) for i in range(min(batch_size, len(refs)))],
            "items": [item(i) for i in indices]}


def write_work_list(out: Path, *args, **kwargs) -> Path:
    out.write_text(json.dumps(work_list(*args, **kwargs)))
    return out
