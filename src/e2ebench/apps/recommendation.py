"""Recommendation (RS): MLPerf's DLRM on Criteo click logs, ranking each user's candidate list.

A request is one query: ``rows_per_request`` consecutive rows of a Criteo TSV file (default 128, one user's
candidate ads).  Its phases:

* **io** (``read``): exactly the request's byte range of the file, found by ``samples()``'s index;
* **pre-processing** (``preprocess`` + ``collate``): parse the 40 tab-separated columns, ``log(1+x)`` of the
  13 integer features (missing and negative values -> 0), hex -> integer -> ``value mod table rows`` for the
  26 categorical ones (see :mod:`e2ebench.datasets.criteo`), tensors; ``collate`` concatenates the requests'
  rows into one batch and keeps the offsets to split them back;
* **inference** (``infer``): DLRM (:mod:`e2ebench.models.dlrm`) -> one click logit per row;
* **post-processing** (``postprocess``): sigmoid -> click-through rate (CTR) per row, then each request's rows
  ranked by CTR and the ``top_k`` kept.

One malformed row (wrong column count, a non-integer dense value, a non-hex categorical value, a label other
than 0/1) fails its whole request with a :class:`SampleError` naming the file and line number: the request is a
candidate list ranked as a whole, so it is not ranked with rows missing.

Answer per request (JSON)::

    {"file": "/data/train.txt", "first_line": 129,   # which rows: lines first_line .. first_line + rows - 1
     "top_k": [[line_number, ctr], ...],            # the top_k rows, highest CTR first (ties: lower line first)
     "ctr":   [ctr, ...],                           # every row's CTR in file order (what the AUC needs)
     "label": [0, 1, ...]}                          # every row's click label as read from the file

The labels ride along with the answer (they come with the input rows at no cost), so ``quality()`` needs
nothing but the answers: it reports the ROC AUC over all answered rows.  With random weights the AUC says
nothing about the model (it is ~0.5 by construction): ``auc_meaningful`` is then ``False``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from e2ebench.apps.base import App, AppError, AppOption, SampleError, SampleRef
from e2ebench.datasets import criteo

#: Same value as :data:`e2ebench.models.dlrm.DEFAULT_MAX_ROWS_PER_TABLE`, repeated so that importing this module
#: (to list apps and their options) does not import torch; a test checks that the two agree.
DEFAULT_MAX_ROWS_PER_TABLE = 3_000_000
DEFAULT_ROWS_PER_REQUEST = 128
DEFAULT_TOP_K = 10


def roc_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random negative,
    ties counting one half (Mann-Whitney U with average ranks).  ``ValueError`` unless both classes occur."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError("the AUC needs at least one positive and one negative label")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    # average 1-based rank of every group of equal scores
    _, group_of_sorted, group_sizes = np.unique(sorted_scores, return_inverse=True, return_counts=True)
    group_ends = np.cumsum(group_sizes)                       # last 1-based rank of each group
    average_ranks = group_ends - (group_sizes - 1) / 2.0
    ranks = np.empty(scores.size, dtype=np.float64)
    ranks[order] = average_ranks[group_of_sorted]
    positive_rank_sum = ranks[labels].sum()
    return float((positive_rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


@dataclasses.dataclass
class RequestRows:
    """One pre-processed request: ``dense`` float32 (rows, 13), ``sparse`` int64 (26, rows), click labels,
    and where the rows are (file, first line number)."""

    dense: Any               # torch.Tensor
    sparse: Any              # torch.Tensor
    labels: np.ndarray       # int8 (rows,)
    path: str
    first_line: int
    rows: int


@dataclasses.dataclass
class RowBatch:
    """Requests' rows concatenated: request ``i`` owns rows ``request_offsets[i]:request_offsets[i+1]``."""

    dense: Any               # torch.Tensor (rows, 13)
    sparse: Any              # torch.Tensor (26, rows)
    labels: np.ndarray       # int8 (rows,)
    request_offsets: list[int]
    paths: list[str]
    first_lines: list[int]


