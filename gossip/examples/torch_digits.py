"""PyTorch on gossip: 8 workers train an MLP with BatchNorm on non-IID shards of scikit-learn's digits.

``python -m gossip.examples.torch_digits`` starts a local 3-server cluster, runs one
:class:`gossip.torch.TorchWorker` per worker, each in a thread of its own with an ordinary,
synchronous PyTorch training loop, and prints per round the workers' test accuracy next to the same
model trained centrally on the pooled data::

    python -m gossip.examples.torch_digits                          # local cluster, 8 workers, CPU
    python -m gossip.examples.torch_digits --endpoints H:P,H:P      # your cluster
    python -m gossip.examples.torch_digits --weighting equal        # plain pairwise average
    python -m gossip.examples.torch_digits --output json            # one JSON line per round, then a summary

The recipe (seeded by ``--seed``):

- **Data and shards**: those of ``gossip.examples.digits`` (the 1,797 bundled 8x8 images, a
  stratified 75/25 split, pixels standardised; Dirichlet(0.5) label shards of 46-286 examples).
- **Model**: ``Linear(64, 64) -> BatchNorm1d(64) -> ReLU -> Linear(64, 10)``, float32, the same
  initialisation on every worker. BatchNorm's running mean and variance are float buffers: gossip
  averages them with the weights. Its ``num_batches_tracked`` is an integer: each worker keeps its own.
- **A round**: each worker trains ``--local-epochs`` epochs over its own shard (minibatches of 16,
  SGD, cosine learning rate to 0), then ``step(model.state_dict(), examples=n)`` with ``n`` the
  examples it trained on. A pair averages with weights ``n_a / (n_a + n_b)`` and
  ``n_b / (n_a + n_b)``: the group keeps the example-weighted mean of the models, FedAvg's average,
  without a server.
- **Central baseline**: the same model, initialisation and schedule on the pooled training set, with
  the same epochs per round: the same examples seen, the same gradient steps within rounding.

Each worker trains on its own thread; the workers' event loop (heartbeats, the round watch, the
exchanges) runs on a thread of its own (``gossip.SyncWorker``), so a slow epoch never costs a lease.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import queue
import secrets
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from gossip.examples.digits import Config as DigitsConfig
from gossip.examples.digits import Dataset, _pct, local_cluster, log_to_stderr, prepare
from gossip.mixing import consensus_distance

if TYPE_CHECKING:
    import torch

    from controlplane.client import Credentials

__all__ = ["Config", "RoundStats", "Summary", "main", "run"]


@dataclass(frozen=True)
class Config:
    """Everything that decides a run. The defaults are the ones measured in README.md."""

    workers: int = 8
    rounds: int = 30
    local_epochs: int = 2
    batch_size: int = 16
    lr: float = 0.2
    """Peak learning rate; a cosine from ``lr`` (round 1) towards 0 (after the last round)."""
    weight_decay: float = 1e-4
    hidden: int = 64
    alpha: float = 0.5
    weighting: str = "examples"
    """``examples``: pairs average weighted by the examples each side trained on; ``equal``: 0.5 / 0.5."""
    seed: int = 0
    round_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.workers < 2:
            raise ValueError(f"gossip needs at least 2 workers, got {self.workers}")
        for name in ("rounds", "local_epochs", "batch_size", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.weighting not in ("examples", "equal"):
            raise ValueError(f"weighting must be 'examples' or 'equal', got {self.weighting!r}")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.alpha > 0):
            raise ValueError("lr and alpha must be > 0 and weight_decay >= 0")

    def lr_at(self, round_index: int) -> float:
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * round_index / self.rounds))


@dataclass(frozen=True)
class RoundStats:
    round: int
    mean_accuracy: float
    min_accuracy: float
    max_accuracy: float
    consensus_distance: float
    """Mean squared distance of the workers' weights and biases to their average. BatchNorm's running
    statistics are left out: each local epoch re-estimates them on the worker's own skewed shard, so
    they differ by design and would swamp the figure."""
    central_accuracy: float
    bytes: int
    """Payload bytes the workers received in this round's exchanges (``last_round.bytes``, summed)."""
    failed: int
    round_seconds: float
    """Wall time from the previous round's last report to this one's (training and gossip)."""


