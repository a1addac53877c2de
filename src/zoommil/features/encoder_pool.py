"""Encoding on every CPU core: single-threaded encoder processes fed patch batches.

Why processes, not torch threads: on CPU the fastest batches are small (4 patches), and one
process with N torch threads leaves most of them idle on such batches (reading, the MIL head
and Python between batches are serial). N processes with one thread each encode N batches at
once and scale with the cores, the same reason ``zoommil profile --threads N`` runs N
processes over slides.

Each worker builds its own encoder once from the same `EncoderRecipe` (encoder name, weights,
seed, precision), so a batch's features are those of the in-process `PatchEncoder` with one
torch thread: at fp32 bit for bit (the batches are the same, only where they run changes).
Results come back in submission order and at most ``window`` batches are in flight, so memory
stays at a few batches whatever the slide's size.

`cpu_encoder` with N threads starts N - 1 workers and lets the calling process, which has
built its encoder already, encode too: it works while the workers start (importing torch and
building an encoder take seconds), and N encoders cost N, not N + 1, copies of the model.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from zoommil.errors import ZoomMILError
from zoommil.features.encoder import PatchEncoder, build_encoder, resolve_precision
from zoommil.features.encoders.registry import DEFAULT_ENCODER, EncoderSpec, get_spec
from zoommil.features.precision import PRECISION_CHOICES
from zoommil.processes import init_worker

#: Seconds `close` gives idle workers to exit before terminating them.
_EXIT_GRACE_S = 10.0


@dataclass(frozen=True)
class EncoderRecipe:
    """What a worker needs to build the same encoder as the parent (all picklable)."""

    encoder: str = DEFAULT_ENCODER
    weights: str = "random"
    seed: int = 0
    precision: str = "fp32"

    def build(self, device: str | torch.device = "cpu") -> PatchEncoder:
        model, _ = build_encoder(self.weights, seed=self.seed, encoder=self.encoder)
        return PatchEncoder(model, device=device, precision=self.precision)


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _serve(recipe: EncoderRecipe, tasks: Any, results: Any, parent: int) -> None:
    """A worker: build the encoder once, then encode ``(seq, batch)`` until ``None``.

    Errors travel back as values (``(seq, None, reason)``); Ctrl-C is left to the parent,
    which terminates the workers; a worker whose parent died exits on its own, also while it
    is blocked reading a half-sent batch or writing a result nobody reads (`exit_with_parent`:
    a killed parent left such a worker running with its encoder's memory, for good).
    """
    init_worker(parent)
    # the parent built the same encoder and warned already (e.g. about RANDOM weights)
    logging.getLogger("zoommil.features.encoders.weights").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    encoder: PatchEncoder | None = None
    try:
        encoder = recipe.build()
        failure = ""
    except Exception as error:  # reported with the first batch
        failure = f"cannot build encoder {recipe.encoder}: {_one_line(error)}"
    while True:
        item = tasks.get()  # a dead parent: `exit_with_parent`'s watcher ends the process
        if item is None:  # every result was received: skip the interpreter's teardown (~1 s
            results.close()  # with torch loaded, on the caller's clock), flushing first
            results.join_thread()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        seq, batch = item
        if encoder is None:
            results.put((seq, None, failure))
            continue
        try:
            results.put((seq, encoder.encode(batch), None))
        except Exception as error:  # one line back to the parent
            results.put((seq, None, _one_line(error)))


#: Batches queued per worker (one encoding, one waiting), so a worker never waits for the
#: parent while the parent encodes a batch of its own.
_QUEUED_PER_WORKER = 2
#: Out-of-order results held at most (features only: a few KB each) before waiting in order.
_MAX_HELD = 64


class EncoderPool:
    """``processes`` spawned single-threaded encoder processes; use as a context manager.

    `imap` encodes an iterable of uint8 [B, H, W, 3] batches and yields their float32
    [B, dim] features in order. It has the attributes callers of a `PatchEncoder` read
    (``dim``, ``spec``, ``device``, ``precision``), so `zoommil.features.extraction.encode_stream`
    takes either. A worker's error is a `ZoomMILError` (one line) and stops the pool.

    With ``local`` (this process's single-threaded encoder, built from the same recipe) this
    process encodes the batches the workers have no room for: each worker keeps
    ``_QUEUED_PER_WORKER`` batches queued and the rest are encoded here.
    ``local_batches`` / ``worker_batches`` count where the batches went.
    """

    def __init__(
        self,
        recipe: EncoderRecipe,
        processes: int,
        window: int | None = None,
        local: PatchEncoder | None = None,
    ) -> None:
        if processes < 1:
            raise ZoomMILError(f"encoder processes must be >= 1, got {processes}")
        if recipe.precision not in PRECISION_CHOICES:
            choices = ", ".join(PRECISION_CHOICES)
            raise ZoomMILError(f"unknown precision {recipe.precision!r} (use {choices})")
        self.spec: EncoderSpec = get_spec(recipe.encoder)
        self.device = torch.device("cpu")
        self.precision = resolve_precision(recipe.precision, self.device)
        self.recipe = EncoderRecipe(recipe.encoder, str(recipe.weights), recipe.seed,
                                    self.precision)  # fmt: skip
        self.processes = int(processes)
        self.window = max(1, window or _QUEUED_PER_WORKER * self.processes)
        self._local = local
        ctx = multiprocessing.get_context("spawn")  # no inherited thread pools or locks
        self._tasks = ctx.Queue()
        self._results = ctx.Queue()
        self._sent = 0  # sequence number of the next batch submitted
        self._next = 0  # sequence number of the next result to yield
        self._submitted = 0  # batches sent to the workers
        self._arrived = 0  # results received, including those of abandoned calls
        self._ready: dict[int, tuple[Any, str | None]] = {}
        self._workers = [
            ctx.Process(
                target=_serve,
                args=(self.recipe, self._tasks, self._results, os.getpid()),
                name=f"zoommil-encoder-{i}",
                daemon=True,
            )
            for i in range(self.processes)
        ]
        try:
            for worker in self._workers:
                worker.start()
        except BaseException:
            self.close()
            raise

    @property
    def dim(self) -> int:
        return int(self.spec.dim)

    @property
    def worker_batches(self) -> int:
        """Batches sent to the encoder processes so far."""
        return self._submitted

    @property
    def local_batches(self) -> int:
        """Batches encoded in this process so far (only with ``local``)."""
        return self._sent - self._submitted

    @property
    def closed(self) -> bool:
        return not self._workers

    def imap(self, batches: Iterable[np.ndarray | torch.Tensor]) -> Iterator[np.ndarray]:
        """Features of each batch, in submission order, with at most ``window`` in flight.

        A generator left early (an error upstream, a consumer that stops) forgets its
        outstanding batches, so the pool can serve the next call.
        """
        try:
            for batch in batches:
                if self._local is None:
                    self._submit(batch)
                    while self._sent - self._next >= self.window:
                        yield self._collect()
                    continue
                self._poll()
                if self._at_workers() < self.window:
                    self._submit(batch)
                else:
                    self._encode_here(batch)
                while self._next < self._sent and (
                    self._next in self._ready or len(self._ready) >= _MAX_HELD
                ):
                    yield self._collect()
            while self._next < self._sent:
                yield self._collect()
        finally:
            self._next = self._sent  # results of abandoned batches are dropped on arrival
            self._ready.clear()

    def encode(self, patches: np.ndarray, batch_size: int = 4) -> np.ndarray:
        """uint8 [N, H, W, 3] -> float32 [N, dim], ``batch_size`` patches per task."""
        patches = np.asarray(patches)
        step = max(1, int(batch_size))
        parts = list(self.imap(patches[i : i + step] for i in range(0, len(patches), step)))
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)

    def _submit(self, batch: np.ndarray | torch.Tensor) -> None:
        if self.closed:
            raise ZoomMILError("the encoder pool is closed")
        if isinstance(batch, torch.Tensor):
            batch = batch.numpy()
        self._tasks.put((self._sent, np.ascontiguousarray(batch)))
        self._sent += 1
        self._submitted += 1

    def _encode_here(self, batch: np.ndarray | torch.Tensor) -> None:
        """Encode in this process (the workers' queues are full); an error closes the pool."""
        if self.closed:
            raise ZoomMILError("the encoder pool is closed")
        try:
            out = self._local.encode(batch)
        except BaseException:
            self.close()
            raise
        self._ready[self._sent] = (out, None)
        self._sent += 1

    def _at_workers(self) -> int:
        """Batches submitted to the workers whose results have not been received."""
        return self._submitted - self._arrived

    def _poll(self) -> None:
        """Take the results that have arrived, without waiting."""
        while True:
            try:
                self._receive(self._results.get_nowait())
            except queue.Empty:
                return

    def _receive(self, item: tuple[int, Any, str | None]) -> None:
        seq, out, error = item
        self._arrived += 1
        if seq >= self._next:  # older ones belong to an abandoned call
            self._ready[seq] = (out, error)

    def _collect(self) -> np.ndarray:
        want = self._next
        while want not in self._ready:
            try:
                self._receive(self._results.get(timeout=1.0))
            except queue.Empty:
                self._check_alive()
        out, error = self._ready.pop(want)
        self._next += 1
        if error is not None:
            self.close()
            raise ZoomMILError(f"encoder process: {error}")
        return out

    def _check_alive(self) -> None:
        for worker in self._workers:
            if worker.exitcode is not None:
                code = worker.exitcode
                self.close()
                why = " (killed: out of memory?)" if code == -signal.SIGKILL else ""
                raise ZoomMILError(f"encoder process {worker.name} exited with code {code}{why}")

    def close(self) -> None:
        """Stop the workers: idle ones exit, busy or stuck ones are terminated."""
        workers, self._workers = self._workers, []
        if not workers:
            return
        if self._arrived >= self._submitted:  # idle: let them exit (after a Ctrl-C: terminated)
            for _ in workers:
                self._tasks.put(None)
            deadline = time.monotonic() + _EXIT_GRACE_S
            while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
                try:
                    self._results.get(timeout=0.05)
                except queue.Empty:
                    pass
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
        for worker in workers:
            worker.join()
        for q in (self._tasks, self._results):
            q.cancel_join_thread()  # never block exit on batches nobody will read
            q.close()

    def __enter__(self) -> EncoderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Either way of encoding: in this process, or in encoder processes.
AnyEncoder = PatchEncoder | EncoderPool


def wants_pool(device: torch.device, threads: int | None) -> bool:
    """Encoder processes pay off on CPU with more than one thread asked for."""
    return device.type == "cpu" and threads is not None and threads > 1


def set_encoder_threads(device: torch.device, threads: int | None) -> None:
    """Torch threads of this process for ``--threads``: one when the work goes to encoder
    processes (each single-threaded), else ``threads``; ``None``/0 leaves torch's default."""
    if threads:
        torch.set_num_threads(1 if wants_pool(device, threads) else threads)


@contextmanager
def cpu_encoder(
    encoder: PatchEncoder, recipe: EncoderRecipe, threads: int | None
) -> Iterator[PatchEncoder | EncoderPool]:
    """On CPU with ``threads`` > 1: ``encoder`` (single-threaded, see `set_encoder_threads`)
    plus ``threads`` - 1 encoder processes built from ``recipe``; else ``encoder`` itself."""
    if not wants_pool(encoder.device, threads):
        yield encoder
        return
    recipe = EncoderRecipe(recipe.encoder, str(recipe.weights), recipe.seed, encoder.precision)
    with EncoderPool(recipe, int(threads) - 1, local=encoder) as pool:
        yield pool
