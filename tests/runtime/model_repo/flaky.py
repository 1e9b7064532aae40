"""A model that fails when x[0] == 666: tests the `error` path of a failing model."""

MAGIC = 666.0


def build():
    from torch import nn

    class Flaky(nn.Module):
        def forward(self, x):
            if bool((x[:, 0] == MAGIC).any()):
                raise ValueError("flaky: magic input 666 seen")
            return x * 2

    return Flaky()
