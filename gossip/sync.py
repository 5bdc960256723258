"""``gossip.SyncWorker``: :class:`gossip.Worker` for synchronous training loops (PyTorch and the like).

::

    from gossip import connect

    with connect("10.0.0.1:7101,10.0.0.2:7101", "mnist", "node-7", params, listen="0.0.0.0:7300",
                 advertise="10.0.0.7:7300") as worker:
        for epoch in range(epochs):
            params, n = train_locally(params)           # on this thread: the gossip loop is elsewhere
            params = worker.step(params, examples=n)    # blocks for this round's exchange

Why a thread of its own: the async :class:`~gossip.worker.Worker` heartbeats, follows the round watch
and serves its partner's dial on its event loop. Training run on that loop (the obvious way to call
``await worker.step`` from a training script) blocks all three for as long as an epoch takes: the
lease runs out, the node is declared dead and its partners time out. Here the loop runs on a
background thread owned by this module and training stays on the caller's thread, so nothing the
caller does can starve the loop (torch and numpy release the GIL in their kernels; a pure-Python
training step still shares the GIL, but the interpreter switches threads every 5 ms).

All ``SyncWorker`` objects of a process share one loop thread, started with the first and stopped
when the last one closes: one thread instead of one per worker, and grpc.aio is only ever driven
from one loop at a time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    from controlplane.client import AsyncClient, Credentials
    from controlplane.client._gossip import GroupConfig
    from gossip.worker import RoundStats, Worker

__all__ = ["SyncWorker", "connect"]

T = TypeVar("T")

DEFAULT_CLIENT_TIMEOUT_S = 15.0
"""The control-plane client's per-call timeout (heartbeats, reports, lookups)."""


class _LoopThread:
    """One event loop on a daemon thread, shared by every SyncWorker of the process (reference counted)."""

    _lock = threading.Lock()
    _current: _LoopThread | None = None

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.users = 0
        self._thread = threading.Thread(target=self._run, name="gossip-sync-loop", daemon=True)
        self._thread.start()

    @classmethod
    def acquire(cls) -> _LoopThread:
        with cls._lock:
            if cls._current is None:
                cls._current = _LoopThread()
            cls._current.users += 1
            return cls._current

    def release(self) -> None:
        with self._lock:
            self.users -= 1
            if self.users > 0:
                return
            if _LoopThread._current is self:
                _LoopThread._current = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            leftover = asyncio.all_tasks(self.loop)
            for task in leftover:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and block the calling thread for its result (its exception).
        A timeout, or an interrupt of the waiting thread (Ctrl-C), cancels it on the loop."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("SyncWorker called from its own event loop: use the async gossip.Worker there")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"gave up after {timeout} s") from None
        except BaseException:
            future.cancel()
            raise


class SyncWorker:
    """A :class:`gossip.worker.Worker` whose event loop runs on a background thread, with a blocking API.

    ``endpoints`` and ``credentials`` (default: ``CP_CACERT``/``CP_CERT``/``CP_KEY``/``CP_TOKEN`` from
    the environment) make the worker's own control-plane client (on the background loop); every other
    keyword argument is the async Worker's (``listen``, ``advertise``, ``round_timeout_s``,
    ``min_participants``, ``lease_ttl_s``, ``probe_bytes``, ``tls``, ...).
    ``start`` once, ``step`` once per round, ``close`` at the end (or use it as a context manager).
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        group: str,
        node_id: str,
        *,
        credentials: Credentials | None = None,
        client_timeout_s: float = DEFAULT_CLIENT_TIMEOUT_S,
        **worker_options: Any,
    ) -> None:
        self.group = group
        self.node_id = node_id
        self._runner = _LoopThread.acquire()
        self._closed = False
        try:
            self._client, self._worker = self._runner.run(
                _make(endpoints, group, node_id, credentials, client_timeout_s, worker_options)
            )
        except BaseException:
            self._closed = True
            self._runner.release()
            raise

    @property
    def worker(self) -> Worker:
        """The async Worker underneath (its loop is not the caller's: read attributes, do not await)."""
        return self._worker

    @property
    def address(self) -> str:
        """The gossip address other nodes dial."""
        return self._worker.address

    @property
    def config(self) -> GroupConfig | None:
        """The group's configuration as the cluster holds it (set by ``start``)."""
        return self._worker.config

    @property
    def last_round(self) -> RoundStats | None:
        """The last training round this worker took part in."""
        return self._worker.last_round

    @property
    def last_probe(self) -> RoundStats | None:
        """The last probe round this worker took part in."""
        return self._worker.last_probe

    def start(self, params: dict[str, np.ndarray], *, timeout: float | None = None) -> None:
        """``Worker.start``: open the gossip port, configure the group if absent (its spec from
        ``params``), register the node, start heartbeats and follow the rounds. Blocks until done."""
        self._require_open()
        self._runner.run(self._worker.start(params), timeout)

    def step(
        self, params: dict[str, np.ndarray], *, examples: int | None = None, timeout: float | None = None
    ) -> dict[str, np.ndarray]:
        """``Worker.step``, blocking: wait for the next committed training round that lists this node,
        exchange with its partner, report, and return the mixed parameters (``params`` themselves when
        idle or when the exchange failed). ``examples``: the examples trained on since the last step,
        to weight the pair's average (see ``Worker.step``). ``timeout``: give up waiting after that
        many seconds (``TimeoutError``; the round is abandoned, as if this worker had been slow).
        Heartbeats go on during training and during the wait."""
        self._require_open()
        return self._runner.run(self._worker.step(params, examples=examples), timeout)

    def close(self, *, deregister: bool = True) -> None:
        """``Worker.close``, then the client; the last SyncWorker to close stops the loop thread.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._runner.run(_shutdown(self._client, self._worker, deregister))
        finally:
            self._runner.release()

    def __enter__(self) -> SyncWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"SyncWorker {self.node_id} is closed")


def connect(
    endpoints: str | Sequence[str],
    group: str,
    node_id: str,
    params: dict[str, np.ndarray],
    **options: Any,
) -> SyncWorker:
    """A started :class:`SyncWorker`: ``SyncWorker(endpoints, group, node_id, **options).start(params)``
    (closed again if the start fails)."""
    worker = SyncWorker(endpoints, group, node_id, **options)
    try:
        worker.start(params)
    except BaseException:
        worker.close(deregister=False)
        raise
    return worker


async def _make(
    endpoints: str | Sequence[str],
    group: str,
    node_id: str,
    credentials: Credentials | None,
    client_timeout_s: float,
    worker_options: dict[str, Any],
) -> tuple[AsyncClient, Worker]:
    # Built on the loop thread: the client's channels and the worker's conditions belong to that loop.
    from controlplane.client import AsyncClient, Credentials
    from gossip.worker import Worker

    if credentials is None:
        credentials = Credentials.from_env()
    client = AsyncClient(endpoints, credentials=credentials, timeout=client_timeout_s)
    try:
        return client, Worker(client, group, node_id, **worker_options)
    except BaseException:
        await client.close()
        raise


async def _shutdown(client: AsyncClient, worker: Worker, deregister: bool) -> None:
    try:
        await worker.close(deregister=deregister)
    finally:
        await client.close()