def _int_option(app_name: str, name: str, value: Any, minimum: int) -> int:
    try:
        number = int(value)
        if isinstance(value, float) and number != value:
            raise ValueError
    except (TypeError, ValueError):
        raise AppError(f"{app_name}: option {name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise AppError(f"{app_name}: option {name} must be >= {minimum}, got {number}")
    return number


class Recommendation(App):
    name = "rs"
    title = "Recommendation (DLRM, Criteo)"
    input_kind = "tabular"
    model_name = "DLRM"
    default_requests = 64
    default_batch_size = 16          # 16 requests x 128 rows = 2,048 rows per inference (MLPerf CPU batch size)
    options = (
        AppOption("seed", 0, "seed of the random weights when no checkpoint is given"),
        AppOption("max_rows_per_table", DEFAULT_MAX_ROWS_PER_TABLE,
                  "row cap of each embedding table (rows = min(Criteo Kaggle cardinality, cap); 0 = no cap). "
                  "The default 3,000,000 gives 236,826,449 parameters, 0.95 GB fp32; no cap 2.16 GB"),
        AppOption("rows_per_request", DEFAULT_ROWS_PER_REQUEST,
                  "consecutive Criteo rows per request (one user's candidate list)"),
        AppOption("top_k", DEFAULT_TOP_K, "rows kept per request after ranking by predicted click-through rate"),
    )

    def __init__(self, variant: str = "full", backend: str = "torch", options: dict | None = None):
        super().__init__(variant=variant, backend=backend, options=options)
        self.seed = _int_option(self.name, "seed", self.opts["seed"], 0)
        self.max_rows_per_table = _int_option(self.name, "max_rows_per_table", self.opts["max_rows_per_table"], 0)
        self.rows_per_request = _int_option(self.name, "rows_per_request", self.opts["rows_per_request"], 1)
        self.top_k = _int_option(self.name, "top_k", self.opts["top_k"], 1)
        self.opts.update(seed=self.seed, max_rows_per_table=self.max_rows_per_table,
                         rows_per_request=self.rows_per_request, top_k=self.top_k)
        # The table sizes decide the hashing in pre-processing: known before the model is loaded.
        from e2ebench.models.dlrm import dlrm_config

        self.config = dlrm_config(variant, self.max_rows_per_table)
        self.table_rows = np.asarray(self.config.table_rows, dtype=np.uint64)
        self.model = None
        self.weights_source = "random"

    # -- life cycle ----------------------------------------------------------------------
    def load(self, device: str, threads: int | None, weights: Path | None) -> None:
        import torch

        from e2ebench.models.dlrm import CheckpointError, build_dlrm, load_dlrm

        self.device = device
        self.threads = threads
        try:
            if weights is not None:
                model = load_dlrm(Path(weights), self.variant, self.max_rows_per_table, device=device)
                self.weights_source = str(weights)
            else:
                torch.manual_seed(self.seed)
                model = build_dlrm(self.variant, self.max_rows_per_table, seed=self.seed, device=device)
                self.weights_source = "random"
        except CheckpointError as exc:
            raise AppError(f"{self.name}: {exc}") from exc
        except (RuntimeError, AssertionError) as exc:   # e.g. an unavailable device
            raise AppError(f"{self.name}: cannot build DLRM on {device}: {exc}") from exc
        self.model = model.eval()

    def samples(self, data: Path) -> list[SampleRef]:
        try:
            files = criteo.criteo_files(Path(data))
        except FileNotFoundError as exc:
            raise AppError(f"{self.name}: {exc}") from exc
        refs: list[SampleRef] = []
        for path in files:
            left = criteo.MAX_INDEXED_REQUESTS - len(refs)
            if left <= 0:
                break
            try:
                groups = criteo.index_row_groups(path, self.rows_per_request, max_groups=left)
            except OSError as exc:
                raise AppError(f"{self.name}: cannot index {path}: {exc.strerror or exc}") from exc
            for group in groups:
                refs.append(SampleRef(index=len(refs), path=str(path),
                                      locator=(group.start_byte, group.end_byte, group.first_line)))
        if not refs:
            raise AppError(f"{self.name}: {data} holds no complete request of {self.rows_per_request} rows "
                           f"(files: {', '.join(str(p) for p in files)})")
        return refs

    # -- the timed phases --------------------------------------------------------------------
    def read(self, ref: SampleRef) -> bytes:
        start_byte, end_byte, first_line = ref.locator
        try:
            return criteo.read_byte_range(Path(ref.path), start_byte, end_byte)
        except OSError as exc:
            raise SampleError(f"{ref.path}:{first_line}", f"cannot read: {exc.strerror or exc}") from exc
        except EOFError as exc:
            raise SampleError(f"{ref.path}:{first_line}", f"file shorter than indexed: {exc}") from exc

    def preprocess(self, ref: SampleRef, raw: bytes) -> RequestRows:
        import torch

        _, _, first_line = ref.locator
        try:
            parsed = criteo.parse_rows(raw, self.table_rows, first_line=first_line, expected_rows=self.rows_per_request)
        except criteo.CriteoRowError as exc:
            raise SampleError(f"{ref.path}:{exc.line_number}", exc.message) from exc
        return RequestRows(dense=torch.from_numpy(parsed.dense), sparse=torch.from_numpy(parsed.sparse),
                           labels=parsed.labels, path=ref.path, first_line=first_line, rows=int(parsed.dense.shape[0]))

    def collate(self, items: list[RequestRows]) -> RowBatch:
        import torch

        offsets = [0]
        for item in items:
            offsets.append(offsets[-1] + item.rows)
        return RowBatch(dense=torch.cat([item.dense for item in items], dim=0),
                        sparse=torch.cat([item.sparse for item in items], dim=1),
                        labels=np.concatenate([item.labels for item in items]),
                        request_offsets=offsets, paths=[item.path for item in items],
                        first_lines=[item.first_line for item in items])

    def infer(self, batch: RowBatch) -> Any:
        import torch

        if self.model is None:
            raise AppError(f"{self.name}: infer() before load()")
        with torch.inference_mode():
            logits = self.model(batch.dense.to(self.device), batch.sparse.to(self.device))
            return logits.float().cpu()         # the copy back waits for the device: inference ends here

    def postprocess(self, output: Any, batch: RowBatch) -> list[dict]:
        import torch

        ctr = torch.sigmoid(output).numpy()
        answers = []
        for i, first_line in enumerate(batch.first_lines):
            rows = slice(batch.request_offsets[i], batch.request_offsets[i + 1])
            request_ctr = ctr[rows]
            ranked = np.argsort(-request_ctr, kind="stable")[: self.top_k]
            answers.append({
                "file": batch.paths[i],
                "first_line": first_line,
                "top_k": [[first_line + int(row), float(request_ctr[row])] for row in ranked],
                "ctr": request_ctr.tolist(),
                "label": batch.labels[rows].tolist(),
            })
        return answers

    # -- reporting ---------------------------------------------------------------------------
    def quality(self, answers: list[Any], refs: list[SampleRef]) -> dict:
        """ROC AUC over every row of the answered requests.  Uses only the answers (their CTRs and labels), so
        it does not depend on ``refs`` being in the answers' order; failed requests (``None``) are skipped."""
        scores: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        for answer in answers:
            if not isinstance(answer, dict) or "ctr" not in answer or "label" not in answer:
                continue
            if len(answer["ctr"]) != len(answer["label"]):
                continue
            scores.append(np.asarray(answer["ctr"], dtype=np.float64))
            labels.append(np.asarray(answer["label"], dtype=np.int8))
        if not scores:
            return {}
        all_scores = np.concatenate(scores)
        all_labels = np.concatenate(labels)
        result: dict[str, Any] = {
            "auc_rows": int(all_labels.size),
            "click_rate": float(all_labels.mean()),
            "auc_meaningful": self.weights_source != "random",
        }
        try:
            result["auc"] = roc_auc(all_scores, all_labels)
        except ValueError as exc:
            result["auc_note"] = f"AUC undefined: {exc}"
            return result
        if self.weights_source == "random":
            result["auc_note"] = "random weights: the AUC measures nothing about the model (about 0.5)"
        return result

    def describe(self) -> dict:
        info = super().describe()
        info.update(table_rows=list(self.config.table_rows), parameters=self.config.parameter_count(),
                    weights=self.weights_source)
        return info

    # -- data --------------------------------------------------------------------------------
    @classmethod
    def make_data(cls, out: Path, count: int, seed: int = 0, **options: Any) -> Path:
        """``out/train.txt`` with ``count`` requests of ``rows_per_request`` synthetic Criteo rows; returns ``out``."""
        known = {o.name for o in cls.options}
        unknown = sorted(set(options) - known)
        if unknown:
            raise AppError(f"{cls.name}: unknown option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(known))}")
        rows_per_request = _int_option(cls.name, "rows_per_request",
                                       options.get("rows_per_request", DEFAULT_ROWS_PER_REQUEST), 1)
        count = _int_option(cls.name, "count", count, 0)
        seed = _int_option(cls.name, "seed", seed, 0)
        return criteo.make_criteo(Path(out), count, seed=seed, rows_per_request=rows_per_request)
