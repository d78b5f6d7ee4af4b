"""The two messages that cross a platform boundary: ``WorkerSpec`` in, ``RunResult`` out.

Both are plain JSON so that the worker can run in any platform (bare metal, container, VM guest)
with nothing but the project's Python environment.  This module imports only the standard
library: platforms and the runner use it without importing torch.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

RESULT_SCHEMA = "e2ebench.run/1"
RESULT_BEGIN = "@@E2EBENCH_RESULT_BEGIN@@"
RESULT_END = "@@E2EBENCH_RESULT_END@@"
LOADGEN_SCENARIOS = ("offline", "single-stream")
CACHE_STATES = ("warm", "cold")


@dataclasses.dataclass
class WorkerSpec:
    """Everything the worker needs; written as JSON by the runner, read inside the platform."""

    app: str
    deployment: dict                      # Deployment.as_dict()
    requests: int = 64
    batch_size: int = 8
    loadgen_scenario: str = "offline"     # offline | single-stream
    backend: str = "torch"
    mode: str = "e2e"                     # e2e | inference-only
    cache: str = "warm"                   # warm | cold: cold drops the data files from the page cache before timing
    variant: str = "full"                 # full | tiny (tests only)
    threads: int = 1                      # compute threads for every library: the deployment's cores, or N
    thread_policy: str = "sized"          # sized | framework-default (no thread count set at all) | N
    device: str = "cpu"                   # cpu | cuda
    data: str | None = None               # data set path as seen inside the platform
    weights: str | None = None            # checkpoint path as seen inside the platform
    output_dir: str | None = None         # where LoadGen logs go (inside the platform)
    bind_cpus: list[int] | None = None    # PIN: bind compute threads one per listed CPU
    max_error_fraction: float = 0.01
    app_options: dict = dataclasses.field(default_factory=dict)
    seed: int = 0
    warmup_requests: int = 1              # first inference(s) timed as part of cold start
    emulated: bool = False                # the platform knows it runs under TCG
    lifeline: str | None = None           # a file the runner holds locked; the worker exits when the lock drops
    die_with_parent: bool = False         # PR_SET_PDEATHSIG: the worker's parent is the runner or `runc run`
    platform_info: dict = dataclasses.field(default_factory=dict)
    probe: str | None = None              # "threads": report the thread pools each library would choose, run nothing

    def size_threads(self, cores: int) -> None:
        """Set ``threads`` from the thread policy for a deployment of ``cores``: N for a policy ``"N"``, else the
        cores (with ``framework-default`` the worker sets no thread count; ``threads`` is then only informative)."""
        policy = str(self.thread_policy).strip()
        self.threads = int(policy) if policy.isdigit() and int(policy) >= 1 else int(cores)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "WorkerSpec":
        raw = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown worker spec keys: {', '.join(sorted(unknown))}")
        return cls(**raw)

    def write(self, path: Path) -> Path:
        path.write_text(self.to_json())
        return path


class WorkerFailure(RuntimeError):
    """The worker ran but did not produce a usable result."""

    def __init__(self, message: str, output_tail: str = "", result: dict | None = None):
        super().__init__(message)
        self.output_tail = output_tail
        self.result = result


def extract_result(output: str) -> dict:
    """Find the RunResult JSON between the markers in a worker's (or console's) output."""
    begin = output.rfind(RESULT_BEGIN)
    if begin < 0:
        raise WorkerFailure("worker printed no result", output_tail=output[-4000:])
    end = output.find(RESULT_END, begin)
    if end < 0:
        raise WorkerFailure("worker result is truncated (no end marker)", output_tail=output[-4000:])
    payload = output[begin + len(RESULT_BEGIN) : end]
    # serial consoles may insert carriage returns or wrap lines
    payload = "".join(line.strip("\r") for line in payload.splitlines())
    try:
        result = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise WorkerFailure(f"worker result is not valid JSON: {exc}", output_tail=output[-4000:]) from exc
    if result.get("schema") != RESULT_SCHEMA:
        raise WorkerFailure(f"unexpected result schema {result.get('schema')!r}", result=result)
    return result


def format_result(result: dict[str, Any]) -> str:
    return f"{RESULT_BEGIN}\n{json.dumps(result, sort_keys=True)}\n{RESULT_END}\n"
