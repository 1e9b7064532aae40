"""`resnet_static`: a small residual CNN whose execution time does not depend on its input.

It is the static control case: Orloj should match the plain batchers on it. Random
weights; a 3x32x32 image in, 10 logits out.
"""

from __future__ import annotations

import numpy as np

from orloj_rt.models.spec import ModelEntry, ModelSpec, TensorSpec

SPEC = ModelSpec(
    name="resnet_static",
    inputs=(TensorSpec("image", "float32", (3, 32, 32)),),
    outputs=(TensorSpec("logits", "float32", (10,)),),
    max_batch_size=32,
    default_slo_ms=100.0,
    ring_slots=256,
    description="small residual CNN, static execution time (random weights)",
)


def examples(rng: np.random.Generator, n: int) -> list[dict[str, np.ndarray]]:
    return [{"image": rng.standard_normal((3, 32, 32), dtype=np.float32)} for _ in range(n)]


def build(width: int = 32, blocks: int = 3, num_classes: int = 10, seed: int = 0):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(x + self.bn2(self.conv2(y)))

    class SmallResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            )
            self.blocks = nn.Sequential(*(Block(width) for _ in range(blocks)))
            self.head = nn.Linear(width, num_classes)

        def forward(self, image):
            x = self.blocks(self.stem(image))
            return self.head(x.mean(dim=(2, 3)))

    torch.manual_seed(seed)
    return SmallResNet()


ENTRY = ModelEntry(
    spec=SPEC,
    factory="orloj_rt.models.resnet_static:build",
    examples="orloj_rt.models.resnet_static:examples",
)
