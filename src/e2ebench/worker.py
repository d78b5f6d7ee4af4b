"""The worker: the only e2ebench code that runs inside a platform.

    python -m e2ebench.worker --spec spec.json

It reads a :class:`~e2ebench.spec.WorkerSpec`, loads the application, drives the workload with
MLPerf LoadGen (Offline or SingleStream), times every request's io, pre, infer and post phases
with ``time.perf_counter_ns``, and prints one RunResult JSON between markers on stdout.
Exit status: 0 result ok, 1 the run failed (the result, with ``error`` set, is still printed),
2 the spec is unusable.

What it must not do is change what it measures (docs/measurement.md, "The harness"):

* the DNN runs on the thread that loaded and warmed it — the main thread, on which LoadGen calls
  ``issue_queries`` (StartTest's caller); ``compute_threads`` in the result records it;
* the warm-up is one full batch of the timed batch size, on that thread;
* no thread is bound to a CPU by the worker: PIN is the platform's cpuset (or vCPU pinning), so every
  thread of the process — the DNN's, OpenCV's, ONNX Runtime's, LoadGen's — may use every pinned core,
  as in a plain program in the same deployment;
* counters and an outside clock (``CLOCK_MONOTONIC_RAW``) bracket exactly the timed window.

The timed loop, per batch of LoadGen samples::

    for each sample: io = app.read(ref); pre = app.preprocess(ref, raw)
    pre += app.collate(items);  infer = app.infer(batch);  post = app.postprocess(out, batch)
    QuerySamplesComplete(...)   -> charged to "other", as is LoadGen's time between queries

The laps are consecutive, so they add up to ``e2e_s`` by construction; what checks them is
``window_wall_s`` from the outside clock, which io + pre + infer + post must cover to 99%.

On a GPU (``device`` ``cuda`` or ``cuda:N``) the infer lap ends after the device's work has finished: every app
copies its output back to the CPU inside ``infer``, and the worker calls ``torch.cuda.synchronize`` before the lap
as well (it costs microseconds when nothing is queued), so that an app returning a device tensor cannot move GPU time
into ``post``.  Pre-processing stays where the app does it (on the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback

from e2ebench.result import RunResult
from e2ebench.spec import RESULT_SCHEMA, WorkerSpec, format_result

_T_MAIN = time.time()
_PC_MAIN = time.perf_counter()


def _framework_default(spec: WorkerSpec) -> bool:
    """The ``framework-default`` thread policy: the worker sets no thread count at all."""
    return str(spec.thread_policy).strip().lower() == "framework-default"


def _configure_threads_env(spec: WorkerSpec) -> None:
    """Must run before torch/numpy/OpenCV are imported: their pools read these at load time.

    ``sized`` and ``N``: every pool variable is set to ``spec.threads``.  ``framework-default``: every thread
    variable the caller's environment has is removed (the same list ``e2ebench threads`` removes), so each library
    sizes its pools as it would in the user's own program started without them."""
    if _framework_default(spec):
        from e2ebench.thread_probe import THREAD_VARIABLES

        for var in THREAD_VARIABLES:
            os.environ.pop(var, None)
    else:
        n = str(max(1, int(spec.threads)))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
            os.environ[var] = n
    # No GOMP_CPU_AFFINITY / OMP_PROC_BIND: libgomp would bind the main thread to the first CPU at
    # ``import torch``, and every thread created after it (OpenCV's and ONNX Runtime's pools, LoadGen's)
    # would inherit that single CPU.  PIN is the platform's cpuset; threads float inside it.
    for var in ("GOMP_CPU_AFFINITY", "OMP_PROC_BIND", "OMP_PLACES"):
        os.environ.pop(var, None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _percentiles_ms(latencies_ns: list[int]) -> dict:
    if not latencies_ns:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    import numpy as np

    arr = np.asarray(latencies_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(arr.mean()), "max": float(arr.max())}


def _thread_affinities() -> dict[str, str]:
    out = {}
    try:
        for tid in sorted(os.listdir("/proc/self/task"), key=int):
            try:
                with open(f"/proc/self/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("Cpus_allowed_list"):
                            out[tid] = line.split(":", 1)[1].strip()
                            break
            except OSError:
                continue
    except OSError:
        pass
    return out


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in ("torch", "numpy", "cv2", "onnxruntime", "transformers", "tokenizers", "soundfile", "mlperf_loadgen"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = str(getattr(module, "__version__", "unknown"))
    if versions.get("mlperf_loadgen", "unknown") == "unknown":
        try:
            from importlib.metadata import version

            versions["mlperf_loadgen"] = version("mlcommons-loadgen")
        except Exception:
            pass
    return versions


_LOADGEN_LATENCY_KEYS = {
    "Min latency (ns)": "min", "Max latency (ns)": "max", "Mean latency (ns)": "mean",
    "50.00 percentile latency (ns)": "p50", "90.00 percentile latency (ns)": "p90",
    "99.00 percentile latency (ns)": "p99",
}


def _loadgen_summary(output_dir: str | None) -> dict:
    """What LoadGen itself measured (its own clock): validity, samples/s (Offline), QPS and latency (ms)."""
    info: dict = {"result_valid": None, "log_dir": output_dir}
    if not output_dir:
        return info
    path = os.path.join(output_dir, "mlperf_log_summary.txt")
    latency: dict = {}
    try:
        with open(path) as f:
            for line in f:
                key, sep, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if not sep:
                    continue
                if key == "Result is":
                    info["result_valid"] = value == "VALID"
                elif key in ("Early stopping satisfied", "Min duration satisfied", "Min queries satisfied"):
                    info[key.lower().replace(" ", "_")] = value
                elif key == "Samples per second":
                    info["samples_per_second"] = _number(value)
                elif key == "QPS w/ loadgen overhead":
                    info["qps_with_loadgen_overhead"] = _number(value)
                elif key == "QPS w/o loadgen overhead":
                    info["qps_without_loadgen_overhead"] = _number(value)
                elif key in _LOADGEN_LATENCY_KEYS and _number(value) is not None:
                    latency[_LOADGEN_LATENCY_KEYS[key]] = _number(value) / 1e6
    except OSError:
        pass
    if latency:
        info["latency_ms"] = latency
    return info


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _scenario_text(spec: WorkerSpec, deployment) -> str:
    from e2ebench.scenario import Scenario

    return str(Scenario(spec.app, deployment, spec.mode, cache=spec.cache, threads=spec.thread_policy))


def _thread_pools(app, limits) -> dict:
    """The pool size each library actually has (read after the timed window): torch intra-op and inter-op,
    OpenCV (None when not imported), ONNX Runtime's configured intra-op threads (0: ONNX Runtime chooses; None:
    not used), every OpenMP/BLAS pool threadpoolctl finds, the process's threads, and what the process may use."""
    import torch

    cv2 = sys.modules.get("cv2")
    try:
        openmp = [{"user_api": p.get("user_api"), "internal_api": p.get("internal_api"),
                   "num_threads": p.get("num_threads")} for p in __import__("threadpoolctl").threadpool_info()]
    except Exception:          # informative only
        openmp = None
    return {
        "torch_intra_op": torch.get_num_threads(),
        "torch_inter_op": torch.get_num_interop_threads(),
        "opencv": cv2.getNumThreads() if cv2 is not None else None,
        "onnxruntime_intra_op": app.library_threads().get("onnxruntime_intra_op"),
        "openmp": openmp,
        "process_threads": len(os.listdir("/proc/self/task")),
        "os_cpu_count": os.cpu_count(),
        "effective_cpus": len(limits.effective_cpus) if limits.effective_cpus is not None else None,
        "cpu_quota_cores": limits.cpu_quota_cores,
    }


LAPS_COVERAGE_MIN = 0.99


def _cuda_index(device: str) -> int | None:
    """``cuda`` -> 0, ``cuda:N`` -> N, anything else (``cpu``) -> None."""
    kind, _, index = str(device).partition(":")
    if kind != "cuda":
        return None
    if index and not index.isdigit():
        raise ValueError(f"bad device {device!r}: expected cpu, cuda or cuda:N")
    return int(index or 0)


def open_gpu(device: str) -> dict:
    """The GPU facts a run records, checked before the model is loaded: ``effective_gpus`` (the CUDA devices this
    process sees: what the platform passed in), ``gpu_model``, ``cuda_version``.  Fast (no nvidia-smi): it runs
    inside the cold start; the driver's version is read after the timed window (:func:`gpu_driver_version`).

    A CPU run gets 0 and None without touching CUDA.  A GPU run where torch cannot use a GPU (a CPU build of torch,
    no device node or driver inside the platform) fails here with every missing part named, instead of later in
    the app's ``.to("cuda")``."""
    index = _cuda_index(device)
    if index is None:
        return {"effective_gpus": 0, "gpu_model": None, "cuda_version": None}
    import torch

    from e2ebench.apps.base import AppError
    from e2ebench.gpu import gpu_facts

    if not torch.cuda.is_available():
        raise AppError(f"device {device} asked for, but torch cannot use a GPU in this platform: "
                       f"{gpu_facts(import_torch=True).reason}")
    count = torch.cuda.device_count()
    if index >= count:
        raise AppError(f"device {device} asked for, but this platform shows torch {count} GPU(s)")
    return {"effective_gpus": count, "gpu_model": torch.cuda.get_device_name(index),
            "cuda_version": torch.version.cuda}


def gpu_driver_version(device: str) -> str | None:
    """The NVIDIA driver's version on a GPU run (``/proc/driver/nvidia/version``, else nvidia-smi); None on a CPU run."""
    if _cuda_index(device) is None:
        return None
    from e2ebench.gpu import driver_version

    return driver_version()


def device_synchronize(device: str):
    """A callable that waits until the device has finished its queued work: ``torch.cuda.synchronize`` on that GPU,
    a no-op on the CPU (bound once, so the timed loop does not branch on the device)."""
    index = _cuda_index(device)
    if index is None:
        return lambda: None
    import torch

    return lambda: torch.cuda.synchronize(index)


def gpu_memory_peak_bytes(device: str) -> int:
    """The most GPU memory torch's allocator held for this process so far (model, activations; as ``peak_rss_bytes``
    counts the whole process, not the window); 0 on a CPU run."""
    index = _cuda_index(device)
    if index is None:
        return 0
    import torch

    return int(torch.cuda.max_memory_allocated(index))


class Worker:
    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.errors: list[dict] = []
        self.error_count = 0
        self.answers: list[tuple[int, object]] = []   # (sample index, answer) in completion order
        self.service_ns: list[int] = []               # per request: its io start -> its answer
        self.loadgen_latency_ns: list[int] = []       # per request: LoadGen's issue -> its answer
        self.completed = 0
        self.finished = 0                             # answered + failed requests
        self.batch_sizes: set[int] = set()            # batches actually given to infer()
        self.thread_ids: dict = {"load": None, "warmup": None, "infer": set()}
        self.window = None
        self.notes: list[str] = []
        self.synchronize = device_synchronize(spec.device)     # ends every infer lap after the device's work

    def run(self) -> RunResult:
        spec = self.spec
        result: dict = {        # collected key by key, typed at the end by RunResult.success
            "schema": RESULT_SCHEMA,
            "scenario": None,
            "app": spec.app,
            "mode": spec.mode,
            "cache": spec.cache,
            "thread_policy": spec.thread_policy,
            "deployment": spec.deployment,
            "loadgen_scenario": spec.loadgen_scenario,
            "backend": spec.backend,
            "variant": spec.variant,
            "batch_size": spec.batch_size,
            "requests": spec.requests,
            "emulated": bool(spec.emulated),
            "started_at": time.time(),
            "error": None,
        }
        from e2ebench.scenario import Deployment

        deployment = Deployment.from_dict(spec.deployment)
        result["scenario"] = _scenario_text(spec, deployment)

        from e2ebench import measure

        limits = measure.cpu_limits()
        result["effective_cpus"] = limits.effective_cpus
        result["cpu_quota_cores"] = limits.cpu_quota_cores
        result["cgroup"] = {"version": limits.cgroup_version, "cpu": limits.cpu_cgroup, "cpuset": limits.cpuset_cgroup}

        # -- cold start: imports, model load, first inference ---------------------------------
        t0 = time.perf_counter()
        import torch

        if not _framework_default(spec):     # framework-default: torch keeps the pools it chose itself
            torch.set_num_threads(max(1, int(spec.threads)))
            try:
                torch.set_num_interop_threads(1)
            except RuntimeError:
                pass
        from e2ebench.apps import create_app

        app = create_app(spec.app, variant=spec.variant, backend=spec.backend, options=spec.app_options)
        import_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        from pathlib import Path

        self.thread_ids["load"] = threading.get_native_id()
        gpu = open_gpu(spec.device)             # a GPU run without a usable GPU fails here, with the reason
        result["effective_gpus"] = gpu["effective_gpus"]
        result["gpu_model"] = gpu["gpu_model"]
        # threads=None (framework-default): the app sets no thread count in any library
        app.load(spec.device, None if _framework_default(spec) else int(spec.threads),
                 Path(spec.weights) if spec.weights else None)
        load_s = time.perf_counter() - t1
        if spec.data is None:
            raise ValueError("worker spec has no data path")
        refs = list(app.samples(Path(spec.data)))
        if not refs:
            raise ValueError(f"no samples found in {spec.data}")
        t2 = time.perf_counter()
        result["warmup_requests"] = self._warm_up(app, refs)
        first_s = time.perf_counter() - t2
        process_start_s = max(0.0, _T_MAIN - spec.platform_info["launched_at"]) if spec.platform_info.get("launched_at") else 0.0
        result["cold_start"] = {
            "process_start_s": process_start_s,
            "import_s": import_s + (t0 - _PC_MAIN),
            "model_load_s": load_s,
            "first_inference_s": first_s,
        }
        result["cold_start_s"] = sum(result["cold_start"].values())
        result["parameters"] = app.parameter_count()
        result["app_info"] = app.describe()

        # -- the page cache: every input of the run read once (warm) or evicted (cold) ---------
        sequence = _loadgen_sample_indices(spec, len(refs))
        result["page_cache"] = self._prepare_page_cache(app, refs, sequence)

        # -- steady state -------------------------------------------------------------------
        if spec.mode == "inference-only":
            clock = self._run_inference_only(app, refs, sequence)
        else:
            clock = self._run_loadgen(app, refs)
        window = self.window

        phases = clock.seconds()
        e2e_s = window.wall_s
        result["e2e_s"] = e2e_s
        result["phases_s"] = phases
        result["window_wall_s"] = window.outside_wall_s
        covered = sum(phases[k] for k in ("io", "pre", "infer", "post"))
        result["laps_coverage"] = (covered / window.outside_wall_s) if window.outside_wall_s > 0 else None
        if result["laps_coverage"] is not None and result["laps_coverage"] < LAPS_COVERAGE_MIN:
            self.notes.append(
                f"io+pre+infer+post cover {100 * result['laps_coverage']:.2f}% of the timed window "
                f"({covered:.4f} s of {window.outside_wall_s:.4f} s on the outside clock), less than "
                f"{100 * LAPS_COVERAGE_MIN:.0f}%: the rest is harness bookkeeping or LoadGen time")
        result["laps_cover_window"] = result["laps_coverage"] is not None and result["laps_coverage"] >= LAPS_COVERAGE_MIN
        result["service_time_ms"] = _percentiles_ms(self.service_ns)
        result["latency_ms"] = result["service_time_ms"]   # the name before issue 9; same values
        result["loadgen_latency_ms"] = _percentiles_ms(self.loadgen_latency_ns) if spec.mode != "inference-only" else None
        result["completed"] = self.completed
        result["throughput_sps"] = (self.completed / e2e_s) if e2e_s > 0 else None
        if self.batch_sizes:
            result["batch_size"] = max(self.batch_sizes)
        result["batch_size_requested"] = spec.batch_size
        result["counters"] = {**window.counters(), "gpu_memory_peak_bytes": gpu_memory_peak_bytes(spec.device)}
        result["threads"] = {**app.library_threads(), "process_threads": len(os.listdir("/proc/self/task"))}
        result["thread_pools"] = _thread_pools(app, limits)
        result["compute_threads"] = {
            "load": self.thread_ids["load"],
            "warmup": self.thread_ids["warmup"],
            "infer": sorted(self.thread_ids["infer"]),
            "same_thread": self.thread_ids["infer"] == {self.thread_ids["load"]} == {self.thread_ids["warmup"]},
        }
        result["thread_affinity"] = _thread_affinities()
        result["bind_cpus"] = spec.bind_cpus
        result["loadgen"] = _loadgen_summary(spec.output_dir) if spec.mode != "inference-only" else {"result_valid": None}
        result["environment"] = {**measure.environment(_library_versions()), "cuda_version": gpu["cuda_version"],
                                 "gpu_driver_version": gpu_driver_version(spec.device)}
        result["platform_info"] = spec.platform_info
        try:
            result["quality"] = app.quality([answer for _, answer in self.answers],
                                            [refs[index % len(refs)] for index, _ in self.answers])
        except Exception as exc:  # quality is informative; never fail a timing run on it
            result["quality"] = {"error": f"{type(exc).__name__}: {exc}"}
        total = max(1, spec.requests)
        result["errors"] = {
            "count": self.error_count,
            "fraction": self.error_count / total,
            "limit_fraction": spec.max_error_fraction,
            "samples": self.errors[:20],
        }
        if self.error_count / total > spec.max_error_fraction:
            where = ", ".join(sorted({e["where"] for e in self.errors})[:10])
            result["error"] = (
                f"{self.error_count} of {total} requests failed ({100 * self.error_count / total:.1f}% > limit "
                f"{100 * spec.max_error_fraction:.1f}%): {where}"
            )
        result["warnings"] = list(self.notes)
        result["finished_at"] = time.time()
        return RunResult.success(**result)

    # -----------------------------------------------------------------------------------
    def _warm_up(self, app, refs) -> int:
        """Cold start's first inference: one full batch of the timed batch size through all phases, on this thread.

        The batch is the data set's first requests in index order (1 in SingleStream, where every query is one
        request).  Apps whose tensor shapes vary per request (sr: utterance length, nlp: windows per question)
        meet shapes in the timed window that the warm-up did not: their one-time costs are part of E2E, as they
        are for a plain program warmed the same way.  Returns the number of requests warmed up.
        """
        from e2ebench.apps.base import SampleError

        self.thread_ids["warmup"] = threading.get_native_id()
        wanted = max(1, self.timed_batch_size(), int(self.spec.warmup_requests))
        items = []
        for ref in refs:
            if len(items) >= wanted:
                break
            try:
                items.append(app.preprocess(ref, app.read(ref)))
            except SampleError:
                continue
        if items:
            batch = app.collate(items)
            output = app.infer(batch)
            self.synchronize()
            app.postprocess(output, batch)
        return len(items)

    def timed_batch_size(self) -> int:
        """The batch size the timed loop uses: the spec's in Offline, 1 in SingleStream (one request per query)."""
        if self.spec.loadgen_scenario == "single-stream":
            return 1
        return max(1, int(self.spec.batch_size))

    def _prepare_page_cache(self, app, refs, sequence: list[int]) -> dict:
        """warm: read every input of the run once, untimed; cold: evict the run's data files from the page cache.

        Runs inside the platform (inside the container, inside the guest), so it acts on the page cache the
        worker's reads go through.
        """
        from e2ebench import measure
        from e2ebench.apps.base import SampleError

        distinct = sorted(set(sequence))
        if self.spec.cache == "cold":
            info = measure.drop_page_cache(refs[i].path for i in distinct)
            if info["resident_bytes_after"]:
                self.notes.append(
                    f"cold cache: {info['resident_bytes_after']} of {info['bytes']} bytes of the data files are still "
                    "in the page cache after POSIX_FADV_DONTNEED (a tmpfs or a file system that keeps its own cache?)")
            return {"state": "cold", **info}
        read = 0
        for i in distinct:
            try:
                read += len(app.read(refs[i]))
            except SampleError:
                continue
        return {"state": "warm", "requests_read": len(distinct), "bytes_read": read}

    def _process(self, app, clock, samples, refs, complete, issued_ns: int) -> None:
        """Run one batch of (sample id, index) through all phases; answer LoadGen with complete(ids)."""
        from e2ebench.apps.base import SampleError

        perf = time.perf_counter_ns
        items, ok_ids, starts = [], [], []
        for sample_id, index in samples:
            ref = refs[index % len(refs)]
            start = perf()
            try:
                raw = app.read(ref)
                clock.lap("io")
                items.append(app.preprocess(ref, raw))
                clock.lap("pre")
                ok_ids.append((sample_id, index))
                starts.append(start)
            except SampleError as exc:
                clock.lap("pre")
                self.error_count += 1
                self.finished += 1
                if len(self.errors) < 200:
                    self.errors.append({"where": exc.where, "message": exc.message})
                complete([sample_id])
                clock.lap("other")
        if not items:
            return
        batch = app.collate(items)
        clock.lap("pre")
        output = app.infer(batch)
        self.synchronize()
        clock.lap("infer")
        answers = app.postprocess(output, batch)
        end = clock.lap("post")
        self.thread_ids["infer"].add(threading.get_native_id())
        self.batch_sizes.add(len(items))
        for (sample_id, index), start, answer in zip(ok_ids, starts, answers):
            self.service_ns.append(end - start)
            self.loadgen_latency_ns.append(end - issued_ns)
            self.answers.append((index, answer))
        self.completed += len(ok_ids)
        self.finished += len(ok_ids)
        complete([sid for sid, _ in ok_ids])

    def _run_loadgen(self, app, refs):
        """E2E: LoadGen issues queries on this (the main) thread; each is processed batch by batch right here."""
        import mlperf_loadgen as lg

        from e2ebench.measure import PhaseClock, TimedWindow

        spec = self.spec
        clock = PhaseClock()
        window = self.window = TimedWindow()
        batch_size = self.timed_batch_size()
        expected = max(1, int(spec.requests))

        def complete(ids):
            lg.QuerySamplesComplete([lg.QuerySampleResponse(i, 0, 0) for i in ids])

        def issue_queries(query_samples):
            if window.is_closed:       # more queries than requests: not expected; timed outside the window
                complete([q.id for q in query_samples])
                return
            if not window.is_open:
                issued = clock.start(window.open())
            else:
                issued = clock.lap("other")   # LoadGen's own time since the previous answer
            pending = [(q.id, q.index) for q in query_samples]
            for start in range(0, len(pending), batch_size):
                self._process(app, clock, pending[start : start + batch_size], refs, complete, issued)
                last = clock.lap("other")
                if self.finished >= expected:
                    window.close(last)

        def flush_queries():
            pass

        _drive_loadgen(spec, len(refs), issue_queries, flush_queries, spec.output_dir)
        if window.start_ns is None:
            raise RuntimeError("LoadGen issued no query")
        if not window.is_closed:
            window.close(clock.lap("other"))
            self.notes.append(f"LoadGen issued {self.finished} of {expected} requests; the window closed when it returned")
        return clock

    def _run_inference_only(self, app, refs, indices: list[int]):
        """DLBS-style: pre-process the workload before timing, then time the DNN alone on this thread."""
        from e2ebench.apps.base import SampleError
        from e2ebench.measure import PhaseClock, TimedWindow

        prepared = {}
        for index in sorted(set(indices)):
            ref = refs[index]
            try:
                prepared[index] = app.preprocess(ref, app.read(ref))
            except SampleError as exc:
                self.error_count += indices.count(index)
                self.errors.append({"where": exc.where, "message": exc.message})
        good = [i for i in indices if i in prepared]
        batch_size = self.timed_batch_size()
        batches = [app.collate([prepared[i] for i in good[s : s + batch_size]]) for s in range(0, len(good), batch_size)]
        sizes = [len(good[s : s + batch_size]) for s in range(0, len(good), batch_size)]
        clock = PhaseClock()
        window = self.window = TimedWindow()
        last = clock.start(window.open())
        for batch, size in zip(batches, sizes):
            start = last
            app.infer(batch)
            self.synchronize()
            last = clock.lap("infer")
            self.service_ns.extend([last - start] * size)
            self.batch_sizes.add(size)
            self.completed += size
        window.close(last)
        self.thread_ids["infer"].add(threading.get_native_id())
        return clock


def _drive_loadgen(spec: WorkerSpec, sample_count: int, issue_queries, flush_queries, output_dir: str | None) -> None:
    """One LoadGen test with the run's settings and seeds; logs go to ``output_dir`` (a temp dir if None)."""
    import mlperf_loadgen as lg

    sut = lg.ConstructSUT(issue_queries, flush_queries)
    qsl = lg.ConstructQSL(sample_count, min(sample_count, spec.requests), lambda s: None, lambda s: None)
    settings = lg.TestSettings()
    settings.scenario = lg.TestScenario.Offline if spec.loadgen_scenario == "offline" else lg.TestScenario.SingleStream
    settings.mode = lg.TestMode.PerformanceOnly
    settings.min_query_count = spec.requests
    settings.max_query_count = spec.requests
    settings.min_duration_ms = 0
    settings.max_duration_ms = 0
    settings.offline_expected_qps = 1
    settings.single_stream_expected_latency_ns = 1_000_000
    settings.sample_index_rng_seed = spec.seed + 1
    settings.schedule_rng_seed = spec.seed + 2
    settings.qsl_rng_seed = spec.seed + 3
    log_settings = lg.LogSettings()
    out = lg.LogOutputSettings()
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        out.outdir = output_dir
    else:
        import tempfile

        # a throw-away log folder; inside the run's own log folder when it has one, so that a worker killed
        # mid-test leaves nothing in /tmp
        scratch_parent = spec.output_dir if spec.output_dir and os.path.isdir(spec.output_dir) else None
        out.outdir = tempfile.mkdtemp(prefix="e2ebench-loadgen-", dir=scratch_parent)
    out.copy_summary_to_stdout = False
    log_settings.log_output = out
    log_settings.enable_trace = False
    try:
        lg.StartTestWithLogSettings(sut, qsl, settings, log_settings)
    finally:
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
        if not output_dir:
            import shutil

            shutil.rmtree(out.outdir, ignore_errors=True)


def _loadgen_sample_indices(spec: WorkerSpec, sample_count: int) -> list[int]:
    """The sample indices, in order, that LoadGen issues for this run's settings and seeds.

    Inference-only mode times the DNN on exactly the requests an E2E run of the same scenario processes
    (LoadGen picks its performance set and query order with seeded generators), so that the two modes
    compare the same work.  The dry run completes every query at once and takes milliseconds.
    """
    import mlperf_loadgen as lg

    indices: list[int] = []

    def issue_queries(query_samples):
        indices.extend(q.index for q in query_samples)
        lg.QuerySamplesComplete([lg.QuerySampleResponse(q.id, 0, 0) for q in query_samples])

    _drive_loadgen(spec, sample_count, issue_queries, lambda: None, None)
    return indices


def _failure_result(spec: WorkerSpec, message: str) -> RunResult:
    """The result of a worker that measured nothing (its spec is known: ``main`` parsed it)."""
    from e2ebench.scenario import Deployment, Scenario

    try:
        scenario = Scenario(spec.app, Deployment.from_dict(spec.deployment), spec.mode, cache=spec.cache,
                            threads=spec.thread_policy)
    except Exception:       # a spec the runner did not write: keep what it says, the scenario stays unknown
        scenario = None
    known = {} if scenario is not None else {"app": spec.app, "mode": spec.mode, "cache": spec.cache,
                                             "thread_policy": spec.thread_policy, "deployment": spec.deployment}
    return RunResult.failure(scenario, spec, message, _T_MAIN, emulated=bool(spec.emulated),
                             platform_info=spec.platform_info, **known)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2ebench.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, help="path to a WorkerSpec JSON file, or '-' for stdin")
    parser.add_argument("--out", help="also write the RunResult JSON to this file")
    args = parser.parse_args(argv)
    try:
        text = sys.stdin.read() if args.spec == "-" else open(args.spec).read()
        spec = WorkerSpec.from_json(text)
    except (OSError, ValueError, TypeError) as exc:
        print(f"e2ebench worker: unusable spec: {exc}", file=sys.stderr)
        return 2
    # Exit the moment the e2ebench process that started this run dies (see e2ebench.lifecycle): by the kernel's
    # parent-death signal where the parent lives as long as the run (the runner, `runc run`), and by the
    # lifeline, whose thread needs the GIL and so may lag behind a long C-level import by seconds.
    if spec.die_with_parent:
        from e2ebench.lifecycle import set_parent_death_signal

        set_parent_death_signal()
    if spec.lifeline:
        from e2ebench.lifecycle import watch_lifeline

        watch_lifeline(spec.lifeline)
    if spec.probe == "threads":     # before any thread variable is set: what each library chooses on its own
        from e2ebench.thread_probe import worker_result

        sys.stdout.write(format_result(worker_result(spec)))
        sys.stdout.flush()
        return 0
    _configure_threads_env(spec)
    try:
        result = Worker(spec).run()
    except Exception as exc:
        from e2ebench.apps.base import AppError

        if isinstance(exc, AppError):       # a sentence for the user (bad data, bad option): no class name, no stack
            result = _failure_result(spec, str(exc))
        else:
            traceback.print_exc(file=sys.stderr)
            result = _failure_result(spec, f"{type(exc).__name__}: {exc}")
    payload = result.as_dict()
    text = format_result(payload)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(payload, f, sort_keys=True)
    sys.stdout.write(text)
    sys.stdout.flush()
    return 1 if result.error else 0


if __name__ == "__main__":
    sys.exit(main())
