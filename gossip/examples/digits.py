"""Decentralized training on scikit-learn's digits: 8 workers, non-IID shards, gossip averaging.

``python -m gossip.examples.digits`` trains a softmax regression (pure numpy) across 8 workers that
never share data, each holding a skewed slice of the training set, and prints per round the
workers' test accuracy next to the same model trained centrally on the pooled data::

    python -m gossip.examples.digits                       # simulated gossip, in-process (seconds)
    python -m gossip.examples.digits --live                # 8 real gossip.Workers, a local 3-server cluster
    python -m gossip.examples.digits --endpoints H:P,H:P   # 8 real gossip.Workers against your cluster
    python -m gossip.examples.digits --output json         # one JSON line per round, then a summary
    python -m gossip.examples.digits --live --plot r.png   # and the cluster's record of the rounds as a PNG

The recipe (all seeded by ``--seed``, so a simulated run is reproducible to the bit):

- **Data**: the 1,797 8x8 digit images bundled with scikit-learn; a stratified 75/25 train/test
  split; every pixel standardised with the *training* set's mean and standard deviation.
- **Non-IID shards**: for every class, the class's training examples are divided among the 8
  workers in proportions drawn from Dirichlet(alpha=0.5) (Hsu et al., 2019). With seed 0 each
  worker's three most frequent classes make 68-80 % of its shard, 2-6 classes are under 2 % of it,
  and shards hold 46-286 examples. Draws are repeated until every shard holds at least
  ``min_shard`` examples.
- **Each round**: every worker takes ``local_steps`` minibatch SGD steps on its own shard, then one
  gossip step: a SAPS matching pairs the workers and each pair averages its parameters
  (``W = (I + P) / 2``). The learning rate follows a cosine from ``lr`` to 0 over the rounds.
- **Central baseline**: the same model, initialisation, batch size and learning-rate schedule on
  the pooled training set, with as many SGD steps per round as all workers together
  (``workers * local_steps``): the same number of gradient steps and the same epochs.

A worker's learning rate is scaled by its shard size over the mean shard size. Without that the
workers would jointly minimise the *unweighted* mean of their shard losses, which over-weights the
examples of small shards; with it the mean of the workers' objectives is exactly the pooled one the
central model minimises (FedAvg weights its average by shard size for the same reason). Measured
over seeds 0-9: mean gap to central 0.82 points with the scaling, 0.94 without; worst 1.39 / 1.61.

The training loop (:func:`train`) does not know how the mixing happens: it calls a ``mix``
coroutine per worker and round, all workers concurrently. :class:`SimulatedMixer` computes the
round in-process with :class:`gossip.matching.SapsSelector` on a random bandwidth matrix and
:func:`gossip.mixing.apply_matching`; :class:`LiveMixer` calls ``gossip.worker.Worker.step``, a
committed round through the cluster and a real exchange over gRPC. Live, each worker reports its
training metrics with the round (its model's loss on its own shard and accuracy on the test set,
before the mix, and the examples its local steps drew): ``cpctl gossip rounds GROUP`` lists them and
``cpctl gossip plot GROUP`` (or ``--plot FILE`` here) draws them with the consensus distance.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from gossip.matching import Matching, SapsSelector, default_peer_ids
from gossip.mixing import Array, apply_matching, apply_matching_compressed, consensus_distance, encode_int8, pack
from gossip.simulate import uniform_bandwidth

if TYPE_CHECKING:  # imported lazily at run time: the live mode is optional and needs a cluster
    from controlplane.client import AsyncClient, Credentials
    from controlplane.dev import LocalCluster
    from gossip.worker import RoundStats as WorkerRound
    from gossip.worker import Worker

__all__ = [
    "Config",
    "Dataset",
    "LiveMixer",
    "Mix",
    "MixRound",
    "Result",
    "RoundStats",
    "SimulatedMixer",
    "accuracy",
    "dirichlet_shards",
    "gradients",
    "init_params",
    "label_histograms",
    "load_digits",
    "local_cluster",
    "log_to_stderr",
    "loss",
    "main",
    "no_gossip",
    "plot_live",
    "prepare",
    "run_live",
    "run_simulated",
    "train",
]

Params = dict[str, Array]
Mix = Callable[[int, Params], Awaitable[Params]]
"""``await mix(worker_index, params)`` -> the worker's parameters after this round's gossip step."""


@dataclass(frozen=True)
class Config:
    """Everything that decides a run. The defaults are the tuned ones recorded in README.md."""

    workers: int = 8
    rounds: int = 30
    local_steps: int = 20
    batch_size: int = 16
    lr: float = 0.5
    """Peak learning rate; the schedule is a cosine from ``lr`` (round 1) to 0 (after the last round)."""
    weight_decay: float = 1e-3
    alpha: float = 0.5
    """Dirichlet concentration of the label split: smaller is more skewed (1000 is nearly IID)."""
    min_shard: int = 30
    test_fraction: float = 0.25
    seed: int = 0
    compression: str = ""
    """How the gossip exchanges travel: "" (full values) or "int8" (``gossip.mixing.encode_int8``)."""

    def __post_init__(self) -> None:
        if self.workers < 2:
            raise ValueError(f"gossip needs at least 2 workers, got {self.workers}")
        for name in ("rounds", "local_steps", "batch_size", "min_shard"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.alpha > 0):
            raise ValueError("lr and alpha must be > 0 and weight_decay >= 0")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")

    def lr_at(self, round_index: int) -> float:
        """Learning rate of round ``round_index`` (0-based): cosine from ``lr`` towards 0.

        Decaying to 0 is what lets decentralized SGD on non-IID shards meet the central model: each
        worker's local steps pull it towards its own shard's optimum by an amount that grows with the
        learning rate, and gossip only removes that drift geometrically; as the rate falls the drift
        falls with it.
        """
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * round_index / self.rounds))


# ---------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Dataset:
    """Standardised features (float64) and integer labels."""

    x_train: npt.NDArray[np.float64]
    y_train: npt.NDArray[np.int64]
    x_test: npt.NDArray[np.float64]
    y_test: npt.NDArray[np.int64]
    classes: int


def load_digits(seed: int = 0, test_fraction: float = 0.25) -> Dataset:
    """scikit-learn's bundled digits (no download), split and standardised.

    The split is stratified so that the test set has every class in its natural proportion: the
    accuracy it measures is that of a model for the whole population, which is what the non-IID
    workers are meant to learn together. Mean and standard deviation come from the training set
    only; pixels that are constant there (the image borders) get a standard deviation of 1, so they
    stay 0 instead of dividing by zero.
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # the example's one extra dependency
        raise SystemExit("this example needs scikit-learn: pip install -e '.[examples]'") from exc
    bunch = sk_load_digits()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0.0] = 1.0
    return Dataset(
        x_train=(x_train - mean) / std,
        y_train=np.asarray(y_train, dtype=np.int64),
        x_test=(x_test - mean) / std,
        y_test=np.asarray(y_test, dtype=np.int64),
        classes=int(y.max()) + 1,
    )