@dataclass(frozen=True)
class Summary:
    rounds: int
    mean_accuracy: float
    min_accuracy: float
    central_accuracy: float
    gap_points: float
    average_model_accuracy: float
    shard_sizes: list[int]
    seconds: float


def build(config: Config, features: int, classes: int) -> torch.nn.Module:
    import torch

    torch.manual_seed(config.seed)
    return torch.nn.Sequential(
        torch.nn.Linear(features, config.hidden),
        torch.nn.BatchNorm1d(config.hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(config.hidden, classes),
    )


def _tensors(x: npt.NDArray[Any], y: npt.NDArray[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)


def train_epochs(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    generator: torch.Generator,
) -> int:
    """``epochs`` passes of minibatch SGD over (x, y), reshuffled each pass; returns the examples seen.
    A last batch of one example is dropped (BatchNorm cannot normalise a batch of one)."""
    import torch

    model.train()
    optimiser = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)
    seen = 0
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch_size):
            pick = order[start : start + batch_size]
            if len(pick) < 2:
                continue
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[pick]), y[pick])
            loss.backward()
            optimiser.step()
            seen += len(pick)
    return seen


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def central(config: Config, data: Dataset) -> list[float]:
    """The central baseline: test accuracy after each round's epochs on the pooled training set."""
    import torch

    model = build(config, data.x_train.shape[1], data.classes)
    x, y = _tensors(data.x_train, data.y_train)
    xt, yt = _tensors(data.x_test, data.y_test)
    generator = torch.Generator().manual_seed(config.seed)
    out = []
    for r in range(config.rounds):
        train_epochs(
            model,
            x,
            y,
            epochs=config.local_epochs,
            batch_size=config.batch_size,
            lr=config.lr_at(r),
            weight_decay=config.weight_decay,
            generator=generator,
        )
        out.append(accuracy(model, xt, yt))
    return out


@dataclass
class _Report:
    worker: int
    round: int
    accuracy: float
    params: dict[str, npt.NDArray[Any]]
    bytes: int
    ok: bool


def _worker_loop(
    config: Config,
    index: int,
    worker: Any,
    model: torch.nn.Module,
    data: Dataset,
    shard: npt.NDArray[np.int64],
    reports: queue.Queue[_Report | BaseException],
) -> None:
    import torch

    from gossip.torch import to_params

    try:
        x, y = _tensors(data.x_train[shard], data.y_train[shard])
        xt, yt = _tensors(data.x_test, data.y_test)
        generator = torch.Generator().manual_seed(config.seed * 1000 + index + 1)
        for r in range(config.rounds):
            seen = train_epochs(
                model,
                x,
                y,
                epochs=config.local_epochs,
                batch_size=config.batch_size,
                lr=config.lr_at(r),
                weight_decay=config.weight_decay,
                generator=generator,
            )
            examples = seen if config.weighting == "examples" else None
            model.load_state_dict(worker.step(model.state_dict(), examples=examples))
            stats = worker.last_round
            reports.put(
                _Report(
                    index,
                    r,
                    accuracy(model, xt, yt),
                    to_params(model.state_dict()),
                    stats.bytes if stats else 0,
                    bool(stats and stats.ok),
                )
            )
    except BaseException as exc:
        reports.put(exc)


