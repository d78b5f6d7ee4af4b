"""The application interface every e2ebench app implements.

An application is a DL program with three timed phases per request:

* ``read(ref) -> bytes``        the **io** part of pre-processing: reading the input from storage;
* ``preprocess(ref, raw)``      decode + transform one request (raises :class:`SampleError` on bad input);
* ``collate(items) -> batch``   stacking pre-processed requests into one batch (counted as pre-processing);
* ``infer(batch) -> output``    the DNN (moving the batch to the device and the output back are part of it);
* ``postprocess(output, batch)``turning the DNN output into per-request answers.

The worker (``e2ebench.worker``) drives these with MLPerf LoadGen and times every call with
``time.perf_counter_ns``; apps never time themselves and know nothing about platforms.

To add your own application, subclass :class:`App`, give it a unique ``name`` and register it
under the ``e2ebench.apps`` entry-point group (see ``docs/apps.md``).
"""

from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Sequence


class SampleError(Exception):
    """A request whose input is bad (corrupt file, malformed row).  Counted, reported, the run goes on."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


class AppError(Exception):
    """The application cannot run at all (missing data, bad weights file, unknown backend)."""


@dataclasses.dataclass(frozen=True)
class SampleRef:
    """What LoadGen indexes: one request's input.

    ``path`` is the file to read; ``locator`` says where in it (a byte range, a question id),
    ``label`` is the ground truth when known (class id, transcript, answers, click label).
    """

    index: int
    path: str
    locator: Any = None
    label: Any = None

    @property
    def where(self) -> str:
        return self.path if self.locator is None else f"{self.path}:{self.locator}"


@dataclasses.dataclass(frozen=True)
class AppOption:
    """An app-specific option, settable from the CLI (``--option key=value``) and study files."""

    name: str
    default: Any
    help: str
    value_type: str = ""          # what a value is, in words ("path", "integer >= 1 or auto"); "": from the default

    @property
    def type_name(self) -> str:
        """``value_type``, else the type of ``default`` in words (what ``--option KEY=VALUE`` decodes it as)."""
        if self.value_type:
            return self.value_type
        if isinstance(self.default, bool):
            return "boolean"
        if isinstance(self.default, int):
            return "integer"
        if isinstance(self.default, float):
            return "number"
        return "text"


class App(abc.ABC):
    """Base class of every application."""

    name: ClassVar[str]                   # "ic"
    title: ClassVar[str]                  # "Image classification (ResNet50-v1.5)"
    input_kind: ClassVar[str]             # "image", "audio", "text", "tabular"
    model_name: ClassVar[str]             # "ResNet50-v1.5"
    backends: ClassVar[tuple[str, ...]] = ("torch",)
    variants: ClassVar[tuple[str, ...]] = ("full", "tiny")
    default_requests: ClassVar[int] = 64
    default_batch_size: ClassVar[int] = 8
    options: ClassVar[tuple[AppOption, ...]] = ()

    def __init__(self, variant: str = "full", backend: str = "torch", options: dict | None = None):
        if variant not in self.variants:
            raise AppError(f"{self.name}: unknown variant {variant!r}; accepted: {', '.join(self.variants)}")
        if backend not in self.backends:
            raise AppError(f"{self.name}: unknown backend {backend!r}; accepted: {', '.join(self.backends)}")
        known = {o.name: o for o in self.options}
        opts = {o.name: o.default for o in self.options}
        for key, value in (options or {}).items():
            if key not in known:
                accepted = ", ".join(known) or "none"
                raise AppError(f"{self.name}: unknown option {key!r}; accepted: {accepted}")
            opts[key] = value
        self.variant = variant
        self.backend = backend
        self.opts = opts
        self.device = "cpu"
        self.threads: int | None = 1

    # -- life cycle -----------------------------------------------------------------
    @abc.abstractmethod
    def load(self, device: str, threads: int | None, weights: Path | None) -> None:
        """Build the model (seeded random weights unless ``weights``), move it to ``device``.  ``threads``: the pool
        size for every library the app configures itself (OpenCV, ONNX Runtime, BLAS, ...); ``None`` (the
        ``framework-default`` thread policy): set no thread count anywhere, each library keeps its own choice."""

    @abc.abstractmethod
    def samples(self, data: Path) -> Sequence[SampleRef]:
        """Index the data set at ``data`` (a folder or file).  Must not read inputs' contents beyond an index."""

    # -- the timed phases -------------------------------------------------------------
    def read(self, ref: SampleRef) -> bytes:
        """The io part of pre-processing: read the request's bytes from storage."""
        try:
            with open(ref.path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise SampleError(ref.where, f"cannot read: {exc.strerror or exc}") from exc

    @abc.abstractmethod
    def preprocess(self, ref: SampleRef, raw: bytes) -> Any:
        """Decode and transform one request.  Raise :class:`SampleError` for bad input."""

    @abc.abstractmethod
    def collate(self, items: list[Any]) -> Any:
        """Stack pre-processed requests into one batch."""

    @abc.abstractmethod
    def infer(self, batch: Any) -> Any:
        """Run the DNN on a batch (device transfer included).  On a GPU, return CPU data: the copy back waits for the
        device, so the infer lap holds the GPU's work (the worker also calls ``torch.cuda.synchronize`` before it
        ends the lap).  Keep pre-processing in ``preprocess``/``collate``, on the CPU, as the real program does."""

    @abc.abstractmethod
    def postprocess(self, output: Any, batch: Any) -> list[Any]:
        """Turn the DNN output into one JSON-serialisable answer per request in the batch."""

    # -- reporting -------------------------------------------------------------------
    def quality(self, answers: list[Any], refs: list[SampleRef]) -> dict:
        """Task metrics (accuracy, WER, F1, AUC) when labels exist; ``{}`` otherwise."""
        return {}

    def parameter_count(self) -> int:
        model = getattr(self, "model", None)
        if model is None:
            return 0
        return sum(p.numel() for p in model.parameters())

    def library_threads(self) -> dict[str, int]:
        """Threads each library was configured with (torch intra-op, OpenCV, onnxruntime, ...)."""
        import torch

        return {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads()}

    def describe(self) -> dict:
        return {
            "name": self.name,
            "title": self.title,
            "model": self.model_name,
            "variant": self.variant,
            "backend": self.backend,
            "options": dict(self.opts),
        }

    # -- data ------------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def make_data(cls, out: Path, count: int, seed: int = 0, **options: Any) -> Path:
        """Write a deterministic, seeded synthetic data set into ``out``; return the path to pass as data."""
