"""Serving many visitors: concurrent requests for the same bot are decoded together in one batched search.

    >>> scheduler = BatchScheduler(load_bots())
    >>> scheduler.respond("beam", "how are you?", {"beam_size": 5}).text
    >>> scheduler.respond("rl", "why not?", {}, history=["want to go hiking?", "no"]).text   # a conversation
    >>> future = scheduler.submit("antilm", "hi there", {})     # a Ticket: concurrent.futures.Future[Reply]
    >>> scheduler.submit("beam", "hi", {}, trace=True, prefix_ids=[42, 7])  # traced, forced start (a branch)
    >>> respond = scheduler.responder("beam", timeout=60)       # Bot.respond's signature, through the scheduler
    >>> future.result().text, future.queue_s, future.batch_size
    >>> scheduler.stats()["largest_batch"]
    >>> scheduler.close()

How a request travels:
  1. ``submit`` checks it (bot name, settings through ``bot.settings``, prompt through ``bot.encode_prompt``,
     ``prefix_ids`` through :func:`core.decoding.check_prefix_ids`), so a bad request fails alone with a
     ValueError (a SettingError naming the field) and never enters a batch. Past ``max_queue`` waiting requests it
     raises :class:`Busy` at once.
  2. It joins the group of its bot, its effective :class:`~core.decoding.DecodeConfig`, its ``trace`` flag and its
     ``prefix_ids`` (the arguments of :meth:`core.bots.Bot.respond_batch` beside the settings, one value per
     call): requests that differ in any of them never share a search; requests of any history length do (each
     prompt has its own window). Sampling with an explicit seed is a group of its own (its draws would change
     next to other prompts).
  3. A decode worker takes the group whose first request is the oldest, once that request has waited
     ``max_wait_s`` or the group holds ``max_batch`` requests, and decodes up to ``max_batch`` of them with one
     ``bot.respond_batch`` call. Requests cancelled meanwhile (the client went away) are dropped first. If the
     call raises, its requests are decoded one by one, so only the failing one fails.
With ``batching=False`` every request is decoded alone, in arrival order, by the same workers (the baseline of
``bench/load.py``). With ``process_loader`` each worker hands its batches to a :class:`DecodeProcess`: the search
runs in a child process, so its Python and the web server's never wait for each other on one GIL.

Batched greedy and beam replies hold the same tokens as the same requests decoded alone (tests/test_serving.py),
but their scores and log-probs may differ in the last float32 bits (about 1e-7 relative): the CPU GEMM (MKL) sums
a row's products in an order that depends on how many rows the call has (measured on torch 2.13 / MKL 2024.2: one
order for 1 row, another for 2-3, others from 4), so a float of a batched call is not bitwise that of the call
alone. Only an exact near-tie between two hypotheses could therefore resolve differently.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import torch

from core.bots import Bot
from core.decoding import STRATEGIES, Reply, check_prefix_ids
from core.errors import SettingError

_log = logging.getLogger(__name__)

GroupKey = tuple[Any, ...]


class Busy(RuntimeError):
    """The queue is full (or the scheduler is closed): the caller should try again shortly."""


class Ticket(Future[Reply]):
    """The Future of one request. Besides the Reply it tells how long the request waited before its decode
    started (``queue_s``) and how many requests shared that decode (``batch_size``); both are set before the
    result."""

    def __init__(self) -> None:
        super().__init__()
        self.queue_s: float | None = None
        self.batch_size: int | None = None


@dataclass
class _Request:
    bot: str
    prompt: str
    overrides: dict[str, Any]
    key: GroupKey
    ticket: Ticket
    history: list[str] | None = None  # the earlier turns, oldest first
    trace: bool = False  # the reply lists every candidate of its search (Reply.trace)
    prefix_ids: list[int] | None = None  # token ids the reply must start with (a branch from a traced node)
    t_submit: float = field(default_factory=time.perf_counter)


def usable_cpus() -> int:
    """CPUs this process may run on: $OMP_NUM_THREADS when set, else the CPU affinity mask."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class DecodeProcess:
    """A child process that decodes batches for the parent: ``respond_batch(bot, prompts, overrides, histories,
    trace=..., prefix_ids=...)`` there (the arguments of :meth:`core.bots.Bot.respond_batch`).

    Why: on a CPU server the beam search is mostly Python between small tensor ops, and so is the web server; in
    one process they take turns on the GIL and a second core idles (``bench/load.py`` shows the server at about one
    core). In a child process (started with ``spawn``: no fork of a process with threads) the search has a GIL of
    its own. ``loader`` is a picklable callable that returns the same bots in the child (e.g.
    ``functools.partial(core.bots.bots_of_folders, folders, device)``); the child sets ``threads`` torch threads.
    One request at a time per process; a child that dies fails the batch it held and is started again for the next.
    """

    def __init__(self, loader: Callable[[], Mapping[str, Bot]], threads: int, *, start_timeout: float = 300.0
                 ) -> None:
        self.loader, self.threads, self.start_timeout = loader, threads, start_timeout
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Any = None
        self.restarts = -1
        self._start()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_decode_child, args=(child, self.loader, self.threads), daemon=True,
                           name="chatbot-arena-decode")
        proc.start()
        child.close()
        if not parent.poll(self.start_timeout):
            proc.kill()
            raise RuntimeError(f"the decode process did not start within {self.start_timeout:.0f} s")
        try:
            ok, value = parent.recv()
        except EOFError:
            proc.join(5)
            ok, value = False, f"it exited while starting (exit code {proc.exitcode})"
        if not ok:
            proc.join(5)
            raise RuntimeError(f"the decode process could not load the bots: {value}")
        self._proc, self._conn = proc, parent
        self.restarts += 1

    def respond_batch(self, bot: str, prompts: list[str], overrides: Mapping[str, Any],
                      histories: list[list[str] | None] | None = None, *, trace: bool = False,
                      prefix_ids: Sequence[int] | None = None) -> list[Reply]:
        """The replies of ``bot`` to ``prompts`` (after ``histories``; ``trace`` and ``prefix_ids`` as in
        :meth:`core.bots.Bot.respond_batch`) decoded in the child; its exception is raised here."""
        job = (bot, list(prompts), dict(overrides), histories, trace,
               list(prefix_ids) if prefix_ids is not None else None)
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                self._start()
            try:
                self._conn.send(job)
                ok, value = self._conn.recv()
            except (EOFError, OSError) as e:  # the child died during this batch
                self._proc = None
                raise RuntimeError(f"the decode process exited ({type(e).__name__}); it restarts for the next "
                                   "request") from e
        if not ok:
            raise value
        return value

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def close(self) -> None:
        """Ask the child to exit; kill it if it does not within a few seconds."""
        with self._lock:
            if self._proc is None:
                return
            try:
                self._conn.send(None)
            except OSError:
                pass
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
            self._conn.close()
            self._proc = None