def run(
    config: Config,
    endpoints: str | Sequence[str],
    *,
    credentials: Credentials | None = None,
    on_round: Any = None,
) -> tuple[list[RoundStats], Summary]:
    """The whole example against the cluster at ``endpoints``: the central baseline first (so it
    does not compete for the CPU), then ``config.workers`` TorchWorkers, each training on a thread."""
    import torch

    from controlplane.client import Client
    from controlplane.client import Credentials as ClientCredentials
    from gossip.torch import TorchWorker, from_params, to_params

    torch.set_num_threads(1)  # eight training threads on a small machine: no intra-op threads on top
    data, shards = prepare(
        DigitsConfig(workers=config.workers, alpha=config.alpha, seed=config.seed, rounds=config.rounds)
    )
    central_accuracy = central(config, data)
    group = f"torch-digits-{secrets.token_hex(4)}"
    start = build(config, data.x_train.shape[1], data.classes)
    models = [build(config, data.x_train.shape[1], data.classes) for _ in range(config.workers)]
    for model in models:
        model.load_state_dict(start.state_dict())
    weights = sorted(name for name, _ in start.named_parameters())
    workers: list[TorchWorker] = []
    reports: queue.Queue[_Report | BaseException] = queue.Queue()
    history: list[RoundStats] = []
    began = time.perf_counter()
    credentials = credentials or ClientCredentials.from_env()
    admin = Client(endpoints, credentials=credentials)
    try:
        # Created paused with the floor of 2, then run once every worker is up: round 1 waits for
        # all of them, and a worker that crashes later costs a round while the others train on
        # (min_participants = workers would stop every round after one crash).
        spec = sorted(to_params(start.state_dict()).items())
        admin.gossip.configure_group(
            group,
            [(name, value.dtype.name, value.shape) for name, value in spec],
            round_timeout_s=config.round_timeout_s,
            min_participants=2,
            seed=config.seed,
            paused=True,
        )
        for w in range(config.workers):
            workers.append(
                TorchWorker(
                    endpoints,
                    group,
                    f"{group}-w{w}",
                    credentials=credentials,
                    round_timeout_s=config.round_timeout_s,
                    labels={"example": "torch-digits", "shard_size": str(len(shards[w]))},
                )
            )
            workers[-1].start(models[w].state_dict())
        asyncio.run(_wait_for_members(endpoints, credentials, group, config.workers))
        admin.gossip.update_group(group, paused=False)
        threads = [
            threading.Thread(
                target=_worker_loop,
                args=(config, w, workers[w], models[w], data, shards[w], reports),
                name=f"train-w{w}",
                daemon=True,
            )
            for w in range(config.workers)
        ]
        for thread in threads:
            thread.start()
        pending: dict[int, list[_Report]] = {}
        last = time.perf_counter()
        while len(history) < config.rounds:
            item = reports.get()
            if isinstance(item, BaseException):
                raise item
            pending.setdefault(item.round, []).append(item)
            r = len(history)
            if len(pending.get(r, ())) < config.workers:
                continue
            done = sorted(pending.pop(r), key=lambda rep: rep.worker)
            accs = [rep.accuracy for rep in done]
            now = time.perf_counter()
            stat = RoundStats(
                round=r + 1,
                mean_accuracy=float(np.mean(accs)),
                min_accuracy=min(accs),
                max_accuracy=max(accs),
                consensus_distance=consensus_distance([_flat(rep.params, weights) for rep in done]),
                central_accuracy=central_accuracy[r],
                bytes=sum(rep.bytes for rep in done),
                failed=sum(1 for rep in done if not rep.ok),
                round_seconds=now - last,
            )
            last = now
            history.append(stat)
            if on_round is not None:
                on_round(stat)
        for thread in threads:
            thread.join()
        final_params = [rep.params for rep in done]
        average = {k: np.mean([p[k] for p in final_params], axis=0) for k in sorted(final_params[0])}
        probe = build(config, data.x_train.shape[1], data.classes)
        probe.load_state_dict(from_params(average, start.state_dict()))
        xt, yt = _tensors(data.x_test, data.y_test)
        summary = Summary(
            rounds=config.rounds,
            mean_accuracy=history[-1].mean_accuracy,
            min_accuracy=history[-1].min_accuracy,
            central_accuracy=central_accuracy[-1],
            gap_points=round(100 * (central_accuracy[-1] - history[-1].mean_accuracy), 2),
            average_model_accuracy=accuracy(probe, xt, yt),
            shard_sizes=[len(s) for s in shards],
            seconds=time.perf_counter() - began,
        )
        return history, summary
    finally:
        for worker in workers:
            try:
                worker.close()
            except Exception as exc:  # close every worker: each holds a lease and a gossip port
                print(f"closing a worker failed: {exc!r}", file=sys.stderr)
        admin.close()