def dirichlet_shards(
    labels: npt.NDArray[np.int64], workers: int, alpha: float, seed: int, min_size: int = 1
) -> tuple[npt.NDArray[np.int64], ...]:
    """Split example indices among ``workers`` with a Dirichlet(alpha) label skew per class.

    For each class (in label order) the class's indices are shuffled and cut in proportions drawn
    from Dirichlet(alpha * 1). Every index goes to exactly one worker. The whole draw is repeated
    (same generator, so still deterministic) until every shard has ``min_size`` examples: a
    worker with 3 examples would make the average accuracy say more about the split than about
    gossip. Returns sorted index arrays, one per worker.
    """
    if workers < 1 or alpha <= 0 or min_size < 0:
        raise ValueError("need workers >= 1, alpha > 0, min_size >= 0")
    if min_size * workers > len(labels):
        raise ValueError(f"{len(labels)} examples cannot give {workers} shards of {min_size}")
    rng = np.random.default_rng([seed, 0x5EED])
    classes = np.unique(labels)
    for _ in range(1000):
        parts: list[list[npt.NDArray[np.int64]]] = [[] for _ in range(workers)]
        for c in classes:
            members = rng.permutation(np.flatnonzero(labels == c))
            proportions = rng.dirichlet(np.full(workers, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(np.int64)
            for w, piece in enumerate(np.split(members, cuts)):
                parts[w].append(piece)
        shards = tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
        if min(len(s) for s in shards) >= min_size:
            return shards
    raise ValueError(f"no Dirichlet({alpha}) split gave every one of {workers} shards {min_size} examples")


def label_histograms(
    labels: npt.NDArray[np.int64], shards: Sequence[npt.NDArray[np.int64]], classes: int
) -> npt.NDArray[np.float64]:
    """Row w: the fraction of each class in shard w (rows sum to 1)."""
    counts = np.stack([np.bincount(labels[s], minlength=classes) for s in shards]).astype(np.float64)
    return counts / counts.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------- model


def init_params(features: int, classes: int, seed: int) -> Params:
    """Softmax regression weights: small random W (features x classes), zero bias.

    Every worker starts from the same parameters (as they would from one registered model version):
    averaging models that started apart would average unrelated solutions.
    """
    rng = np.random.default_rng([seed, 0x1217])
    return {"w": rng.normal(0.0, 0.01, size=(features, classes)), "b": np.zeros(classes)}


def _logits(params: Params, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = x @ params["w"] + params["b"]
    return out


def gradients(params: Params, x: npt.NDArray[np.float64], y: npt.NDArray[np.int64], weight_decay: float) -> Params:
    """Gradient of the mean softmax cross-entropy over (x, y) plus ``weight_decay / 2 * ||w||^2``."""
    z = _logits(params, x)
    z -= z.max(axis=1, keepdims=True)  # exp cannot overflow; softmax is shift-invariant
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    p /= len(y)
    return {"w": x.T @ p + weight_decay * params["w"], "b": p.sum(axis=0)}


def accuracy(params: Params, x: npt.NDArray[np.float64], y: npt.NDArray[np.int64]) -> float:
    return float(np.mean(np.argmax(_logits(params, x), axis=1) == y))


def loss(params: Params, x: npt.NDArray[np.float64], y: npt.NDArray[np.int64]) -> float:
    """Mean softmax cross-entropy over (x, y) (the objective without its weight decay)."""
    z = _logits(params, x)
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-np.mean(log_p[np.arange(len(y)), y]))


def _sgd(
    params: Params,
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.int64],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    rng: np.random.Generator,
) -> Params:
    out = {k: v.copy() for k, v in params.items()}
    batch = min(batch_size, len(y))
    for _ in range(steps):
        pick = rng.choice(len(y), size=batch, replace=False)
        grads = gradients(out, x[pick], y[pick], weight_decay)
        for k in sorted(out):
            out[k] -= lr * grads[k]
    return out


# ---------------------------------------------------------------------------------------- mixers


@dataclass(frozen=True)
class MixRound:
    """What one gossip step did, all workers together."""

    number: int
    bytes: int
    """Model bytes moved. Simulated: every matched worker's model once (what each receives).
    Live: the sum of ``Worker.last_round.bytes`` over the workers."""
    pairs: int
    failed: int
    """Workers whose exchange failed this round: they kept their own parameters."""
    exchange_seconds: tuple[float, ...] = ()
    """Live only: ``Worker.last_round.seconds`` per worker (the whole exchange, waiting included)."""


class _Barrier:
    """Collects one value per worker; the last arrival computes every worker's answer at once.

    Gossip is a collective step: a worker's result depends on its partner's parameters, so no call
    can return before all workers of the round have called.
    """

    def __init__(self, n: int, complete: Callable[[dict[int, Params]], dict[int, Params]]) -> None:
        self._n = n
        self._complete = complete
        self._waiting: dict[int, tuple[Params, asyncio.Future[Params]]] = {}

    async def arrive(self, worker: int, params: Params) -> Params:
        if not 0 <= worker < self._n:
            raise ValueError(f"worker {worker} out of range 0..{self._n - 1}")
        if worker in self._waiting:
            raise RuntimeError(f"worker {worker} called mix twice in one round")
        future: asyncio.Future[Params] = asyncio.get_running_loop().create_future()
        self._waiting[worker] = (params, future)
        if len(self._waiting) == self._n:
            waiting, self._waiting = self._waiting, {}
            try:
                results = self._complete({w: p for w, (p, _) in waiting.items()})
            except Exception as exc:
                for _, fut in waiting.values():
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                for w, (_, fut) in waiting.items():
                    fut.set_result(results[w])
        return await future


class SimulatedMixer:
    """The gossip step computed in-process: SAPS on a random bandwidth matrix, no network.

    The bandwidth matrix is uniform in (0, 5] (``gossip.simulate.uniform_bandwidth``, seeded), the
    selector is the same :class:`SapsSelector` every live node runs, and the averaging is
    :func:`gossip.mixing.apply_matching`, which gives what both ends of a live exchange compute.
    """

    def __init__(self, workers: int, seed: int, compression: str = "") -> None:
        self.compression = compression
        self.peers = default_peer_ids(workers)  # zero-padded: sorted order is worker order
        self.bandwidth = uniform_bandwidth(workers, seed)
        self.selector = SapsSelector(seed)
        self.matchings: list[Matching] = []
        self.history: list[MixRound] = []
        self._barrier = _Barrier(workers, self._round)

    async def __call__(self, worker: int, params: Params) -> Params:
        return await self._barrier.arrive(worker, params)

    def _round(self, by_worker: dict[int, Params]) -> dict[int, Params]:
        number = len(self.matchings)
        matching = self.selector.select(self.bandwidth, self.peers, round=number, version=0)
        by_peer = {self.peers[w]: p for w, p in by_worker.items()}
        model = next(iter(by_worker.values()))
        if self.compression:
            mixed = apply_matching_compressed(by_peer, matching, self.compression)
            model_bytes = len(pack(encode_int8(model))[1])  # what one side sends (int8 is the only one)
        else:
            mixed = apply_matching(by_peer, matching)
            model_bytes = sum(v.nbytes for v in model.values())
        self.matchings.append(matching)
        self.history.append(
            MixRound(number=number, bytes=2 * len(matching.pairs) * model_bytes, pairs=len(matching.pairs), failed=0)
        )
        return {w: mixed[self.peers[w]] for w in by_worker}


class LiveMixer:
    """The gossip step through real :class:`gossip.worker.Worker`\\ s: ``Worker.step`` per call.

    The cluster starts round t+1 only once every participant reported round t, so the workers'
    steps run in lockstep; each call returns after that worker's exchange. A failed exchange
    (``last_round.ok`` false) leaves the worker with its own parameters, as the exchange's commit
    rule promises; it is counted, not raised, because one lost pair does not stop the training.
    """

    def __init__(
        self, workers: Sequence[Worker], metrics: Callable[[int, Params], dict[str, float]] | None = None
    ) -> None:
        self.workers = list(workers)
        #: ``metrics(w, params)``: worker ``w``'s training metrics for ``params``, reported with its round.
        self.metrics = metrics
        self.history: list[MixRound] = []
        self._pending: dict[int, WorkerRound | None] = {}

    async def __call__(self, worker: int, params: Params) -> Params:
        node = self.workers[worker]
        mixed = await node.step(params, metrics=self.metrics(worker, params) if self.metrics else None)
        self._pending[worker] = node.last_round
        if len(self._pending) == len(self.workers):
            self._close_round()
        return mixed

    def _close_round(self) -> None:
        records = [self._pending[w] for w in sorted(self._pending)]
        self._pending = {}
        known = [r for r in records if r is not None]
        self.history.append(
            MixRound(
                number=max((r.number for r in known), default=len(self.history)),
                bytes=sum(r.bytes for r in known),
                pairs=sum(1 for r in known if r.partner and r.ok) // 2,
                failed=sum(1 for r in records if r is None or not r.ok),
                exchange_seconds=tuple(r.seconds for r in known if r.partner),
            )
        )


# ---------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class RoundStats:
    round: int
    """1-based: the numbers are after this many rounds (local steps, then the gossip step)."""
    lr: float
    mean_accuracy: float
    """Mean over workers of each worker's own model's accuracy on the (whole, balanced) test set."""
    min_accuracy: float
    max_accuracy: float
    consensus_distance: float
    """Mean squared distance of the workers' parameter vectors to their average (``gossip.mixing``)."""
    central_accuracy: float
    """The central model after the same number of gradient steps."""
    gossip_seconds: float
    """Wall time of the gossip step (all workers). In-process it is ~0; live it is the round time."""
    train_seconds: float
    """Wall time of the local SGD steps of all workers and of the central model (one thread)."""


@dataclass(frozen=True)
class Result:
    config: Config
    rounds: tuple[RoundStats, ...]
    worker_params: tuple[Params, ...] = field(repr=False)
    central_params: Params = field(repr=False)
    worker_accuracies: tuple[float, ...]
    average_model_accuracy: float
    """Accuracy of the plain average of the workers' final models (what consensus would reach)."""
    shard_sizes: tuple[int, ...]

    @property
    def final(self) -> RoundStats:
        return self.rounds[-1]

    @property
    def gap(self) -> float:
        """Central accuracy minus mean worker accuracy, in accuracy units (0.01 = 1 point)."""
        return self.final.central_accuracy - self.final.mean_accuracy

    def summary(self) -> dict[str, Any]:
        f = self.final
        return {
            "rounds": f.round,
            "mean_accuracy": round(f.mean_accuracy, 4),
            "min_accuracy": round(f.min_accuracy, 4),
            "max_accuracy": round(f.max_accuracy, 4),
            "central_accuracy": round(f.central_accuracy, 4),
            "gap_points": round(100 * self.gap, 2),
            "average_model_accuracy": round(self.average_model_accuracy, 4),
            "consensus_distance": float(f"{f.consensus_distance:.3g}"),
            "shard_sizes": list(self.shard_sizes),
        }


async def train(
    config: Config,
    data: Dataset,
    shards: Sequence[npt.NDArray[np.int64]],
    mix: Mix,
    *,
    on_round: Callable[[RoundStats], None] | None = None,
) -> Result:
    """Train ``config.workers`` models on their shards with a gossip step per round, and the central one.

    ``mix(w, params)`` is awaited for every worker concurrently each round and must return worker
    ``w``'s parameters after the round's gossip step. Everything random is seeded from
    ``config.seed`` (one generator per worker for its minibatches, one for the central model), so
    with a deterministic mixer the run is reproducible.
    """
    if len(shards) != config.workers:
        raise ValueError(f"{len(shards)} shards for {config.workers} workers")
    features = data.x_train.shape[1]
    start = init_params(features, data.classes, config.seed)
    workers = [{k: v.copy() for k, v in start.items()} for _ in range(config.workers)]
    central = {k: v.copy() for k, v in start.items()}
    worker_rngs = [np.random.default_rng([config.seed, 0xD1A, w]) for w in range(config.workers)]
    central_rng = np.random.default_rng([config.seed, 0xCE7])
    xs = [data.x_train[s] for s in shards]
    ys = [data.y_train[s] for s in shards]
    mean_size = float(np.mean([len(s) for s in shards]))
    stats: list[RoundStats] = []

    def local_steps(lr: float) -> dict[str, Array]:
        # Every worker's local SGD, then the central model's. Runs in a thread (asyncio.to_thread):
        # on the event loop it would hold up the live workers' heartbeats and round watches.
        for w in range(config.workers):
            workers[w] = _sgd(
                workers[w],
                xs[w],
                ys[w],
                steps=config.local_steps,
                batch_size=config.batch_size,
                lr=lr * len(ys[w]) / mean_size,  # see the module docstring: the pooled objective
                weight_decay=config.weight_decay,
                rng=worker_rngs[w],
            )
        return _sgd(
            central,
            data.x_train,
            data.y_train,
            steps=config.workers * config.local_steps,
            batch_size=config.batch_size,
            lr=lr,
            weight_decay=config.weight_decay,
            rng=central_rng,
        )

    for r in range(config.rounds):
        lr = config.lr_at(r)
        t0 = time.perf_counter()
        central = await asyncio.to_thread(local_steps, lr)
        t1 = time.perf_counter()
        steps = [asyncio.ensure_future(mix(w, workers[w])) for w in range(config.workers)]
        try:
            workers = list(await asyncio.gather(*steps))
        except BaseException:
            # One worker's step failed: the others would wait for a round that cannot complete.
            for step in steps:
                step.cancel()
            await asyncio.gather(*steps, return_exceptions=True)
            raise
        t2 = time.perf_counter()
        accs = [accuracy(p, data.x_test, data.y_test) for p in workers]
        stat = RoundStats(
            round=r + 1,
            lr=lr,
            mean_accuracy=float(np.mean(accs)),
            min_accuracy=min(accs),
            max_accuracy=max(accs),
            consensus_distance=consensus_distance([_flat(p) for p in workers]),
            central_accuracy=accuracy(central, data.x_test, data.y_test),
            gossip_seconds=t2 - t1,
            train_seconds=t1 - t0,
        )
        stats.append(stat)
        if on_round is not None:
            on_round(stat)
    average = {k: np.mean([p[k] for p in workers], axis=0) for k in sorted(start)}
    return Result(
        config=config,
        rounds=tuple(stats),
        worker_params=tuple(workers),
        central_params=central,
        worker_accuracies=tuple(accuracy(p, data.x_test, data.y_test) for p in workers),
        average_model_accuracy=accuracy(average, data.x_test, data.y_test),
        shard_sizes=tuple(len(s) for s in shards),
    )


def _flat(params: Params) -> npt.NDArray[np.float64]:
    return np.concatenate([np.asarray(params[k], dtype=np.float64).ravel() for k in sorted(params)])


def prepare(config: Config) -> tuple[Dataset, tuple[npt.NDArray[np.int64], ...]]:
    """The dataset and the workers' shards for ``config`` (both deterministic in ``config.seed``)."""
    data = load_digits(config.seed, config.test_fraction)
    shards = dirichlet_shards(data.y_train, config.workers, config.alpha, config.seed, config.min_shard)
    return data, shards


async def no_gossip(worker: int, params: Params) -> Params:
    """A ``mix`` that does nothing: every worker trains alone on its shard, the baseline gossip must beat."""
    return params


def run_simulated(
    config: Config,
    *,
    gossip: bool = True,
    on_round: Callable[[RoundStats], None] | None = None,
    mixer_out: list[SimulatedMixer] | None = None,
) -> Result:
    """The whole example with :class:`SimulatedMixer` (or, ``gossip=False``, with no mixing at all):
    no cluster, no network, about a second. ``mixer_out``, if given, receives the mixer (its
    ``history`` has each round's bytes)."""
    data, shards = prepare(config)
    mix: Mix = no_gossip
    if gossip:
        mixer = SimulatedMixer(config.workers, config.seed, config.compression)
        if mixer_out is not None:
            mixer_out.append(mixer)
        mix = mixer
    return asyncio.run(train(config, data, shards, mix, on_round=on_round))


# ---------------------------------------------------------------------------------------- live


@contextlib.contextmanager
def local_cluster(servers: int = 3, data_dir: Path | None = None, timeout_s: float = 60.0) -> Iterator[LocalCluster]:
    """A fresh local cluster on loopback (``controlplane.dev.LocalCluster``, what ``cpctl dev``
    runs), stopped on exit however the block ends. Without ``data_dir`` its data lives in a
    temporary directory removed afterwards (the server logs are printed if it does not come up)."""
    from controlplane.dev import LocalCluster

    with contextlib.ExitStack() as stack:
        root = data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="digits-cluster-")))
        cluster = LocalCluster(root, servers=servers, log_level="warning")
        stack.callback(cluster.stop)
        cluster.start()
        try:
            cluster.wait_for_leader(timeout_s)
        except (TimeoutError, RuntimeError):
            for node in cluster.nodes.values():
                tail = node.log_path.read_text(errors="replace").splitlines()[-20:] if node.log_path.exists() else []
                print(f"--- {node.log_path}\n" + "\n".join(tail), file=sys.stderr)
            raise
        yield cluster


