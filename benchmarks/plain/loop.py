"""The timed loop every plain program shares: batches through read → pre-process → collate → infer → post-process
on the main thread, four sums of ``time.perf_counter`` and nothing else.  Standard library only (no e2ebench)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable


def parse_arguments(description: str, default_batch_size: int,
                    add: Callable[[argparse.ArgumentParser], None] | None = None) -> tuple[argparse.Namespace, dict, str]:
    """The plain programs' common command line: ``--work-list``, ``--batch-size``, ``--threads``, ``--variant``
    (default: the work list's; a different one is refused), ``--print-answers``.  Returns (args, work list, variant)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--work-list", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=default_batch_size)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", choices=("full", "tiny"), default=None, help="model size (default: the work list's)")
    parser.add_argument("--print-answers", action="store_true", help="add the answers to the JSON (checks)")
    if add is not None:
        add(parser)
    args = parser.parse_args()
    work = json.loads(args.work_list.read_text())
    variant = args.variant or work.get("variant", "full")
    if variant != work.get("variant", variant):
        parser.error(f"--variant {variant} but the work list was made for {work['variant']}")
    return args, work, variant


def work_options(work: dict, app: str, declared) -> dict:
    """The app's option defaults (``App.options``, a class attribute) updated by the work list's ``options``;
    exits with status 2 naming unknown keys."""
    options = {o.name: o.default for o in declared}
    unknown = set(work.get("options", {})) - set(options)
    if unknown:
        print(f"unknown {app} option(s) in the work list: {', '.join(sorted(unknown))}", file=sys.stderr)
        raise SystemExit(2)
    options.update(work.get("options", {}))
    return options


def run_batches(warmup: list, items: list, batch_size: int, *, read: Callable[[Any], bytes],
                preprocess: Callable[[Any, bytes], Any], collate: Callable[[list], Any], infer: Callable[[Any], Any],
                postprocess: Callable[[Any, Any, list, list], list]) -> dict:
    """Run the ``warmup`` items as one batch (untimed), then ``items`` in batches of ``batch_size``.

    ``postprocess(output, batch, preprocessed, batch_items)`` returns one answer per item.  Returns the answers of
    the timed loop, ``wall_s`` (first read to last answer), ``warmup_s``, ``phases_s`` and ``counters`` (getrusage
    deltas over the timed loop).
    """
    totals = {"io": 0.0, "pre": 0.0, "infer": 0.0, "post": 0.0}

    def one_batch(batch_items: list) -> list:
        preprocessed = []
        for item in batch_items:
            a = time.perf_counter()
            raw = read(item)
            b = time.perf_counter()
            preprocessed.append(preprocess(item, raw))
            totals["io"] += b - a
            totals["pre"] += time.perf_counter() - b
        a = time.perf_counter()
        batch = collate(preprocessed)
        b = time.perf_counter()
        output = infer(batch)
        c = time.perf_counter()
        answers = postprocess(output, batch, preprocessed, batch_items)
        d = time.perf_counter()
        totals["pre"] += b - a
        totals["infer"] += c - b
        totals["post"] += d - c
        return answers

    t = time.perf_counter()
    one_batch(warmup)
    warmup_s = time.perf_counter() - t
    for key in totals:
        totals[key] = 0.0
    answers: list = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    for i in range(0, len(items), batch_size):
        answers.extend(one_batch(items[i:i + batch_size]))
    wall_s = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    counters = {"user_cpu_s": after.ru_utime - before.ru_utime, "system_cpu_s": after.ru_stime - before.ru_stime,
                "minor_page_faults": after.ru_minflt - before.ru_minflt,
                "involuntary_ctx_switches": after.ru_nivcsw - before.ru_nivcsw}
    return {"answers": answers, "wall_s": wall_s, "warmup_s": warmup_s, "phases_s": totals, "counters": counters}


def read_file(item: dict) -> bytes:
    with open(item["path"], "rb") as f:
        return f.read()


def report(app: str, loop: dict, requests: int, batch_size: int, threads: int, **extra) -> dict:
    """The one JSON object a plain program prints."""
    return {"program": "plain", "app": app, "requests": requests, "batch_size": batch_size, "threads": threads,
            "wall_s": loop["wall_s"], "throughput_sps": requests / loop["wall_s"], "phases_s": loop["phases_s"],
            "warmup_s": loop["warmup_s"], "counters": loop["counters"], "pid": os.getpid(),
            "python": sys.version.split()[0], **extra}
