"""Sums one input of every wire dtype (padding of `u` is 0, so it adds nothing)."""

import numpy as np


def build():
    import torch
    from torch import nn

    class Typed(nn.Module):
        def forward(self, h, b, m, u, i8, i32):
            parts = [h.float().sum(1), b.float().sum(1), m.float().sum(1), u.float().sum(1),
                     i8.float(), i32.float().sum((1, 2))]
            return torch.stack(parts).sum(0), b

    return Typed()


def examples(rng, n):
    return [
        {
            "h": np.ones(2, np.float16),
            "b": np.zeros(2, np.uint16),  # bfloat16 bits
            "m": np.ones(3, bool),
            "u": np.ones(1 + i % 8, np.uint8),
            "i8": np.array(1, np.int8),
            "i32": np.ones((2, 2), np.int32),
        }
        for i in range(n)
    ]
