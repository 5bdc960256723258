"""PyTorch ``state_dict`` in and out of gossip.

::

    from gossip.torch import TorchWorker

    with TorchWorker(endpoints, "mnist", "node-7", listen="0.0.0.0:7300", advertise="10.0.0.7:7300") as worker:
        worker.start(model.state_dict())
        for epoch in range(epochs):
            n = train_one_epoch(model)                                       # on this thread
            model.load_state_dict(worker.step(model.state_dict(), examples=n))  # averaged by example counts

What travels and what stays (the same rule at every node, so every node derives the same layout):

- **Floating-point tensors are averaged**: parameters and float buffers (BatchNorm's running mean and
  variance). float32 and float64 travel as they are, float16 as float16 (numpy has it).
- **bfloat16 travels as float32.** numpy has no bfloat16, and every bfloat16 is exactly a float32
  (the upper 16 bits), so the conversion is lossless; the pair averages in float32 and each end
  rounds the (bit-identical) float32 result back to bfloat16 with torch's round-to-nearest-even, so
  both ends stay bit-identical. It costs twice the bytes of a bfloat16 tensor on the wire; what it
  buys is an unchanged exchange (no dtype numpy cannot name in the group's spec) and an average
  computed in float32 rather than in bfloat16's 8-bit significand.
- **Everything else is kept local, never averaged**: integer and boolean tensors (BatchNorm's
  ``num_batches_tracked``, step counters, masks) and complex ones. Averaging a counter is not
  averaging; each node keeps its own.

torch is imported inside the functions, so importing this module costs nothing, and nothing else in
the package (nor ``cpctl``) imports this module.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from controlplane.client import Credentials
    from gossip.sync import SyncWorker
    from gossip.worker import RoundStats

__all__ = ["TorchWorker", "averaged", "from_params", "to_params", "wire_dtype"]

StateDict = Mapping[str, "torch.Tensor"]


def wire_dtype(dtype: torch.dtype) -> np.dtype[Any] | None:
    """The numpy dtype a tensor of ``dtype`` travels as, or None when it is kept local (not a float)."""
    import torch

    if dtype == torch.bfloat16:
        return np.dtype(np.float32)
    if dtype in (torch.float16, torch.float32, torch.float64):
        return np.dtype(str(dtype).removeprefix("torch."))
    return None


def averaged(state_dict: StateDict) -> list[str]:
    """The names (sorted) of the entries gossip averages; the others are kept local."""
    _require_tensors(state_dict)
    return sorted(name for name, t in state_dict.items() if wire_dtype(t.dtype) is not None)


def to_params(state_dict: StateDict) -> dict[str, np.ndarray]:
    """The averaged entries of ``state_dict`` as numpy arrays for ``Worker.step`` (fresh copies on the
    CPU, bfloat16 as float32); integer and other non-float entries are left out."""
    import torch

    out: dict[str, np.ndarray] = {}
    for name in averaged(state_dict):
        tensor = state_dict[name].detach()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.to(torch.float32)
        out[name] = np.array(tensor.cpu().numpy(), copy=True, order="C")
    if not out:
        raise ValueError("the state_dict holds no floating-point tensor: nothing to average")
    return out


def from_params(params: Mapping[str, np.ndarray], like: StateDict) -> OrderedDict[str, torch.Tensor]:
    """A state_dict shaped like ``like`` (same keys, order, dtypes and devices): averaged entries from
    ``params`` (rounded back to bfloat16 / float16 where ``like`` has them), every other entry
    ``like``'s own tensor, untouched. Ready for ``model.load_state_dict``."""
    import torch

    names = averaged(like)
    if sorted(params) != names:
        missing = sorted(set(names) - set(params))
        extra = sorted(set(params) - set(names))
        raise ValueError(f"params do not match the state_dict's float tensors: missing {missing}, unexpected {extra}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, template in like.items():
        if name not in params:
            out[name] = template
            continue
        value = np.asarray(params[name])
        expected = wire_dtype(template.dtype)
        if value.dtype != expected or tuple(value.shape) != tuple(template.shape):
            raise ValueError(
                f"{name}: got {value.dtype} {tuple(value.shape)}, expected {expected} {tuple(template.shape)}"
            )
        out[name] = torch.from_numpy(np.array(value, copy=True)).to(dtype=template.dtype, device=template.device)
    return out


def _require_tensors(state_dict: StateDict) -> None:
    import torch

    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"state_dict entry {name!r} is a {type(value).__name__}, not a torch.Tensor")


class TorchWorker:
    """A :class:`gossip.SyncWorker` that takes and returns torch state_dicts.

    Arguments are :class:`~gossip.sync.SyncWorker`'s (``endpoints``, ``group``, ``node_id``, the
    client's ``credentials`` and the async Worker's options). The group's spec is the wire layout of
    the first worker's state_dict (``to_params``), so every worker of a group must hold the same model
    in the same dtypes.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        group: str,
        node_id: str,
        *,
        credentials: Credentials | None = None,
        **options: Any,
    ) -> None:
        from gossip.sync import SyncWorker

        self.sync: SyncWorker = SyncWorker(endpoints, group, node_id, credentials=credentials, **options)

    @property
    def last_round(self) -> RoundStats | None:
        return self.sync.last_round

    @property
    def address(self) -> str:
        return self.sync.address

    def start(self, state_dict: StateDict, *, timeout: float | None = None) -> None:
        """``SyncWorker.start`` with the state_dict's averaged tensors as the group's spec."""
        self.sync.start(to_params(state_dict), timeout=timeout)

    def step(
        self, state_dict: StateDict, *, examples: int | None = None, timeout: float | None = None
    ) -> OrderedDict[str, torch.Tensor]:
        """``SyncWorker.step`` on the state_dict: its float tensors averaged with the round's partner
        (weighted by ``examples`` when both give a count), its other entries returned as they are."""
        params = self.sync.step(to_params(state_dict), examples=examples, timeout=timeout)
        return from_params(params, state_dict)

    def close(self, *, deregister: bool = True) -> None:
        self.sync.close(deregister=deregister)

    def __enter__(self) -> TorchWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
