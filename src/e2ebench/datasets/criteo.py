"""Criteo click logs: the TSV format, a parser for DLRM, a row-group index, and a realistic synthetic generator.

Format (Criteo Kaggle Display Advertising Challenge ``train.txt`` and Criteo Terabyte ``day_0`` .. ``day_23``):
one impression per line, 40 tab-separated columns, no header::

    label  I1 .. I13  C1 .. C26

* ``label``: ``0`` or ``1`` (clicked);
* ``I1`` .. ``I13``: integer counts, decimal, may be empty (missing) and may be negative (a few in I2);
* ``C1`` .. ``C26``: categorical values hashed by Criteo to 32 bits, written as 8 lower-case hex digits,
  may be empty (missing).

Pre-processing (what :func:`parse_rows` does, as MLPerf's DLRM reference does it):

* dense: missing -> 0, negative -> 0, then ``log(1 + x)`` in float32;
* categorical: hex -> unsigned integer (missing -> 0), then the row of table ``t`` is
  ``value mod rows_t`` (:func:`hash_categorical`).  This is the reference's ``--max-ind-range`` modulo, applied
  to the raw 32-bit Criteo hash instead of to a dictionary id: the reference first maps every value to a
  dense id through dictionaries built over the whole training set (a pass over all the data that per-request
  pre-processing cannot make).  Consequences: a missing value lands in row 0 (which it shares with every value
  that is a multiple of ``rows_t``), tables smaller than their cardinality see collisions, and a checkpoint
  trained with dictionary ids loads (shapes match) but its rows do not mean the same categories.

A request is ``rows_per_request`` consecutive lines; :func:`index_row_groups` finds their byte ranges with
one pass over the newlines (no parsing), so the io phase reads exactly those bytes.  Rows of a file that do not
fill a whole request at its end are not used.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np

NUM_DENSE = 13
NUM_CATEGORICAL = 26
NUM_COLUMNS = 1 + NUM_DENSE + NUM_CATEGORICAL          # 40
DATA_FILE_NAME = "train.txt"
#: ``samples()`` indexes at most this many requests per data set (the first ones), so that pointing at a
#: 46 GB Terabyte day does not scan the whole file.  131,072 requests of 128 rows = 16.8 M rows.
MAX_INDEXED_REQUESTS = 131_072
_INDEX_CHUNK_BYTES = 1 << 24

#: Rows of the 26 categorical features C1..C26 in Criteo Kaggle (``kaggleAdDisplayChallenge_processed.npz`` counts
#: of the MLPerf / Facebook DLRM Kaggle configuration): the DLRM's table sizes before the row cap.
KAGGLE_CARDINALITIES: tuple[int, ...] = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)

# One whole valid row: label, 13 optional (possibly negative) decimal integers, 26 optional hex values.
# Bounded digit counts keep every value inside int64 / uint64.
_VALID_ROW = re.compile(rb"[01](?:\t(?:-?[0-9]{1,18})?){13}(?:\t[0-9a-fA-F]{0,16}){26}")
_VALID_INTEGER = re.compile(rb"-?[0-9]{1,18}")
_VALID_HEX = re.compile(rb"[0-9a-fA-F]{1,16}")


class CriteoRowError(ValueError):
    """A malformed row.  ``line_number`` is 1-based within its file."""

    def __init__(self, line_number: int, message: str):
        super().__init__(f"line {line_number}: {message}")
        self.line_number = line_number
        self.message = message


@dataclasses.dataclass(frozen=True)
class RowGroup:
    """Where a request's rows are: bytes ``[start_byte, end_byte)`` of the file, starting at line ``first_line``
    (1-based), ``rows`` lines."""

    start_byte: int
    end_byte: int
    first_line: int
    rows: int


@dataclasses.dataclass
class ParsedRows:
    """Model-ready rows of one request.

    ``labels``: int8 ``(rows,)``; ``dense``: float32 ``(rows, 13)`` after ``log(1 + max(x, 0))``;
    ``sparse``: int64 ``(26, rows)`` table row indices (one line per table, contiguous for the lookups).
    """

    labels: np.ndarray
    dense: np.ndarray
    sparse: np.ndarray


# --------------------------------------------------------------------------------------------- parsing
def _show(value: bytes, limit: int = 40) -> str:
    text = value.decode("utf-8", "backslashreplace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def describe_row_error(line: bytes) -> str:
    """Say what is wrong with a line that failed the row check (column count, then the first bad field)."""
    fields = line.split(b"\t")
    if len(fields) != NUM_COLUMNS:
        return (f"expected {NUM_COLUMNS} tab-separated columns (label, I1-I13, C1-C26), "
                f"got {len(fields)}{' (empty line)' if not line else ''}")
    if fields[0] not in (b"0", b"1"):
        return f"label is {_show(fields[0])}, not 0 or 1"
    for i, value in enumerate(fields[1:1 + NUM_DENSE], start=1):
        if value and not _VALID_INTEGER.fullmatch(value):
            return f"integer column I{i} is {_show(value)}, not a decimal integer"
    for i, value in enumerate(fields[1 + NUM_DENSE:], start=1):
        if value and not _VALID_HEX.fullmatch(value):
            return f"categorical column C{i} is {_show(value)}, not a hexadecimal value of at most 16 digits"
    return "malformed row"


def split_lines(raw: bytes) -> list[bytes]:
    """Lines of a byte range (``\\n`` or ``\\r\\n`` ends; a missing final newline is allowed)."""
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def hash_categorical(values: np.ndarray, table_rows: np.ndarray) -> np.ndarray:
    """Table rows of categorical values: ``value mod rows_t`` per column.

    ``values``: uint64 ``(rows, 26)`` (the hex values as integers, missing = 0); ``table_rows``: ``(26,)``.
    Returns int64 ``(26, rows)``, C-contiguous.
    """
    rows = np.asarray(table_rows, dtype=np.uint64)
    return np.ascontiguousarray((values % rows[None, :]).T.astype(np.int64))


def dense_transform(values: np.ndarray) -> np.ndarray:
    """``log(1 + x)`` of the integer features with negative values clamped to 0, float32 (the reference's)."""
    return np.log1p(np.maximum(values, 0).astype(np.float32))


def parse_rows(raw: bytes, table_rows: Sequence[int] | np.ndarray, first_line: int = 1,
               expected_rows: int | None = None) -> ParsedRows:
    """Parse Criteo TSV lines into model-ready arrays.

    Raises :class:`CriteoRowError` naming the (1-based) line number of the first bad row: a wrong column count,
    a label other than 0/1, a non-integer dense value or a non-hex categorical value.  One bad row fails the
    whole request: a request is a user's candidate list and is ranked as a whole.

    Two paths give identical results: a vectorised one for the common case (every categorical value 8 hex
    digits or empty, integers of at most 18 characters), checked with whole-request byte tests, and a per-row
    one (regular expression per line, Python ``int``) for anything else, which also finds and names the bad row.
    """
    lines = split_lines(raw)
    if expected_rows is not None and len(lines) != expected_rows:
        raise CriteoRowError(first_line, f"expected {expected_rows} rows from line {first_line}, found {len(lines)} "
                                         "(did the file change after it was indexed?)")
    if not lines:
        raise CriteoRowError(first_line, "no rows")
    columns = _split_common_case(lines)
    if columns is None:
        columns = _split_checked(lines, first_line)
    labels, dense, categorical = columns
    return ParsedRows(labels=labels, dense=dense_transform(dense),
                      sparse=hash_categorical(categorical, np.asarray(table_rows)))


_HEX_DIGITS = b"0123456789abcdefABCDEF"
_ROW_BYTES = _HEX_DIGITS + b"\t-"


def _split_common_case(lines: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Labels, integer and categorical columns of well-formed rows in the common shape, or ``None`` to say
    "use the per-row path" (something is unusual or wrong; that path decides which)."""
    joined = b"\t".join(lines)
    if joined.translate(None, _ROW_BYTES):                      # a byte that no valid row contains
        return None
    if any(line.count(b"\t") != NUM_COLUMNS - 1 for line in lines):
        return None
    fields = np.array(joined.split(b"\t"), dtype=object).reshape(len(lines), NUM_COLUMNS)
    label_text = b"".join(fields[:, 0])
    if len(label_text) != len(lines) or label_text.translate(None, b"01"):
        return None
    dense_fields = fields[:, 1:1 + NUM_DENSE].ravel()
    dense_text = b"\t" + b"\t".join(dense_fields)          # every field preceded by a tab
    if dense_text.translate(None, b"0123456789-\t") or max(map(len, dense_fields)) > 18:
        return None
    if b"-" in dense_text:                                    # a minus only as the first byte of a number
        if b"-" in dense_text.replace(b"\t-", b"\t") or b"\t-\t" in dense_text or dense_text.endswith(b"\t-"):
            return None
    dense_fields[dense_fields == b""] = b"0"
    categorical_fields = fields[:, 1 + NUM_DENSE:].ravel()
    categorical_fields[categorical_fields == b""] = b"00000000"
    categorical_text = b"".join(categorical_fields)
    if len(categorical_text) != 8 * categorical_fields.size or categorical_text.translate(None, _HEX_DIGITS):
        return None
    labels = (np.frombuffer(label_text, dtype=np.uint8) - ord("0")).astype(np.int8)
    dense = dense_fields.astype("S18").astype(np.int64).reshape(len(lines), NUM_DENSE)
    categorical = np.frombuffer(bytes.fromhex(categorical_text.decode("ascii")), dtype=">u4")
    return labels, dense, categorical.astype(np.uint64).reshape(len(lines), NUM_CATEGORICAL)


def _split_checked(lines: list[bytes], first_line: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The per-row path: check every line, convert with Python ``int``; raise on the first bad row."""
    fields_per_row = []
    for offset, line in enumerate(lines):
        if not _VALID_ROW.fullmatch(line):
            raise CriteoRowError(first_line + offset, describe_row_error(line))
        fields_per_row.append(line.split(b"\t"))
    labels = np.fromiter((fields[0] == b"1" for fields in fields_per_row), dtype=np.int8, count=len(lines))
    dense = np.array([[int(v) if v else 0 for v in fields[1:1 + NUM_DENSE]] for fields in fields_per_row],
                     dtype=np.int64)
    categorical = np.array([[int(v, 16) if v else 0 for v in fields[1 + NUM_DENSE:]] for fields in fields_per_row],
                           dtype=np.uint64)
    return labels, dense, categorical


# --------------------------------------------------------------------------------------------- files + index
def _day_number(path: Path) -> int:
    suffix = path.name.removeprefix("day_")
    return int(suffix) if suffix.isdigit() else 1 << 30


def criteo_files(data: Path) -> list[Path]:
    """The TSV files of a data set: ``data`` itself if it is a file; in a folder, ``train.txt`` if present,
    else the ``day_N`` files in day order.  Raises ``FileNotFoundError`` saying what was looked for."""
    data = Path(data)
    if data.is_file():
        return [data]
    if not data.is_dir():
        raise FileNotFoundError(f"Criteo data {data} does not exist")
    train = data / DATA_FILE_NAME
    if train.is_file():
        return [train]
    days = sorted((p for p in data.glob("day_*") if p.is_file() and p.name.removeprefix("day_").isdigit()),
                  key=_day_number)
    if days:
        return days
    compressed = sorted(p.name for p in data.glob("day_*.gz")) + sorted(p.name for p in data.glob("*.tar.gz"))
    hint = f" (found compressed {', '.join(compressed[:3])}: decompress them first)" if compressed else ""
    raise FileNotFoundError(f"no Criteo data in {data}: expected {DATA_FILE_NAME} or day_0 .. day_23{hint}")


def index_row_groups(path: Path, rows_per_group: int, max_groups: int | None = None) -> list[RowGroup]:
    """Byte ranges of consecutive groups of ``rows_per_group`` lines, from the start of ``path``.

    One pass over the file's newlines (numpy on 16 MiB chunks), stopping after ``max_groups`` groups.
    A final line without a newline counts; trailing lines that do not fill a group are left out.
    """
    if rows_per_group < 1:
        raise ValueError(f"rows_per_group must be >= 1, got {rows_per_group}")
    groups: list[RowGroup] = []
    lines_done = 0            # complete lines seen so far
    group_start = 0
    position = 0              # bytes consumed
    last_line_end = 0
    with open(path, "rb") as f:
        while max_groups is None or len(groups) < max_groups:
            chunk = f.read(_INDEX_CHUNK_BYTES)
            if not chunk:
                break
            line_ends = position + np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10) + 1
            # index (in line_ends) of the next line that completes a group
            next_complete = rows_per_group - 1 - (lines_done % rows_per_group)
            for i in range(next_complete, len(line_ends), rows_per_group):
                end = int(line_ends[i])
                first_line = (lines_done + i + 1) - rows_per_group + 1
                groups.append(RowGroup(group_start, end, first_line, rows_per_group))
                group_start = end
                if max_groups is not None and len(groups) >= max_groups:
                    break
            if len(line_ends):
                last_line_end = int(line_ends[-1])
            lines_done += len(line_ends)
            position += len(chunk)
    if (max_groups is None or len(groups) < max_groups) and position > last_line_end:
        # the file ends without a newline: its last line counts
        lines_done += 1
        if lines_done % rows_per_group == 0:
            groups.append(RowGroup(group_start, position, lines_done - rows_per_group + 1, rows_per_group))
    return groups


def read_byte_range(path: Path, start_byte: int, end_byte: int) -> bytes:
    """Exactly the bytes ``[start_byte, end_byte)`` of ``path``; ``EOFError`` if the file is shorter."""
    with open(path, "rb") as f:
        f.seek(start_byte)
        data = f.read(end_byte - start_byte)
    if len(data) != end_byte - start_byte:
        raise EOFError(f"expected {end_byte - start_byte} bytes at offset {start_byte}, got {len(data)}")
    return data


# --------------------------------------------------------------------------------------------- generator
#: Fraction of empty values per integer column I1..I13 (close to Criteo Kaggle's train.txt).
DENSE_MISSING_RATE = (0.45, 0.0, 0.21, 0.22, 0.03, 0.22, 0.04, 0.001, 0.04, 0.45, 0.04, 0.77, 0.22)
#: Median and log-scale spread of each integer column (lognormal, heavy-tailed like Criteo's counts).
DENSE_MEDIAN = (1.0, 3.0, 7.0, 4.0, 2900.0, 33.0, 3.0, 8.0, 40.0, 0.5, 1.0, 0.2, 4.0)
DENSE_SIGMA = (1.3, 1.9, 1.6, 0.9, 1.6, 1.6, 1.5, 0.9, 1.3, 0.8, 1.0, 1.0, 1.0)
#: Fraction of I2 values written as small negative numbers (-1..-3), as in the real I2.
I2_NEGATIVE_RATE = 0.04
#: Fraction of empty values per categorical column C1..C26 (close to Criteo Kaggle's train.txt).
CATEGORICAL_MISSING_RATE = (
    0.0, 0.0, 0.034, 0.034, 0.0, 0.12, 0.0, 0.0, 0.0, 0.0, 0.0, 0.034, 0.0,
    0.0, 0.0, 0.034, 0.0, 0.0, 0.44, 0.44, 0.034, 0.76, 0.0, 0.034, 0.44, 0.44,
)
#: Distinct values a generated categorical column draws from: min(cardinality, this).
GENERATED_VOCABULARY_LIMIT = 200_000
#: Zipf exponent of the categorical value frequencies (value of rank k has probability ~ k^-s).
ZIPF_EXPONENT = 1.1
#: Click-through rate of the generated rows (the real-world rate; Kaggle's train.txt is down-sampled to 26%).
TARGET_CTR = 0.03
_GENERATOR_CHUNK_ROWS = 4096


@dataclasses.dataclass(frozen=True)
class _Vocabulary:
    values: list[np.ndarray]         # per column: 8-hex-digit strings, most frequent first
    cumulative: list[np.ndarray]     # per column: cumulative Zipf probabilities


def _vocabulary(seed: int) -> _Vocabulary:
    rng = np.random.default_rng([seed, 0])
    values, cumulative = [], []
    for cardinality in KAGGLE_CARDINALITIES:
        size = min(cardinality, GENERATED_VOCABULARY_LIMIT)
        codes = rng.choice(1 << 32, size=size, replace=False) if size < 1000 else rng.integers(0, 1 << 32, size=size)
        hex_text = np.asarray(codes, dtype=">u4").tobytes().hex().encode("ascii")
        values.append(np.frombuffer(hex_text, dtype="S8").astype("U8"))
        weights = np.arange(1, size + 1, dtype=np.float64) ** -ZIPF_EXPONENT
        cdf = np.cumsum(weights)
        cumulative.append(cdf / cdf[-1])
    return _Vocabulary(values, cumulative)


def _generate_chunk(seed: int, chunk_index: int, vocabulary: _Vocabulary) -> list[str]:
    """``_GENERATOR_CHUNK_ROWS`` rows; chunk ``i`` depends only on (seed, i), so any file is a prefix of a longer one."""
    rng = np.random.default_rng([seed, 1, chunk_index])
    n = _GENERATOR_CHUNK_ROWS
    columns: list[np.ndarray] = []
    dense_values = np.empty((n, NUM_DENSE), dtype=np.int64)
    dense_missing = np.empty((n, NUM_DENSE), dtype=bool)
    for j in range(NUM_DENSE):
        draws = np.floor((DENSE_MEDIAN[j] + 1.0) * np.exp(DENSE_SIGMA[j] * rng.standard_normal(n)) - 1.0)
        dense_values[:, j] = np.maximum(draws, 0).astype(np.int64)
        dense_missing[:, j] = rng.random(n) < DENSE_MISSING_RATE[j]
    negatives = rng.random(n) < I2_NEGATIVE_RATE
    dense_values[negatives, 1] = -rng.integers(1, 4, size=int(negatives.sum()))
    ranks = np.empty((n, NUM_CATEGORICAL), dtype=np.int64)
    categorical_missing = np.empty((n, NUM_CATEGORICAL), dtype=bool)
    for j in range(NUM_CATEGORICAL):
        ranks[:, j] = np.searchsorted(vocabulary.cumulative[j], rng.random(n), side="right")
        ranks[:, j] = np.minimum(ranks[:, j], len(vocabulary.values[j]) - 1)
        categorical_missing[:, j] = rng.random(n) < CATEGORICAL_MISSING_RATE[j]
    # Labels: a weak logistic dependence on a few features around the target rate.
    i7 = np.where(dense_missing[:, 6], 0, np.maximum(dense_values[:, 6], 0))
    score = (0.35 * (np.log1p(i7) - 1.4)
             + 0.5 * (ranks[:, 5] == 0) - 0.25
             - 0.3 * (dense_missing[:, 0] - 0.45)
             + 0.4 * ((ranks[:, 13] % 3 == 0) - 1 / 3))
    logit = math.log(TARGET_CTR / (1 - TARGET_CTR)) - 0.05 + score
    labels = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))

    columns.append(np.where(labels, "1", "0"))
    dense_text = dense_values.astype(str)
    for j in range(NUM_DENSE):
        columns.append(np.where(dense_missing[:, j], "", dense_text[:, j]))
    for j in range(NUM_CATEGORICAL):
        columns.append(np.where(categorical_missing[:, j], "", vocabulary.values[j][ranks[:, j]]))
    return ["\t".join(row) for row in zip(*(c.tolist() for c in columns))]


def make_criteo(out: Path, count: int, seed: int = 0, rows_per_request: int = 128) -> Path:
    """Write ``out/train.txt``: ``count * rows_per_request`` Criteo-format rows (40 tab-separated columns,
    no header), deterministic for a given seed, with Criteo-like missing rates, heavy-tailed counts,
    Zipf-skewed 8-hex-digit categorical values and ~3% clicks.  Returns ``out``."""
    if count < 0 or rows_per_request < 1:
        raise ValueError(f"need count >= 0 and rows_per_request >= 1, got {count} and {rows_per_request}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    total_rows = count * rows_per_request
    vocabulary = _vocabulary(seed)
    target = out / DATA_FILE_NAME
    partial = out / (DATA_FILE_NAME + ".partial")
    with open(partial, "w", encoding="ascii", newline="\n") as f:
        written = 0
        chunk_index = 0
        while written < total_rows:
            rows = _generate_chunk(seed, chunk_index, vocabulary)[: total_rows - written]
            f.write("\n".join(rows))
            f.write("\n")
            written += len(rows)
            chunk_index += 1
    partial.replace(target)
    return out