def _decode_child(conn: Any, loader: Callable[[], Mapping[str, Bot]], threads: int) -> None:
    """The child's loop: load the bots, say so, then answer (bot, prompts, overrides, histories, trace, prefix_ids)
    with (ok, replies | error)."""
    try:
        torch.set_num_threads(threads)
        bots = dict(loader())
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send((False, f"{type(e).__name__}: {e}"))
        return
    conn.send((True, list(bots)))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent went away
            return
        if msg is None:
            return
        bot, prompts, overrides, histories, trace, prefix_ids = msg
        try:
            conn.send((True, bots[bot].respond_batch(prompts, histories=histories, trace=trace,
                                                     prefix_ids=prefix_ids, **overrides)))
        except Exception as e:  # noqa: BLE001 - handed to the parent's caller
            try:
                conn.send((False, e))
            except Exception:  # noqa: BLE001 - an exception that does not pickle
                conn.send((False, RuntimeError(f"{type(e).__name__}: {e}")))
        release_free_memory()


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the OS (glibc's ``malloc_trim``; False where there is none). A batch's
    tensors come in many sizes (prompts leave a batch as they finish), and glibc keeps what they freed: without
    this a decode process grew by 20-40% in its first minutes under load."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class BatchScheduler:
    """Gathers concurrent requests per (bot, settings) and decodes each group in one batched call.

    ``workers`` decode threads (default 1) share the CPUs: torch gets ``threads`` intra-op threads, by default
    (:func:`usable_cpus` - ``reserve_cpus``) // ``workers``, at least 1, set once here for the whole process (a web
    server reserves one CPU for its event loop). ``stats()`` counts what happened.
    """

    def __init__(self, bots: Mapping[str, Bot], *, max_batch: int = 32, max_wait_s: float = 0.005,
                 max_queue: int = 256, batching: bool = True, workers: int = 1, threads: int | None = None,
                 process_loader: Callable[[], Mapping[str, Bot]] | None = None, reserve_cpus: int = 0) -> None:
        for name, value, lo in (("max_batch", max_batch, 1), ("max_queue", max_queue, 1), ("workers", workers, 1)):
            if not isinstance(value, int) or value < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
        if not max_wait_s >= 0:
            raise ValueError(f"max_wait_s must be >= 0 seconds, got {max_wait_s!r}")
        self.bots = dict(bots)
        self.max_batch, self.max_wait_s, self.max_queue, self.batching = max_batch, max_wait_s, max_queue, batching
        self.workers = workers
        self.threads = threads if threads is not None else max(1, (usable_cpus() - reserve_cpus) // workers)
        torch.set_num_threads(self.threads)  # the one place the serving process sets its torch threads
        # one decode process per worker (the children set the same threads), or decoding in this process
        self._procs = [DecodeProcess(process_loader, self.threads) for _ in range(workers)] if process_loader else []
        self._worker_of = threading.local()
        self._cond = threading.Condition()
        self._groups: dict[GroupKey, deque[_Request]] = {}  # waiting requests, per group, oldest first
        self._waiting = 0
        self._closed = False
        self._alone = itertools.count()  # makes a group key unique (seeded sampling, batching=False)
        self._stats = dict(requests=0, batches=0, largest_batch=0, decoded=0, failed=0, cancelled=0, busy=0,
                           decoding_now=0, max_decodes_at_once=0, queue_s_total=0.0, queue_s_max=0.0)
        self._threads = [threading.Thread(target=self._work, args=(i,), name=f"decode-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------------- the callers' side

    def submit(self, bot: str, prompt: str, overrides: Mapping[str, Any] | None = None, *,
               history: Sequence[str] | None = None, trace: bool = False,
               prefix_ids: Sequence[int] | None = None) -> Ticket:
        """Queue one request (``history``: the conversation before ``prompt``, oldest first; ``trace``: the reply
        lists every candidate of its search; ``prefix_ids``: token ids the reply must start with; the last two as
        in :meth:`core.bots.Bot.respond`, whose reply the Ticket's result is, or the exception of this request
        alone). Raises ValueError (a SettingError naming the field) for a bad request and :class:`Busy` when
        ``max_queue`` requests are waiting."""
        key, overrides, prefix = self._check(bot, prompt, overrides, history, trace, prefix_ids)
        req = _Request(bot, prompt, overrides, key, Ticket(), history=list(history) if history else None,
                       trace=trace, prefix_ids=prefix)
        with self._cond:
            if self._closed:
                raise Busy("the server is shutting down; try again in a few seconds")
            if self._waiting >= self.max_queue:
                self._drop_cancelled()
            if self._waiting >= self.max_queue:
                self._stats["busy"] += 1
                raise Busy(f"the server is busy: {self._waiting} requests are waiting; try again in a few seconds")
            self._groups.setdefault(key, deque()).append(req)
            self._waiting += 1
            self._stats["requests"] += 1
            self._cond.notify_all()
        return req.ticket

    def respond(self, bot: str, prompt: str, overrides: Mapping[str, Any] | None = None, *,
                history: Sequence[str] | None = None, trace: bool = False, prefix_ids: Sequence[int] | None = None,
                timeout: float | None = None) -> Reply:
        """``submit(...).result(timeout)``; a request that times out is cancelled, so it costs no decode."""
        ticket = self.submit(bot, prompt, overrides, history=history, trace=trace, prefix_ids=prefix_ids)
        try:
            return ticket.result(timeout)
        except FutureTimeout:
            ticket.cancel()
            raise

    def responder(self, bot: str, *, timeout: float | None = None) -> Callable[..., Reply]:
        """``bot``'s :meth:`~core.bots.Bot.respond` through this scheduler: ``respond(prompt, *, history=None,
        trace=False, prefix_ids=None, **overrides)`` gives the same reply, decoded by the workers (in a decode
        process when there are some); it raises what :meth:`respond` raises (ValueError, Busy, and
        ``concurrent.futures.TimeoutError`` after ``timeout`` seconds). What :func:`core.branching.branch` takes."""

        def respond(prompt: str, *, history: Sequence[str] | None = None, trace: bool = False,
                    prefix_ids: Sequence[int] | None = None, **overrides: Any) -> Reply:
            return self.respond(bot, prompt, overrides, history=history, trace=trace, prefix_ids=prefix_ids,
                                timeout=timeout)

        return respond

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters: requests, batches, largest_batch, decoded, failed, cancelled, busy
        (refused), waiting, decoding_now, max_decodes_at_once, queue_s_total / queue_s_max (seconds from submit to
        the start of the decode), plus the settings workers, threads, max_batch, max_wait_s, batching."""
        with self._cond:
            return {**self._stats, "waiting": self._waiting, "workers": self.workers, "threads": self.threads,
                    "max_batch": self.max_batch, "max_wait_s": self.max_wait_s, "batching": self.batching,
                    "decode_processes": len(self._procs)}

    def close(self) -> None:
        """Stop the workers after their current decode; requests still queued fail with Busy."""
        with self._cond:
            self._closed = True
            left = [r for q in self._groups.values() for r in q]
            self._groups.clear()
            self._waiting = 0
            self._cond.notify_all()
        for r in left:
            if r.ticket.set_running_or_notify_cancel():
                r.ticket.set_exception(Busy("the server is shutting down; try again in a few seconds"))
        for t in self._threads:
            if t is not threading.current_thread():
                t.join()
        for proc in self._procs:
            proc.close()

    def __enter__(self) -> BatchScheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, bot: str, prompt: str, overrides: Mapping[str, Any] | None,
               history: Sequence[str] | None = None, trace: bool = False,
               prefix_ids: Sequence[int] | None = None) -> tuple[GroupKey, dict[str, Any], list[int] | None]:
        """Validate a request (ValueError naming what is wrong); return its group key, its overrides and its
        ``prefix_ids`` as a list."""
        if not isinstance(bot, str) or bot not in self.bots:
            raise ValueError(f"unknown bot {bot!r}; this server has {list(self.bots)}")
        if overrides is None:
            overrides = {}
        if not isinstance(overrides, Mapping) or not all(isinstance(k, str) for k in overrides):
            raise ValueError(f"settings must be a mapping of DecodeConfig field names, got {overrides!r}")
        overrides = dict(overrides)
        cfg = self.bots[bot].settings(**overrides)  # ValueError naming the setting and its range
        self.bots[bot].encode_prompt(prompt, history)  # ValueError for an empty prompt or a bad history
        if not isinstance(trace, bool):
            raise SettingError(f"trace must be true or false, got {type(trace).__name__}", field="trace")
        prefix = self._check_prefix_ids(self.bots[bot], cfg, prefix_ids)
        key: GroupKey = (bot, tuple(sorted(cfg.to_dict().items())), trace, tuple(prefix) if prefix is not None
                         else None)  # one respond_batch call: one settings, one trace flag, one forced start
        if not self.batching or (STRATEGIES[cfg.strategy].random and cfg.seed is not None):
            key += (next(self._alone),)  # a group of its own
        return key, overrides, prefix

    @staticmethod
    def _check_prefix_ids(bot: Bot, cfg: Any, prefix_ids: Sequence[int] | None) -> list[int] | None:
        """``prefix_ids`` as a list, checked as :func:`core.decoding.generate` checks them (SettingError naming
        ``prefix``): token ids a reply can hold, not with the text ``prefix`` setting."""
        if prefix_ids is None:
            return None
        if isinstance(prefix_ids, (str, bytes)) or not isinstance(prefix_ids, Sequence):
            raise SettingError(f"prefix_ids must be a list of token ids, got {type(prefix_ids).__name__}",
                               field="prefix")
        if cfg.prefix:
            raise SettingError("give the reply's start as prefix (text) or as prefix_ids, not both", field="prefix")
        return check_prefix_ids(prefix_ids, getattr(getattr(bot.model, "cfg", None), "vocab_size", None), cfg)

    def _drop_cancelled(self) -> None:
        """Forget waiting requests whose callers cancelled them (under the lock)."""
        for key in list(self._groups):
            q = self._groups[key]
            kept = deque(r for r in q if not r.ticket.cancelled())
            self._stats["cancelled"] += len(q) - len(kept)
            self._waiting -= len(q) - len(kept)
            if kept:
                self._groups[key] = kept
            else:
                del self._groups[key]

    # ------------------------------------------------------------------------- the workers' side

    def _work(self, index: int = 0) -> None:
        self._worker_of.index = index
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._decode(batch)

    def _next_batch(self) -> list[_Request] | None:
        """Wait for the group of the oldest waiting request to be ready; take up to max_batch live requests of it.
        None once closed."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                if not self._groups:
                    self._cond.wait()
                    continue
                key = min(self._groups, key=lambda k: self._groups[k][0].t_submit)
                q = self._groups[key]
                wait = q[0].t_submit + self.max_wait_s - time.perf_counter()
                if self.batching and len(q) < self.max_batch and wait > 0:
                    self._cond.wait(wait)
                    continue
                batch, now = [], time.perf_counter()
                while q and len(batch) < self.max_batch:
                    req = q.popleft()
                    self._waiting -= 1
                    if not req.ticket.set_running_or_notify_cancel():  # cancelled while it waited
                        self._stats["cancelled"] += 1
                        continue
                    req.ticket.queue_s = now - req.t_submit
                    batch.append(req)
                if not q:
                    del self._groups[key]
                if not batch:
                    continue
                s = self._stats
                s["batches"] += 1
                s["largest_batch"] = max(s["largest_batch"], len(batch))
                s["queue_s_total"] += sum(r.ticket.queue_s for r in batch)
                s["queue_s_max"] = max([s["queue_s_max"]] + [r.ticket.queue_s for r in batch])
                s["decoding_now"] += 1
                s["max_decodes_at_once"] = max(s["max_decodes_at_once"], s["decoding_now"])
                return batch

    def _decode(self, batch: list[_Request]) -> None:
        """One batched call; if it raises, each request alone, so that only the failing one fails."""
        bot = self.bots[batch[0].bot]  # one group: the same effective settings, trace flag and prefix_ids
        outcomes: list[Reply | BaseException]
        size = len(batch)  # requests that shared the call that produced each outcome
        try:
            try:
                outcomes = list(self._respond_batch(bot, batch))
                if len(outcomes) != len(batch):
                    raise RuntimeError(f"respond_batch returned {len(outcomes)} replies for {len(batch)} prompts")
            except Exception as e:  # noqa: BLE001 - handed to the callers through their futures
                if len(batch) > 1:  # worth knowing: the whole batch now costs one decode per request
                    _log.warning("a batch of %d %r requests failed (%s: %s); decoding them one by one", len(batch),
                                 bot.name, type(e).__name__, str(e)[:200])
                outcomes = [e] if len(batch) == 1 else [self._alone_outcome(bot, r) for r in batch]
                size = 1
        finally:
            with self._cond:
                self._stats["decoding_now"] -= 1
        for req, out in zip(batch, outcomes):
            req.ticket.batch_size = size
            with self._cond:
                self._stats["failed" if isinstance(out, BaseException) else "decoded"] += 1
            if isinstance(out, BaseException):
                req.ticket.set_exception(out)
            else:
                req.ticket.set_result(out)

    def _respond_batch(self, bot: Bot, batch: list[_Request]) -> list[Reply]:
        """This worker's decode of one group's requests: in its decode process when there is one, else here."""
        first = batch[0]
        prompts, histories = [r.prompt for r in batch], [r.history for r in batch]
        if self._procs:
            return self._procs[self._worker_of.index].respond_batch(
                bot.name, prompts, first.overrides, histories, trace=first.trace, prefix_ids=first.prefix_ids)
        return bot.respond_batch(prompts, histories=histories, trace=first.trace, prefix_ids=first.prefix_ids,
                                 **first.overrides)

    def _alone_outcome(self, bot: Bot, req: _Request) -> Reply | BaseException:
        try:
            return self._respond_batch(bot, [req])[0]
        except Exception as e:  # noqa: BLE001 - handed to the caller through its future
            return e
