"""ResNet50-v1.5 in plain PyTorch (no torchvision).

The network is the one MLPerf Inference uses for image classification: bottleneck blocks in four stages
of [3, 4, 6, 3] blocks, with the stride-2 down-sampling on the 3x3 convolution of a stage's first block
("v1.5"; v1 puts it on the first 1x1 convolution), 1000 ImageNet classes, 25,557,032 parameters.

Module and buffer names are the ones of ``torchvision.models.resnet50`` (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer1.0.downsample.0``, ..., ``fc``), so a torchvision state dict loads unchanged.

``tiny`` is the same architecture with every width divided by 8 and one block per stage (385,392 parameters):
it exists only so that tests run in seconds; the pre- and post-processing around it are identical.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from e2ebench.models.checkpoints import WeightsError, read_state_dict, state_dict_problems

NUM_CLASSES = 1000


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Shape of a bottleneck ResNet.

    ``blocks_per_stage``: bottleneck blocks in each of the four stages;
    ``base_width``: channels of the stem and of the first stage's 3x3 convolutions (64 for ResNet50);
    a block's output has ``4 * width`` channels (the bottleneck expansion).
    """

    blocks_per_stage: tuple[int, int, int, int]
    base_width: int
    num_classes: int = NUM_CLASSES


RESNET50_V15 = ResNetConfig(blocks_per_stage=(3, 4, 6, 3), base_width=64)
RESNET50_V15_TINY = ResNetConfig(blocks_per_stage=(1, 1, 1, 1), base_width=8)

VARIANTS: dict[str, ResNetConfig] = {"full": RESNET50_V15, "tiny": RESNET50_V15_TINY}

#: Parameters of the full network (the figure torchvision's resnet50 has).
RESNET50_PARAMETER_COUNT = 25_557_032


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride: v1.5) -> 1x1 expand, plus the identity or projection shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Bottleneck ResNet with torchvision's module names; input (B, 3, H, W) float32, output (B, classes) logits."""

    def __init__(self, config: ResNetConfig = RESNET50_V15):
        super().__init__()
        self.config = config
        stem = config.base_width
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = stem
        stages = []
        for stage_index, block_count in enumerate(config.blocks_per_stage):
            width = config.base_width * 2**stage_index
            stride = 1 if stage_index == 0 else 2
            blocks = []
            for block_index in range(block_count):
                blocks.append(Bottleneck(in_channels, width, stride if block_index == 0 else 1))
                in_channels = width * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_channels, config.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's initialisation: Kaiming-normal (fan-out) convolutions, BN weight 1 / bias 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def build_resnet50(variant: str = "full", seed: int = 0, device: str | torch.device = "cpu") -> ResNet:
    """ResNet50-v1.5 (``variant`` "full" or "tiny") with weights drawn after ``torch.manual_seed(seed)``.

    The model is in eval mode.  ``device="meta"`` builds it without memory (for counting parameters).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown ResNet50 variant {variant!r}; accepted: {', '.join(VARIANTS)}")
    torch.manual_seed(seed)
    with torch.device(device):
        model = ResNet(VARIANTS[variant])
    return model.eval()


def load_weights(model: ResNet, path: Path, shown_keys: int = 5) -> None:
    """Load a torchvision-format state dict into ``model``; :class:`WeightsError` names the first bad keys.

    BatchNorm ``num_batches_tracked`` counters may be absent (they do not affect inference).
    """
    state = read_state_dict(path)
    expected = model.state_dict()
    problems = state_dict_problems(expected, state, shown_keys, optional=lambda k: k.endswith("num_batches_tracked"))
    if problems:
        raise WeightsError(
            f"weights file {path} does not fit ResNet50-v1.5 ({model.config.base_width}-wide stem, "
            f"blocks {list(model.config.blocks_per_stage)}): " + "; ".join(problems)
        )
    for key, value in expected.items():
        state.setdefault(key, value)
    model.load_state_dict(state, strict=True)
