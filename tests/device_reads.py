"""``DeviceReads``: counts the tensor calls that make the host wait for the device (on CUDA), for tests that
bound how often a code path reads back."""

from __future__ import annotations

import torch


class DeviceReads(torch.overrides.TorchFunctionMode):
    """Records, in ``reads``, every call that reads values back (``tolist``, ``item``, ``bool``/``int``, ``cpu``,
    ``numpy``) or whose output size depends on the values (``nonzero``, ``bincount``, indexing with a bool
    mask)."""

    READS = {"tolist", "item", "__bool__", "__int__", "__float__", "__index__", "nonzero", "bincount", "cpu", "numpy"}

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        bool_mask = name == "__getitem__" and isinstance(args[1], torch.Tensor) and args[1].dtype == torch.bool
        if name in self.READS or bool_mask:
            self.reads.append(name)
        return func(*args, **(kwargs or {}))