async def run_live(
    config: Config,
    endpoints: str,
    *,
    group: str | None = None,
    round_timeout_s: float = 30.0,
    on_round: Callable[[RoundStats], None] | None = None,
    mixer_out: list[LiveMixer] | None = None,
    credentials: Credentials | None = None,
) -> Result:
    """The example with ``config.workers`` real :class:`gossip.worker.Worker`\\ s in this process.

    Each worker has its own client (as it would on its own machine), its own exchange server on a
    free loopback port, and its own node id; the group name is fresh per run unless given, so a
    rerun against the same cluster never meets the previous run's rounds. The group is created
    paused and unpaused once every worker is up, so round 1 waits for all of them; its
    ``min_participants`` stays the floor of 2, so a worker that crashes costs one round and the
    others train on (setting it to the number of workers would stop every round after one crash).
    ``mixer_out``, if given, receives the :class:`LiveMixer` (for its per-round bytes and times).
    ``credentials``: how the workers reach the cluster (default: ``CP_CACERT``/``CP_CERT``/``CP_KEY``/
    ``CP_TOKEN`` from the environment).
    """
    from controlplane.client import AsyncClient, Credentials
    from gossip.worker import Worker, wait_for_members

    data, shards = prepare(config)
    group = group or f"digits-{secrets.token_hex(4)}"
    clients: list[AsyncClient] = []
    workers: list[Worker] = []
    try:
        for w in range(config.workers):
            clients.append(AsyncClient(endpoints, credentials=credentials or Credentials.from_env()))
            workers.append(
                Worker(
                    clients[-1],
                    group,
                    f"{group}-w{w}",
                    round_timeout_s=round_timeout_s,
                    compression=config.compression,
                    labels={"example": "digits", "shard_size": str(len(shards[w]))},
                )
            )
        start = init_params(data.x_train.shape[1], data.classes, config.seed)
        tensors = [(name, value.dtype.name, value.shape) for name, value in sorted(start.items())]
        created = await clients[0].gossip.configure_group(
            group,
            tensors,
            round_timeout_s=round_timeout_s,
            min_participants=2,
            seed=config.seed,
            paused=True,
            compression=config.compression,
        )
        await asyncio.gather(*(worker.start(start) for worker in workers))
        if created.created:  # a group somebody else configured keeps its own settings
            # Every worker beating (ACTIVE), not only started: round 1 then has them all.
            await wait_for_members(clients[0], group, config.workers)
            await clients[0].gossip.update_group(group, paused=False)

        def metrics(w: int, params: Params) -> dict[str, float]:
            return {
                "loss": loss(params, data.x_train[shards[w]], data.y_train[shards[w]]),
                "accuracy": accuracy(params, data.x_test, data.y_test),
                "examples": config.local_steps * config.batch_size,
            }

        mixer = LiveMixer(workers, metrics)
        if mixer_out is not None:
            mixer_out.append(mixer)
        return await train(config, data, shards, mixer, on_round=on_round)
    finally:
        # Close every worker even if one close fails: each holds a lease and an exchange server.
        closing = await asyncio.gather(*(worker.close() for worker in workers), return_exceptions=True)
        for client in clients:
            await client.close()
        for outcome in closing:
            if isinstance(outcome, BaseException):
                print(f"closing a worker failed: {outcome!r}", file=sys.stderr)


