"""DLRM (Deep Learning Recommendation Model) in plain PyTorch, MLPerf Criteo Kaggle configuration.

The network is the one of MLPerf Inference's recommendation benchmark (Facebook's ``dlrm_s_pytorch.py``) with the
Criteo Kaggle arguments ``--arch-sparse-feature-size=16 --arch-mlp-bot=13-512-256-64-16
--arch-mlp-top=512-256-1 --arch-interaction-op=dot``:

* bottom MLP 13-512-256-64-16 with ReLU after every layer turns the 13 dense features into one 16-vector;
* 26 embedding tables (``nn.EmbeddingBag``, mode ``sum``, one index per bag) turn the 26 categorical features
  into 26 16-vectors;
* dot interaction: the pairwise dot products of the 27 vectors, lower triangle without the diagonal
  (27 * 26 / 2 = 351 values), concatenated after the bottom-MLP output (16) -> 367 values;
* top MLP 367-512-256-1, ReLU between layers.  The final sigmoid of the reference is *not* part of
  :meth:`DLRM.forward`: the model returns the logit and the application applies the sigmoid in its
  post-processing (the result is identical; the sigmoid has no parameters).

Table sizes.  The Criteo Kaggle cardinalities (:data:`CRITEO_KAGGLE_CARDINALITIES`) sum to 33,762,577 rows,
540,201,232 embedding parameters, 2.16 GB in fp32.  Each table is capped at ``max_rows_per_table`` rows
(``rows = min(cardinality, cap)``; the reference's ``--max-ind-range``).  The default cap
:data:`DEFAULT_MAX_ROWS_PER_TABLE` = 3,000,000 caps four tables (C3, C12, C16, C21; C4 keeps its 2,202,608
rows) and gives 14,771,904 embedding rows:

* embedding parameters 14,771,904 * 16 = 236,350,464
* MLP parameters 155,984 (bottom) + 320,001 (top) = 475,985
* total **236,826,449 parameters = 947,305,796 bytes fp32 (0.95 GB, 903 MiB)**,
  close to the 1 GB model size the paper reports for MLPerf's DLRM, and well under 2 GB with PyTorch itself.

``max_rows_per_table=0`` means no cap (the full Kaggle model, 540,677,217 parameters, 2.16 GB).

Module names are the reference's (``emb_l.<t>.weight``, ``bot_l.<2i>.weight``/``.bias``,
``top_l.<2i>.weight``/``.bias``), so a state dict saved by ``dlrm_s_pytorch.py`` with the same
architecture loads unchanged.

Initialisation follows the reference (seeded with a private ``torch.Generator``): embedding rows
uniform in [-sqrt(1/rows), sqrt(1/rows)], linear weights normal(0, sqrt(2/(fan_in+fan_out))), biases
normal(0, sqrt(1/fan_out)).

``tiny`` keeps the 26 tables of dimension 16 (so the interaction is still 367 wide) but caps them at
:data:`TINY_MAX_ROWS_PER_TABLE` rows and uses bottom MLP 13-64-16 and top MLP 367-64-1: it exists only so that
tests run in milliseconds (293,185 parameters).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from e2ebench.models.checkpoints import WeightsError, read_state_dict

from e2ebench.datasets.criteo import KAGGLE_CARDINALITIES

#: Rows of the 26 categorical features of Criteo Kaggle Display Advertising Challenge (C1..C26), as used by
#: the MLPerf / Facebook DLRM Kaggle configuration (a property of the data set, defined with its format).
CRITEO_KAGGLE_CARDINALITIES: tuple[int, ...] = KAGGLE_CARDINALITIES
NUM_DENSE_FEATURES = 13
NUM_SPARSE_FEATURES = len(CRITEO_KAGGLE_CARDINALITIES)   # 26
EMBEDDING_DIM = 16

#: Default cap on rows per embedding table: 236,826,449 parameters, 947,305,796 bytes in fp32.
DEFAULT_MAX_ROWS_PER_TABLE = 3_000_000
DEFAULT_PARAMETER_COUNT = 236_826_449
#: Row cap of the ``tiny`` variant's tables.
TINY_MAX_ROWS_PER_TABLE = 1000

VARIANTS = ("full", "tiny")


# a weights file that cannot be read or does not fit the model (names, shapes, table sizes)
CheckpointError = WeightsError


def table_rows(max_rows_per_table: int, cardinalities: Sequence[int] = CRITEO_KAGGLE_CARDINALITIES) -> tuple[int, ...]:
    """Rows of each embedding table: ``min(cardinality, cap)``; a cap of 0 means no cap."""
    if max_rows_per_table < 0:
        raise ValueError(f"max_rows_per_table must be >= 0 (0 = no cap), got {max_rows_per_table}")
    if max_rows_per_table == 0:
        return tuple(int(c) for c in cardinalities)
    return tuple(min(int(c), max_rows_per_table) for c in cardinalities)


@dataclasses.dataclass(frozen=True)
class DLRMConfig:
    """Shape of a DLRM.

    ``bottom_mlp``: layer widths from the 13 dense inputs to the embedding dimension;
    ``top_mlp``: hidden widths after the interaction, ending in 1 (the click logit);
    ``table_rows``: rows of each of the 26 embedding tables (after the cap).
    """

    table_rows: tuple[int, ...]
    embedding_dim: int = EMBEDDING_DIM
    bottom_mlp: tuple[int, ...] = (NUM_DENSE_FEATURES, 512, 256, 64, EMBEDDING_DIM)
    top_mlp: tuple[int, ...] = (512, 256, 1)

    def __post_init__(self) -> None:
        if self.bottom_mlp[-1] != self.embedding_dim:
            raise ValueError(f"bottom MLP must end in the embedding dimension {self.embedding_dim}: {self.bottom_mlp}")
        if self.top_mlp[-1] != 1:
            raise ValueError(f"top MLP must end in 1 output: {self.top_mlp}")
        if any(rows < 1 for rows in self.table_rows):
            raise ValueError(f"every table needs at least one row: {self.table_rows}")

    @property
    def num_vectors(self) -> int:
        """Vectors that interact: the bottom-MLP output plus one per table (27)."""
        return 1 + len(self.table_rows)

    @property
    def interaction_dim(self) -> int:
        """Width of the top MLP's input: pairwise dot products below the diagonal plus the dense vector (367)."""
        n = self.num_vectors
        return n * (n - 1) // 2 + self.embedding_dim

    def parameter_count(self) -> int:
        """Parameters of the model, computed from the shape alone (embeddings + both MLPs' weights and biases)."""
        count = sum(self.table_rows) * self.embedding_dim
        bottom = list(self.bottom_mlp)
        top = [self.interaction_dim] + list(self.top_mlp)
        for layers in (bottom, top):
            count += sum(n_in * n_out + n_out for n_in, n_out in zip(layers[:-1], layers[1:]))
        return count


