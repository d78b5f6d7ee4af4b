"""What each library would choose for its thread pools inside a deployment, without running a workload.

``probe_threads()`` runs in the current process: it removes every thread variable (``OMP_NUM_THREADS`` ...) from
the environment, imports torch, OpenCV, ONNX Runtime and threadpoolctl, and reads the pool size each chose on its
own — torch's intra-op and inter-op pools, OpenCV's ``getNumThreads()``, ONNX Runtime's default intra-op pool
(measured: an ``InferenceSession`` on a one-node model built in memory, default ``SessionOptions``; the pool is the
threads the process gains plus the calling thread, which takes part in every parallel section) and every OpenMP/BLAS
pool threadpoolctl finds — next to what the process may use: ``os.cpu_count()``, its affinity, its effective CPUs
and its CFS quota (:func:`e2ebench.measure.cpu_limits`).  Each pool gets a verdict against the limit, which is the
CFS quota in cores when there is one (or the effective CPUs, when fewer), else the number of effective CPUs.

``probe_deployment(deployment)`` provisions the deployment through the Platform API and runs the same probe inside
it: the worker (``python -m e2ebench.worker``) with a spec whose ``probe`` is ``"threads"`` calls
:func:`probe_threads` before it sets any thread variable and prints the dict between the RunResult markers.
The runner's limit check (``verify_limits``) is not applied: the probe reports the limits, it does not enforce them.
"""

from __future__ import annotations

import os
import time
from typing import Any

PROBE_KIND = "threads"
PROBE_SCHEMA = "e2ebench.threads/1"
PROBE_TIMEOUT_S = 300.0

# Variables that set a pool size (or bind threads): removed so that every library chooses as it would in a plain
# program started without them.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMEXPR_MAX_THREADS",
    "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_THREAD_LIMIT", "OMP_DYNAMIC",
    "GOMP_CPU_AFFINITY", "OMP_PROC_BIND", "OMP_PLACES", "KMP_AFFINITY", "OPENCV_FOR_THREADS_NUM",
    "TORCH_NUM_THREADS",
)
LIBRARIES = ("torch", "cv2", "onnxruntime", "numpy")