# ---------------------------------------------------------------------------------------- CLI


def plot_live(endpoints: str, group: str, path: Path, credentials: Credentials | None = None) -> int:
    """Draw the rounds of ``group`` as the cluster recorded them (what ``cpctl gossip plot`` draws:
    the workers' reported accuracy and loss, and the consensus distance) into the PNG ``path``."""
    from controlplane.cli.gossip import plot_rounds
    from controlplane.client import Client, Credentials

    with Client(endpoints, credentials=credentials or Credentials.from_env()) as client:
        rounds = client.gossip.rounds(group, limit=1000)
    return plot_rounds(rounds, path, f"digits, gossip group {group}")


def log_to_stderr() -> None:
    """Send structlog's output (the workers' and the client's warnings) to stderr, where a CLI's
    progress belongs: stdout carries the results, one JSON line each with ``--output json``."""
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def _text_line(stat: RoundStats, mix: MixRound | None) -> str:
    line = (
        f"round {stat.round:3d}  workers mean {_pct(stat.mean_accuracy)} "
        f"min {_pct(stat.min_accuracy)} max {_pct(stat.max_accuracy)}  "
        f"consensus {stat.consensus_distance:9.3e}  central {_pct(stat.central_accuracy)}"
    )
    if mix is not None:
        line += f"  gossip {stat.gossip_seconds:6.3f} s  {mix.bytes / 1e3:7.1f} kB"
        if mix.failed:
            line += f"  {mix.failed} failed"
    return line