async def _wait_for_members(endpoints: str | Sequence[str], credentials: Credentials, group: str, count: int) -> None:
    """Every worker beating (ACTIVE, not only started), so that round 1 has them all."""
    from controlplane.client import AsyncClient
    from gossip.worker import wait_for_members

    async with AsyncClient(endpoints, credentials=credentials) as client:
        await wait_for_members(client, group, count)


def _flat(params: dict[str, npt.NDArray[Any]], names: Sequence[str]) -> npt.NDArray[np.float64]:
    return np.concatenate([np.asarray(params[k], dtype=np.float64).ravel() for k in names])


def main(argv: list[str] | None = None) -> int:
    d = Config()
    parser = argparse.ArgumentParser(prog="python -m gossip.examples.torch_digits", description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=d.workers)
    parser.add_argument("--rounds", type=int, default=d.rounds)
    parser.add_argument("--local-epochs", type=int, default=d.local_epochs)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (cosine decay to 0)")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--hidden", type=int, default=d.hidden)
    parser.add_argument("--alpha", type=float, default=d.alpha, help="Dirichlet label skew (smaller: more skewed)")
    parser.add_argument("--weighting", choices=("examples", "equal"), default=d.weighting)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--round-timeout", type=float, default=d.round_timeout_s)
    parser.add_argument("--endpoints", help="HOST:PORT,... of an existing cluster (default: start a local one)")
    parser.add_argument("--output", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("this example needs torch: pip install -e '.[torch,examples]'", file=sys.stderr)
        return 2
    config = Config(
        workers=args.workers,
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        hidden=args.hidden,
        alpha=args.alpha,
        weighting=args.weighting,
        seed=args.seed,
        round_timeout_s=args.round_timeout,
    )

    def report(stat: RoundStats) -> None:
        if args.output == "json":
            print(json.dumps({"type": "round", **asdict(stat)}), flush=True)
        else:
            print(
                f"round {stat.round:3d}  workers mean {_pct(stat.mean_accuracy)} min {_pct(stat.min_accuracy)} "
                f"max {_pct(stat.max_accuracy)}  consensus {stat.consensus_distance:9.3e}  "
                f"central {_pct(stat.central_accuracy)}  {stat.round_seconds:5.2f} s  {stat.bytes / 1e3:6.1f} kB"
                + (f"  {stat.failed} failed" if stat.failed else ""),
                flush=True,
            )

    log_to_stderr()
    with contextlib.ExitStack() as stack:
        endpoints, credentials = args.endpoints, None
        if not endpoints:
            cluster = stack.enter_context(local_cluster())
            endpoints, credentials = cluster.endpoints, cluster.credentials
        if args.output == "text":
            print(
                f"torch digits: {config.workers} workers, Dirichlet(alpha={config.alpha}) shards, "
                f"{config.rounds} rounds x {config.local_epochs} local epoch(s), weighting {config.weighting}, "
                f"cluster {endpoints}",
                flush=True,
            )
        _, summary = run(config, endpoints, credentials=credentials, on_round=report)
    if args.output == "json":
        print(json.dumps({"type": "summary", **asdict(summary)}), flush=True)
    else:
        print(
            f"final: workers mean {_pct(summary.mean_accuracy)} (min {_pct(summary.min_accuracy)}), "
            f"central {_pct(summary.central_accuracy)}, gap {summary.gap_points:.2f} points; "
            f"average of the workers' models {_pct(summary.average_model_accuracy)}; "
            f"{summary.seconds:.1f} s; shard sizes {summary.shard_sizes}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