def _process_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _tiny_onnx_model() -> bytes:
    """A one-node (Relu) ONNX model, built in memory."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "e2ebench-thread-probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8        # readable by every ONNX Runtime this project supports
    return model.SerializeToString()


def verdict(threads: int | None, limit: float | None) -> str:
    """``within the limit`` or ``exceeds the limit (N threads for a limit of M cores)``."""
    if threads is None or limit is None:
        return "unknown"
    if threads <= limit + 1e-9:
        return "within the limit"
    return f"exceeds the limit ({threads} threads for a limit of {limit:g} cores)"


def cpu_limit(effective_cpus: list[int], quota_cores: float | None) -> float:
    """The cores the process may keep busy: the CFS quota in cores if set (capped by the effective CPUs), else the
    number of effective CPUs."""
    n = len(effective_cpus) or (os.cpu_count() or 1)
    return float(min(quota_cores, n)) if quota_cores is not None else float(n)


def probe_threads() -> dict[str, Any]:
    """Import the libraries with no thread variable set and report the pool sizes they chose (a JSON-able dict)."""
    from e2ebench import measure

    removed = {var: os.environ.pop(var) for var in THREAD_VARIABLES if var in os.environ}
    already = [name for name in LIBRARIES if name in __import__("sys").modules]
    t0 = time.perf_counter()
    limits = measure.cpu_limits()
    limit = cpu_limit(limits.effective_cpus, limits.cpu_quota_cores)
    pools: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    versions: dict[str, str] = {}

    def add(library: str, pool: str, threads: int | None, how: str) -> None:
        pools.append({"library": library, "pool": pool, "threads": threads, "how": how,
                      "verdict": verdict(threads, limit)})

    threads_at_start = _process_threads()
    try:
        import numpy
        versions["numpy"] = numpy.__version__
    except Exception as exc:       # a missing library is a row of the report, not a failed probe
        errors["numpy"] = f"{type(exc).__name__}: {exc}"
    try:
        import torch

        versions["torch"] = torch.__version__
        add("torch", "intra-op", int(torch.get_num_threads()), "torch.get_num_threads()")
        add("torch", "inter-op", int(torch.get_num_interop_threads()), "torch.get_num_interop_threads()")
    except Exception as exc:
        errors["torch"] = f"{type(exc).__name__}: {exc}"
    try:
        import cv2

        versions["opencv"] = cv2.__version__
        add("opencv", "parallel_for", int(cv2.getNumThreads()), "cv2.getNumThreads()")
    except Exception as exc:
        errors["opencv"] = f"{type(exc).__name__}: {exc}"
    try:
        import onnxruntime as ort

        versions["onnxruntime"] = ort.__version__
        model = _tiny_onnx_model()
        before = _process_threads()
        session = ort.InferenceSession(model, ort.SessionOptions(), providers=["CPUExecutionProvider"])
        gained = _process_threads() - before
        del session
        add("onnxruntime", "intra-op", gained + 1,
            f"default SessionOptions: the process gained {gained} thread(s) + the calling thread")
    except Exception as exc:
        errors["onnxruntime"] = f"{type(exc).__name__}: {exc}"
    try:
        import threadpoolctl

        versions["threadpoolctl"] = threadpoolctl.__version__
        for info in threadpoolctl.threadpool_info():
            add(f"{info.get('internal_api')} ({info.get('prefix')})", str(info.get("user_api")), info.get("num_threads"),
                "threadpoolctl.threadpool_info()")
            pools[-1]["filepath"] = info.get("filepath")
    except Exception as exc:
        errors["threadpoolctl"] = f"{type(exc).__name__}: {exc}"
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except OSError:
        affinity = None
    exceeding = [p for p in pools if p["verdict"].startswith("exceeds")]
    return {
        "schema": PROBE_SCHEMA,
        "cpu_count": os.cpu_count(),
        "affinity": affinity,
        "effective_cpus": limits.effective_cpus,
        "cpu_quota_cores": limits.cpu_quota_cores,
        "cgroup_version": limits.cgroup_version,
        "limit_cores": limit,
        "limit_source": "CFS quota" if limits.cpu_quota_cores is not None else "effective CPUs",
        "pools": pools,
        "exceeding": len(exceeding),
        "process_threads": {"at_start": threads_at_start, "at_end": _process_threads()},
        "versions": versions,
        "errors": errors,
        "removed_variables": sorted(removed),
        "imported_before_probe": already,      # their pools were sized before the variables were removed
        "probe_s": round(time.perf_counter() - t0, 3),
    }


def worker_result(spec) -> dict[str, Any]:
    """What the worker prints for a ``probe = "threads"`` spec: the probe, framed like a RunResult."""
    from e2ebench.spec import RESULT_SCHEMA

    try:
        probe = probe_threads()
        error = None
    except Exception as exc:        # pragma: no cover - defensive: the probe catches per library
        probe, error = {}, f"{type(exc).__name__}: {exc}"
    return {"schema": RESULT_SCHEMA, "probe": PROBE_KIND, "app": spec.app, "deployment": spec.deployment,
            "platform_info": dict(spec.platform_info), "threads_probe": probe, "error": error}


def probe_deployment(deployment, platform_options: dict | None = None, timeout: float = PROBE_TIMEOUT_S,
                     progress=None) -> dict[str, Any]:
    """Provision ``deployment`` (a :class:`~e2ebench.scenario.Deployment`) and run the probe inside it.

    Returns the probe's dict plus ``deployment``, ``platform``, ``platform_info`` and ``emulated``.  Raises
    :class:`~e2ebench.platforms.base.PlatformError` when the platform cannot be provisioned and
    :class:`~e2ebench.spec.WorkerFailure` when the probe printed nothing usable.
    """
    from e2ebench.lifecycle import Lifeline
    from e2ebench.platforms import get_platform
    from e2ebench.runner import housekeeping, platform_workdir
    from e2ebench.spec import WorkerFailure, WorkerSpec

    say = progress or (lambda message: None)
    platform = get_platform(deployment.platform, **(platform_options or {}))
    housekeeping(progress)
    with platform_workdir() as tmp:
        logs = tmp / "probe-logs"
        logs.mkdir()
        say(f"provisioning {deployment}")
        with platform.session(deployment, tmp) as session:
            spec = WorkerSpec(app="threads-probe", deployment=deployment.as_dict(), threads=deployment.cores,
                              device="cuda" if deployment.device == "GPU" else "cpu",
                              output_dir=session.host_path(logs), probe=PROBE_KIND)
            spec.emulated = session.emulated
            say(f"probing thread pools in {deployment}")
            with Lifeline(logs) as lifeline:
                if session.shares_host_kernel:
                    spec.lifeline = session.host_path(lifeline.path)
                result = session.run_worker(spec, timeout=timeout)
            info = dict(session.info)
            emulated = bool(session.emulated)
    if result.get("error"):
        raise WorkerFailure(f"the thread probe failed: {result['error']}", output_tail=str(result.get("output_tail", "")))
    probe = result.get("threads_probe")
    if not isinstance(probe, dict) or not probe:
        raise WorkerFailure("the worker printed no thread probe (is the worker older than this e2ebench?)")
    return {"deployment": str(deployment), "platform": deployment.platform, **probe,
            "platform_info": {**info, **(result.get("platform_info") or {})},
            "emulated": emulated or bool(result.get("emulated"))}


__all__ = ["PROBE_KIND", "THREAD_VARIABLES", "cpu_limit", "probe_deployment", "probe_threads", "verdict",
           "worker_result"]