def dlrm_config(variant: str = "full", max_rows_per_table: int = DEFAULT_MAX_ROWS_PER_TABLE) -> DLRMConfig:
    """The MLPerf Kaggle DLRM (``full``) or its test-sized sibling (``tiny``) with tables capped as documented."""
    if variant == "full":
        return DLRMConfig(table_rows=table_rows(max_rows_per_table))
    if variant == "tiny":
        cap = TINY_MAX_ROWS_PER_TABLE if max_rows_per_table == 0 else min(max_rows_per_table, TINY_MAX_ROWS_PER_TABLE)
        return DLRMConfig(table_rows=table_rows(cap), bottom_mlp=(NUM_DENSE_FEATURES, 64, EMBEDDING_DIM), top_mlp=(64, 1))
    raise ValueError(f"unknown DLRM variant {variant!r}; accepted: {', '.join(VARIANTS)}")


def _mlp(widths: Sequence[int], relu_after_last: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(n_in, n_out, bias=True))
        if i < len(widths) - 2 or relu_after_last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    """DLRM with dot interaction.  ``forward(dense, sparse)`` returns one click logit per row.

    ``dense``: float32 ``(rows, 13)`` (already ``log(1+x)``-transformed);
    ``sparse``: int64 ``(26, rows)`` row indices, one line per table (each < that table's rows).
    """

    def __init__(self, config: DLRMConfig):
        super().__init__()
        self.config = config
        self.emb_l = nn.ModuleList(
            nn.EmbeddingBag(rows, config.embedding_dim, mode="sum") for rows in config.table_rows
        )
        self.bot_l = _mlp(config.bottom_mlp, relu_after_last=True)
        self.top_l = _mlp([config.interaction_dim, *config.top_mlp], relu_after_last=False)
        lower_rows, lower_cols = torch.tril_indices(config.num_vectors, config.num_vectors, offset=-1)
        self.register_buffer("interaction_rows", lower_rows, persistent=False)
        self.register_buffer("interaction_cols", lower_cols, persistent=False)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """The reference's initialisation, drawn from ``generator`` (deterministic for a given seed)."""
        for table in self.emb_l:
            bound = math.sqrt(1.0 / table.num_embeddings)
            table.weight.uniform_(-bound, bound, generator=generator)
        for mlp in (self.bot_l, self.top_l):
            for layer in mlp:
                if isinstance(layer, nn.Linear):
                    n_out, n_in = layer.weight.shape
                    layer.weight.normal_(0.0, math.sqrt(2.0 / (n_in + n_out)), generator=generator)
                    layer.bias.normal_(0.0, math.sqrt(1.0 / n_out), generator=generator)

    def interact(self, dense_vector: torch.Tensor, embedded: list[torch.Tensor]) -> torch.Tensor:
        """Dot interaction: ``(rows, 16)`` and 26 ``(rows, 16)`` -> ``(rows, 367)`` (dense vector first)."""
        stacked = torch.stack([dense_vector, *embedded], dim=1)                 # (rows, 27, 16)
        products = torch.bmm(stacked, stacked.transpose(1, 2))                  # (rows, 27, 27)
        lower = products[:, self.interaction_rows, self.interaction_cols]       # (rows, 351)
        return torch.cat([dense_vector, lower], dim=1)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        dense_vector = self.bot_l(dense)
        embedded = [table(sparse[t].unsqueeze(1)) for t, table in enumerate(self.emb_l)]
        return self.top_l(self.interact(dense_vector, embedded)).squeeze(1)