def main(argv: list[str] | None = None) -> int:
    d = Config()
    parser = argparse.ArgumentParser(
        prog="python -m gossip.examples.digits",
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
    )
    parser.add_argument("--rounds", type=int, default=d.rounds)
    parser.add_argument("--local-steps", type=int, default=d.local_steps, help="SGD steps per worker per round")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (cosine decay to 0)")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--alpha", type=float, default=d.alpha, help="Dirichlet label skew (smaller: more skewed)")
    parser.add_argument("--workers", type=int, default=d.workers)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--no-gossip", action="store_true", help="workers train alone (the baseline); simulated")
    parser.add_argument("--live", action="store_true", help="real gossip.Workers; a local 3-server cluster")
    parser.add_argument("--endpoints", help="HOST:PORT,... of an existing cluster (implies --live)")
    parser.add_argument("--round-timeout", type=float, default=30.0, help="live: seconds a round may take")
    parser.add_argument(
        "--compression", choices=("none", "int8"), default="none", help="how exchanges travel (int8: 8-bit)"
    )
    parser.add_argument("--output", choices=("text", "json"), default="text")
    parser.add_argument(
        "--plot", type=Path, help="live: afterwards, draw the rounds the cluster recorded into this PNG (matplotlib)"
    )
    args = parser.parse_args(argv)
    config = Config(
        workers=args.workers,
        rounds=args.rounds,
        local_steps=args.local_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        alpha=args.alpha,
        seed=args.seed,
        compression="" if args.compression == "none" else args.compression,
    )
    live = args.live or args.endpoints is not None
    if live and args.no_gossip:
        parser.error("--no-gossip is a simulated baseline; it cannot be combined with --live or --endpoints")
    if args.plot is not None and (not live or args.plot.suffix.lower() != ".png"):
        parser.error("--plot FILE.png draws the rounds a cluster recorded: it needs --live or --endpoints")
    mixers: list[Any] = []  # the LiveMixer or SimulatedMixer, for each round's bytes

    def report(stat: RoundStats) -> None:
        mix = mixers[0].history[-1] if mixers and mixers[0].history else None
        if args.output == "json":
            line = {"type": "round", **asdict(stat)}
            if mix is not None:
                line |= {"bytes": mix.bytes, "failed": mix.failed}
            print(json.dumps(line), flush=True)
        else:
            print(_text_line(stat, mix), flush=True)

    if args.output == "text":
        mode = "live" if live else "no gossip (workers alone)" if args.no_gossip else "simulated gossip (in-process)"
        print(
            f"digits: {config.workers} workers, Dirichlet(alpha={config.alpha}) label shards, "
            f"{config.rounds} rounds x {config.local_steps} local steps, {mode}",
            flush=True,
        )
    if not live:
        result = run_simulated(config, gossip=not args.no_gossip, on_round=report, mixer_out=mixers)
    else:
        log_to_stderr()
        with contextlib.ExitStack() as stack:
            endpoints, credentials = args.endpoints, None
            if not endpoints:
                cluster = stack.enter_context(local_cluster())
                endpoints, credentials = cluster.endpoints, cluster.credentials
                if args.output == "text":
                    print(f"local cluster up: {endpoints}", flush=True)
            group = f"digits-{secrets.token_hex(4)}"
            if args.output == "text":
                print(f"gossip group {group} (cpctl gossip rounds {group})", flush=True)
            result = asyncio.run(
                run_live(
                    config,
                    endpoints,
                    group=group,
                    round_timeout_s=args.round_timeout,
                    on_round=report,
                    mixer_out=mixers,
                    credentials=credentials,
                )
            )
            if args.plot is not None:
                drawn = plot_live(endpoints, group, args.plot, credentials)
                if args.output == "text":
                    print(f"wrote {args.plot}: {drawn} training rounds of group {group}", flush=True)
    summary = result.summary()
    if mixers and mixers[0].history:
        # Mean over rounds of the model bytes every worker received: what compression cuts.
        summary["bytes_per_round"] = round(sum(m.bytes for m in mixers[0].history) / len(mixers[0].history))
    if args.output == "json":
        print(json.dumps({"type": "summary", "mode": "live" if live else "simulated", **summary}), flush=True)
    else:
        print(
            f"final: workers mean {_pct(result.final.mean_accuracy)} (min {_pct(result.final.min_accuracy)}), "
            f"central {_pct(result.final.central_accuracy)}, gap {100 * result.gap:.2f} points; "
            f"average of the workers' models {_pct(result.average_model_accuracy)}; "
            f"shard sizes {list(result.shard_sizes)}"
            + (f"; {summary['bytes_per_round']:,} bytes per round" if "bytes_per_round" in summary else ""),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
