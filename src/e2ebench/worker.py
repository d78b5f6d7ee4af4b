"""The worker: the only e2ebench code that runs inside a platform.

    python -m e2ebench.worker --spec spec.json

It reads a :class:`~e2ebench.spec.WorkerSpec`, loads the application, drives the workload with
MLPerf LoadGen (Offline or SingleStream), times every request's io, pre, infer and post phases
with ``time.perf_counter_ns``, and prints one RunResult JSON between markers on stdout.
Exit status: 0 result ok, 1 the run failed (the result, with ``error`` set, is still printed),
2 the spec is unusable.

The timed loop, per batch of LoadGen samples::

    for each sample: io = app.read(ref); pre = app.preprocess(ref, raw)
    pre += app.collate(items);  infer = app.infer(batch);  post = app.postprocess(out, batch)
    QuerySamplesComplete(...)   -> charged to "other"

Consecutive laps of one clock leave no gaps, so io + pre + infer + post + other equals the
measured E2E wall time by construction.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

from e2ebench.spec import RESULT_SCHEMA, WorkerSpec, format_result

_T_MAIN = time.time()
_PC_MAIN = time.perf_counter()


def _configure_threads_env(spec: WorkerSpec) -> None:
    """Must run before torch/numpy/OpenCV are imported: their pools read these at load time."""
    n = str(max(1, int(spec.threads)))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = n
    if spec.bind_cpus:
        # libgomp binds OpenMP thread i to the i-th listed CPU: torch's compute threads one per core
        os.environ["GOMP_CPU_AFFINITY"] = " ".join(str(c) for c in spec.bind_cpus)
        os.environ.pop("OMP_PROC_BIND", None)
        os.environ.pop("OMP_PLACES", None)
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


def _loadgen_summary(output_dir: str | None) -> dict:
    info: dict = {"result_valid": None, "log_dir": output_dir}
    if not output_dir:
        return info
    path = os.path.join(output_dir, "mlperf_log_summary.txt")
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("Result is"):
                    info["result_valid"] = line.split(":", 1)[1].strip() == "VALID"
                elif "Early stopping" in line or "Min duration satisfied" in line or "Min queries satisfied" in line:
                    key = line.split(":", 1)[0].strip().lower().replace(" ", "_")
                    info[key] = line.split(":", 1)[1].strip() if ":" in line else ""
    except OSError:
        pass
    return info


class Worker:
    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.errors: list[dict] = []
        self.error_count = 0
        self.answers: list[tuple[int, object]] = []   # (sample index, answer) in completion order
        self.latencies_ns: list[int] = []
        self.completed = 0

    def run(self) -> dict:
        spec = self.spec
        result: dict = {
            "schema": RESULT_SCHEMA,
            "scenario": None,
            "app": spec.app,
            "mode": spec.mode,
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
        from e2ebench.scenario import Deployment, Scenario

        deployment = Deployment.from_dict(spec.deployment)
        result["scenario"] = str(Scenario(spec.app, deployment, spec.mode))

        from e2ebench import measure

        limits = measure.cpu_limits()
        result["effective_cpus"] = limits.effective_cpus
        result["cpu_quota_cores"] = limits.cpu_quota_cores
        result["cgroup"] = {"version": limits.cgroup_version, "cpu": limits.cpu_cgroup, "cpuset": limits.cpuset_cgroup}

        # -- cold start: imports, model load, first inference ---------------------------------
        t0 = time.perf_counter()
        import torch

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

        app.load(spec.device, int(spec.threads), Path(spec.weights) if spec.weights else None)
        load_s = time.perf_counter() - t1
        if spec.data is None:
            raise ValueError("worker spec has no data path")
        refs = list(app.samples(Path(spec.data)))
        if not refs:
            raise ValueError(f"no samples found in {spec.data}")
        t2 = time.perf_counter()
        self._warm_up(app, refs)
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

        # -- steady state -------------------------------------------------------------------
        before = measure.CounterSnapshot.take()
        if spec.mode == "inference-only":
            clock, wall_ns = self._run_inference_only(app, refs)
        else:
            clock, wall_ns = self._run_loadgen(app, refs)
        after = measure.CounterSnapshot.take()

        phases = clock.seconds()
        if spec.mode == "inference-only":
            e2e_s = phases["infer"]
        else:
            e2e_s = wall_ns / 1e9
            phases["other"] = e2e_s - (phases["io"] + phases["pre"] + phases["infer"] + phases["post"])
        result["e2e_s"] = e2e_s
        result["loop_wall_s"] = wall_ns / 1e9
        result["phases_s"] = phases
        result["latency_ms"] = _percentiles_ms(self.latencies_ns)
        result["completed"] = self.completed
        result["throughput_sps"] = (self.completed / e2e_s) if e2e_s > 0 else None
        result["counters"] = after.delta(before)
        result["threads"] = {**app.library_threads(), "process_threads": len(os.listdir("/proc/self/task"))}
        result["thread_affinity"] = _thread_affinities()
        result["bind_cpus"] = spec.bind_cpus
        result["loadgen"] = _loadgen_summary(spec.output_dir) if spec.mode != "inference-only" else {"result_valid": None}
        result["environment"] = measure.environment(_library_versions())
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
        result["finished_at"] = time.time()
        return result

    # -----------------------------------------------------------------------------------
    def _warm_up(self, app, refs) -> None:
        """Cold start's first inference: one full request through all phases, untimed in the results."""
        from e2ebench.apps.base import SampleError

        items = []
        for ref in refs[: max(1, self.spec.warmup_requests)]:
            try:
                items.append(app.preprocess(ref, app.read(ref)))
            except SampleError:
                continue
        if not items:
            for ref in refs:
                try:
                    items = [app.preprocess(ref, app.read(ref))]
                    break
                except SampleError:
                    continue
        if items:
            batch = app.collate(items)
            app.postprocess(app.infer(batch), batch)

    def _bind_main(self, infer: bool) -> None:
        cpus = self.spec.bind_cpus
        if cpus:
            os.sched_setaffinity(0, {cpus[0]} if infer else set(cpus))

    def _process(self, app, clock, samples, refs, complete) -> None:
        """Run one batch of (sample id, index) through all phases; call complete(ids, answers)."""
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
                if len(self.errors) < 200:
                    self.errors.append({"where": exc.where, "message": exc.message})
                complete([sample_id], None)
                clock.lap("other")
        if not items:
            return
        batch = app.collate(items)
        clock.lap("pre")
        self._bind_main(True)
        output = app.infer(batch)
        self._bind_main(False)
        clock.lap("infer")
        answers = app.postprocess(output, batch)
        end = clock.lap("post")
        for (sample_id, index), start, answer in zip(ok_ids, starts, answers):
            self.latencies_ns.append(end - start)
            self.answers.append((index, answer))
        self.completed += len(ok_ids)
        complete([sid for sid, _ in ok_ids], answers)
        clock.lap("other")

    def _run_loadgen(self, app, refs):
        import mlperf_loadgen as lg

        from e2ebench.measure import PhaseClock

        spec = self.spec
        clock = PhaseClock()
        bounds = {"first": None, "last": None}
        batch_size = max(1, int(spec.batch_size))

        def complete(ids, answers):
            lg.QuerySamplesComplete([lg.QuerySampleResponse(i, 0, 0) for i in ids])

        def issue_queries(query_samples):
            now = clock.start()
            if bounds["first"] is None:
                bounds["first"] = now
            pending = [(q.id, q.index) for q in query_samples]
            for start in range(0, len(pending), batch_size):
                self._process(app, clock, pending[start : start + batch_size], refs, complete)
            bounds["last"] = time.perf_counter_ns()

        def flush_queries():
            pass

        _drive_loadgen(spec, len(refs), issue_queries, flush_queries, spec.output_dir)
        wall_ns = (bounds["last"] or 0) - (bounds["first"] or 0)
        # SingleStream: LoadGen's own time between queries is part of E2E; charge it to "other"
        return clock, wall_ns

    def _run_inference_only(self, app, refs):
        """DLBS-style: pre-process the workload before timing, then time the DNN alone."""
        from e2ebench.apps.base import SampleError
        from e2ebench.measure import PhaseClock

        spec = self.spec
        indices = _loadgen_sample_indices(spec, len(refs))
        prepared = {}
        for index in sorted(set(indices)):
            ref = refs[index]
            try:
                prepared[index] = app.preprocess(ref, app.read(ref))
            except SampleError as exc:
                self.error_count += indices.count(index)
                self.errors.append({"where": exc.where, "message": exc.message})
        good = [i for i in indices if i in prepared]
        batch_size = max(1, int(spec.batch_size))
        batches = [app.collate([prepared[i] for i in good[s : s + batch_size]]) for s in range(0, len(good), batch_size)]
        sizes = [len(good[s : s + batch_size]) for s in range(0, len(good), batch_size)]
        clock = PhaseClock()
        perf = time.perf_counter_ns
        t_start = clock.start()
        for batch, size in zip(batches, sizes):
            start = perf()
            self._bind_main(True)
            app.infer(batch)
            self._bind_main(False)
            end = clock.lap("infer")
            self.latencies_ns.extend([end - start] * size)
            self.completed += size
        wall_ns = perf() - t_start
        return clock, wall_ns


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

        out.outdir = tempfile.mkdtemp(prefix="e2ebench-loadgen-")
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


def _failure_result(spec: WorkerSpec | None, message: str) -> dict:
    from e2ebench.scenario import Deployment, Scenario

    scenario = None
    if spec is not None:
        try:
            scenario = str(Scenario(spec.app, Deployment.from_dict(spec.deployment), spec.mode))
        except Exception:
            scenario = None
    return {
        "schema": RESULT_SCHEMA,
        "scenario": scenario,
        "app": spec.app if spec else None,
        "mode": spec.mode if spec else None,
        "deployment": spec.deployment if spec else None,
        "requests": spec.requests if spec else None,
        "emulated": bool(spec.emulated) if spec else False,
        "error": message,
        "started_at": _T_MAIN,
        "finished_at": time.time(),
    }


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
    _configure_threads_env(spec)
    try:
        result = Worker(spec).run()
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        result = _failure_result(spec, f"{type(exc).__name__}: {exc}")
    text = format_result(result)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, sort_keys=True)
    sys.stdout.write(text)
    sys.stdout.flush()
    return 1 if result.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