def build_dlrm(
    variant: str = "full",
    max_rows_per_table: int = DEFAULT_MAX_ROWS_PER_TABLE,
    seed: int | None = 0,
    device: str | torch.device = "cpu",
) -> DLRM:
    """Build the model.  ``seed=None`` leaves the parameters uninitialised (to be filled from a checkpoint);
    ``device="meta"`` builds it without memory (for counting parameters)."""
    config = dlrm_config(variant, max_rows_per_table)
    with torch.device("meta"):
        model = DLRM(config)
    if str(device) == "meta":
        return model
    model = model.to_empty(device="cpu")
    # to_empty leaves the non-persistent index buffers uninitialised too: rebuild them.
    rows, cols = torch.tril_indices(config.num_vectors, config.num_vectors, offset=-1)
    model.interaction_rows, model.interaction_cols = rows, cols
    if seed is not None:
        model.reset_parameters(torch.Generator().manual_seed(int(seed)))
    return model.to(device)


def check_state_dict(model: DLRM, state: Mapping[str, torch.Tensor], source: str, shown_keys: int = 5) -> None:
    """Raise :class:`CheckpointError` saying exactly why ``state`` does not fit ``model``."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    problems: list[str] = []
    if missing:
        problems.append(f"missing {len(missing)} tensors ({', '.join(missing[:shown_keys])}{', ...' if len(missing) > shown_keys else ''})")
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected tensors ({', '.join(unexpected[:shown_keys])}{', ...' if len(unexpected) > shown_keys else ''})"
        )
    table_mismatches: list[tuple[int, int, int]] = []      # (table, checkpoint rows, model rows)
    for name in sorted(set(expected) & set(state)):
        got = tuple(state[name].shape)
        if got == expected[name]:
            continue
        if name.startswith("emb_l.") and len(got) == 2 and got[1] == expected[name][1]:
            table_mismatches.append((int(name.split(".")[1]), got[0], expected[name][0]))
        else:
            problems.append(f"{name}: checkpoint shape {got}, model shape {expected[name]}")
    if table_mismatches:
        table_mismatches.sort()
        checkpoint_cap = max(int(state[f"emb_l.{t}.weight"].shape[0])
                             for t in range(len(model.emb_l)) if f"emb_l.{t}.weight" in state)
        shown = "; ".join(f"table {t} has {got:,} rows, the model {want:,}" for t, got, want in table_mismatches[:shown_keys])
        if any(got > want for _, got, want in table_mismatches):
            problems.insert(0, f"its embedding tables are bigger than the row cap ({shown}): run with the option "
                               f"max_rows_per_table={checkpoint_cap} (or 0 for no cap) to load it")
        else:
            problems.insert(0, f"its embedding tables are smaller than the model's ({shown}): it was made with a "
                               f"lower row cap; run with the option max_rows_per_table={checkpoint_cap}")
    if problems:
        raise CheckpointError(f"weights file {source} does not fit the DLRM: " + "; ".join(problems))


def load_dlrm(path: Path, variant: str = "full", max_rows_per_table: int = DEFAULT_MAX_ROWS_PER_TABLE,
              device: str | torch.device = "cpu") -> DLRM:
    """Build the model and fill it from the checkpoint at ``path`` (no random initialisation is paid)."""
    state = read_state_dict(path)
    model = build_dlrm(variant, max_rows_per_table, seed=None, device="meta")
    check_state_dict(model, state, str(path))
    state = {name: tensor.to(torch.float32) for name, tensor in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    rows, cols = torch.tril_indices(model.config.num_vectors, model.config.num_vectors, offset=-1)
    model.interaction_rows, model.interaction_cols = rows, cols
    return model.to(device)
