"""Reading model checkpoints, shared by every plain-PyTorch model.

``read_state_dict`` opens ``.safetensors`` or ``torch.save`` files (``weights_only=True``), unwraps a
``{"state_dict": ...}`` / ``{"model": ...}`` training checkpoint and strips ``module.`` prefixes
(``DataParallel``); ``state_dict_problems`` says exactly which keys are missing, unexpected or of the
wrong shape, so that a bad checkpoint fails with a message naming them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import torch

WRAPPERS = ("state_dict", "model")


class WeightsError(ValueError):
    """A checkpoint that does not fit the network (missing / unexpected keys, wrong shapes, unreadable)."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, in memory (a mapped ``.safetensors`` file is copied so that no timed
    inference pages weights in)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded = {name: tensor.clone() for name, tensor in load_file(str(path), device="cpu").items()}
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the libraries raise many kinds; all mean "not a readable checkpoint"
        raise WeightsError(f"cannot read weights file {path}: {exc}") from exc
    if isinstance(loaded, Mapping):
        for wrapper in WRAPPERS:
            inner = loaded.get(wrapper)
            if isinstance(inner, Mapping):
                loaded = inner
                break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict (a mapping of names to tensors)")
    return {str(k).removeprefix("module."): v for k, v in loaded.items()}


def state_dict_problems(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                        shown_keys: int = 5, optional: Callable[[str], bool] = lambda key: False) -> list[str]:
    """Human-readable reasons why ``state`` does not fit a model whose state dict is ``expected``."""
    missing = [k for k in expected if k not in state and not optional(k)]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong_shape)):
        if keys:
            more = f" and {len(keys) - shown_keys} more" if len(keys) > shown_keys else ""
            problems.append(f"{what}: {', '.join(keys[:shown_keys])}{more}")
    return problems
