"""Score a batch of completions with a per-item wall-clock timeout, in worker processes.

    with VerifyRunner(env.verify, workers=1, timeout_s=10.0) as runner:
        verdicts = runner.run([(completion, example), ...])   # scores in input order
        verdicts.scores, verdicts.errors, verdicts.timeouts

An item whose function raises is unscorable (`Score.unscorable`, never a 0) and counted as an error; an item
still running after `timeout_s` is unscorable and counted as a timeout: its worker is killed and replaced, and
the other items of its chunk are sent again, so no other item is lost. A function that returns a non-finite
value, or something that is neither a `Score` nor a number, counts as an error too.

How: `workers` worker processes, each a fresh interpreter (like multiprocessing's "spawn", never fork: the
trainer's process runs torch threads; unlike "spawn", the parent's `__main__` is not re-run, so a script that
calls `train()` needs no `if __name__ == "__main__":` guard). Each worker gets the pickled scoring function once,
at start. Items go out in chunks (about four per worker) over one pipe per worker, so a killed worker cannot
corrupt a shared queue. Each worker writes the start time of its current item to a small shared mapping; the
parent sleeps in `multiprocessing.connection.wait` until a result arrives or the earliest running item's
deadline passes. No signals are used, so `run` works on any thread, and math_verify's `signal.alarm` timeouts
can stay off.

Requirements when `workers > 0` (POSIX): the scoring function must be picklable (an environment's bound
`verify` pickles the environment: `ArithEnv` is picklable; a custom environment must be too) and importable
by name in a fresh interpreter (workers get the parent's `sys.path`; a function defined in `__main__` is not);
completions and references/examples are pickled per batch. A function that cannot be shipped falls back to
inline scoring with a warning.

`workers=0` scores inline in the calling process: errors are still caught and counted, but a timeout cannot be
enforced (no signal, no thread), so a hanging verifier hangs the caller.
"""

from __future__ import annotations

import json
import logging
import math
import mmap
import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as mp_wait
from typing import Any

from credo.envs.base import Score

log = logging.getLogger(__name__)

OK, ERROR, TIMEOUT = "ok", "error", "timeout"
START_TIMEOUT_S = 300.0  # a (re)started worker must have imported and unpickled the function within this
CHUNKS_PER_WORKER = 4  # chunks per worker and batch: balances load against per-chunk round trips
MAX_CHUNK = 256  # items per chunk at most: bounds the work redone when a chunk's worker is killed
MAX_RESTARTS = 5  # workers that die before they are ready, per batch, before `run` gives up

Job = tuple[str, Any]  # (completion, reference or Example)
_Result = tuple[str, Score | None, str]  # (status, the score when ok, error message)


@dataclass
class Verdicts:
    """The outcome of one batch, in input order: a `Score` and a status (ok | error | timeout) per item."""

    scores: list[Score]
    status: list[str]
    messages: list[str]  # the error for items that failed, else ""

    @property
    def errors(self) -> int:
        return self.status.count(ERROR)

    @property
    def timeouts(self) -> int:
        return self.status.count(TIMEOUT)


def as_score(result: Any) -> Score:
    """A function's return value as a `Score`: a `Score` or a real number, finite; TypeError/ValueError otherwise.

    >>> as_score(1).value, as_score(Score(0.5, {"format": 1.0})).parts
    (1.0, {'format': 1.0})
    """
    if isinstance(result, Score):
        if not math.isfinite(result.value):
            raise ValueError(f"non-finite score {result.value}")
        return result
    elif isinstance(result, str | bytes) or not hasattr(result, "__float__"):
        raise TypeError(f"a scoring function must return a Score or a number, got {type(result).__name__}")
    else:
        value, parts = float(result), {}
    if not math.isfinite(value):
        raise ValueError(f"non-finite score {value}")
    return Score(value, dict(parts))


def _call(fn: Callable[[str, Any], Any], completion: str, ref: Any) -> _Result:
    try:
        s = as_score(fn(completion, ref))
        return OK, s, ""
    except Exception as e:
        return ERROR, None, f"{type(e).__name__}: {e}"[:500]


def run_inline(fn: Callable[[str, Any], Any], jobs: Sequence[Job]) -> Verdicts:
    """Score `jobs` in this process: errors caught and counted, no timeout (see the module docstring)."""
    return _verdicts([_call(fn, c, r) for c, r in jobs])


def _verdicts(results: Sequence[_Result | None]) -> Verdicts:
    scores, status, messages = [], [], []
    for r in results:
        st, score, msg = r if r is not None else (ERROR, None, "lost")
        scores.append(score if st == OK and score is not None else Score.unscorable(f"{st}: {msg}"))
        status.append(st)
        messages.append(msg)
    return Verdicts(scores, status, messages)


# ---- worker process ------------------------------------------------------------------------------------

# A worker is a fresh interpreter (`python -c _BOOT conn_fd state_fd sys_path_json`): like multiprocessing's
# "spawn" but without re-running the parent's `__main__`, so an unguarded script that calls `train()` works.
_BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[3]); "
    "from credo.envs.runner import _worker_main; _worker_main(int(sys.argv[1]), int(sys.argv[2]))"
)
_SLOT_BYTES = 16  # the state file: [start time of the current item (0: idle), its index] as doubles, then fn


def _worker_main(conn_fd: int, state_fd: int) -> None:
    """Worker loop: unpickle the function once (from the state file), then score the chunks sent on `conn_fd`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle; the parent ends workers
    conn = Connection(conn_fd)
    mm = mmap.mmap(state_fd, _SLOT_BYTES)
    slot = memoryview(mm).cast("d")
    try:
        try:
            fn = pickle.loads(os.pread(state_fd, os.fstat(state_fd).st_size - _SLOT_BYTES, _SLOT_BYTES))
        except BaseException:
            conn.send(("init_error", traceback.format_exc(limit=8)))
            return
        conn.send(("ready", os.getpid()))
        while True:
            payload = conn.recv_bytes()
            try:
                items = pickle.loads(payload)
            except BaseException as e:
                conn.send(("chunk_error", f"cannot unpickle the batch in the worker: {type(e).__name__}: {e}"))
                continue
            out = []
            for k, (completion, ref) in enumerate(items):
                slot[0] = time.monotonic()  # start time first, then index (see VerifyRunner._run_pool)
                slot[1] = k
                try:
                    out.append(_call(fn, completion, ref))
                except BaseException as e:  # SystemExit and the like from user code: still just this item
                    out.append((ERROR, None, f"{type(e).__name__}: {e}"[:500]))
            slot[0] = 0.0
            conn.send(("results", out))
    except (EOFError, OSError):  # the parent closed the pipe (close()) or died: exit quietly
        return


def _exit_code(proc: subprocess.Popen) -> int | None:
    try:
        return proc.wait(1)
    except subprocess.TimeoutExpired:
        return None


class _Worker:
    """One worker process, its pipe and its shared state (a temporary file, mapped by both processes)."""

    def __init__(self, fn_bytes: bytes) -> None:
        self.conn, child = mp.Pipe(duplex=True)
        with tempfile.TemporaryFile() as f:  # unlinked at once; the mapping and the child's copy of the fd stay
            f.write(bytes(_SLOT_BYTES) + fn_bytes)
            f.flush()
            self._mm = mmap.mmap(f.fileno(), _SLOT_BYTES)
            cmd = [sys.executable, *subprocess._args_from_interpreter_flags(), "-c", _BOOT,
                   str(child.fileno()), str(f.fileno()), json.dumps([str(p) for p in sys.path])]
            self.proc = subprocess.Popen(cmd, pass_fds=(child.fileno(), f.fileno()), stdin=subprocess.DEVNULL)
        child.close()
        self.slot = memoryview(self._mm).cast("d")
        self.t_start = time.monotonic()
        self.ready = False
        self.chunk: list[int] | None = None  # input indices in flight

    def stop(self) -> None:
        """Close the pipe (an idle worker then exits by itself); kill a busy or still-starting one."""
        graceful = self.ready and self.chunk is None
        try:
            self.conn.close()
        except OSError:
            pass
        if graceful:
            try:
                self.proc.wait(0.5)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


# ---- the runner ----------------------------------------------------------------------------------------


class VerifyRunner:
    """Scores `(completion, reference)` jobs with `fn` in `workers` processes, `timeout_s` per item.

    See the module docstring for the guarantees. Start-up is eager (workers begin importing at construction, in
    the background); `close()` or the context manager ends them. Safe to call `run` from any thread; calls are
    serialised.
    """

    def __init__(self, fn: Callable[[str, Any], Any], workers: int = 1, timeout_s: float = 10.0) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.fn, self.workers, self.timeout_s = fn, workers, float(timeout_s)
        self._lock = threading.Lock()
        self._pool: list[_Worker] = []
        self._fn_bytes = b""
        if workers > 0:
            try:
                self._fn_bytes = pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
                if b"__main__" in self._fn_bytes:
                    raise pickle.PicklingError("it refers to __main__, which a worker does not import")
                if os.name != "posix":
                    raise OSError("worker processes need a POSIX system")
            except Exception as e:
                log.warning("verify runner: cannot ship %r to worker processes (%s); scoring inline, without "
                            "timeouts. Define the function in an importable module.", fn, e)
                self.workers = 0
        self._pool = [_Worker(self._fn_bytes) for _ in range(self.workers)]

    # -- lifecycle

    def close(self) -> None:
        """End the workers (idempotent)."""
        pool, self._pool = self._pool, []
        for w in pool:
            w.stop()

    def __enter__(self) -> VerifyRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- scoring

    def run(self, jobs: Sequence[Job]) -> Verdicts:
        """Score every `(completion, reference)` job; results in input order."""
        if self.workers == 0 or not jobs:
            return run_inline(self.fn, jobs)
        with self._lock:
            if not self._pool:
                raise RuntimeError("VerifyRunner.run after close()")
            try:
                return _verdicts(self._run_pool(jobs))
            except BaseException:  # e.g. Ctrl-C: results still in flight must not leak into the next batch
                for i, w in enumerate(self._pool):
                    if w.chunk is not None:
                        self._replace(i)  # kills the busy worker; its replacement starts idle
                raise

    def _replace(self, i: int) -> None:
        self._pool[i].stop()
        self._pool[i] = _Worker(self._fn_bytes)

    def _run_pool(self, jobs: Sequence[Job]) -> list[_Result | None]:
        n = len(jobs)
        size = max(1, min(MAX_CHUNK, -(-n // (self.workers * CHUNKS_PER_WORKER))))
        pending = deque(list(range(i, min(n, i + size))) for i in range(0, n, size))
        results: list[_Result | None] = [None] * n
        remaining, restarts = n, 0

        def finish(i: int, result: _Result) -> None:
            nonlocal remaining
            if results[i] is None:
                remaining -= 1
            results[i] = result

        def lost(i: int, status: str, msg: str) -> None:
            """Worker `i` was killed or died mid-chunk: its current item gets `status`, the rest go out again."""
            nonlocal restarts
            w = self._pool[i]
            chunk, running = w.chunk or [], w.slot[0] > 0
            pos = int(w.slot[1]) if running else -1
            if not w.ready:
                restarts += 1
                if restarts > MAX_RESTARTS:
                    raise RuntimeError(f"verify workers keep dying before they start ({msg})")
            w.chunk = None
            self._replace(i)
            if 0 <= pos < len(chunk):
                finish(chunk[pos], (status, None, msg))
            rest = [j for k, j in enumerate(chunk) if k != pos and results[j] is None]
            if rest:
                pending.appendleft(rest)

        while remaining:
            for i, w in enumerate(self._pool):  # hand chunks to idle, ready workers (never to a busy one)
                while w.ready and w.chunk is None and pending:
                    chunk = pending.popleft()
                    try:
                        payload = pickle.dumps([jobs[j] for j in chunk], protocol=pickle.HIGHEST_PROTOCOL)
                    except Exception as e:
                        for j in chunk:
                            finish(j, (ERROR, None, f"cannot pickle the job: {type(e).__name__}: {e}"[:500]))
                        continue
                    try:
                        w.conn.send_bytes(payload)
                        w.chunk = chunk
                    except OSError:
                        pending.appendleft(chunk)
                        lost(i, ERROR, "worker pipe broken")
                        w = self._pool[i]
            if not remaining:
                break
            ready = set(mp_wait([w.conn for w in self._pool], self._wake_in()))
            for i, w in enumerate(self._pool):
                if w.conn in ready:
                    try:
                        kind, body = w.conn.recv()
                    except (EOFError, OSError):  # the worker died: its end of the pipe closed
                        lost(i, ERROR, f"verify worker died (exit code {_exit_code(w.proc)})")
                        continue
                    if kind == "ready":
                        w.ready = True
                    elif kind == "init_error":
                        self.close()
                        raise RuntimeError(f"verify worker could not load the scoring function:\n{body}")
                    elif kind == "results":
                        for j, r in zip(w.chunk or [], body, strict=True):
                            finish(j, r)
                        w.chunk = None
                    elif kind == "chunk_error":
                        for j in w.chunk or []:
                            finish(j, (ERROR, None, body))
                        w.chunk = None
            self._enforce_deadlines(lost)
        return results

    def _enforce_deadlines(self, lost: Callable[[int, str, str], None]) -> None:
        """Kill a worker whose current item ran past `timeout_s` (`lost` reschedules the rest of its chunk);
        give up when a worker has not started within START_TIMEOUT_S."""
        now = time.monotonic()
        for i, w in enumerate(self._pool):
            started = w.slot[0]
            if w.chunk is not None and started > 0 and now - started > self.timeout_s:
                w.proc.kill()
                w.proc.wait(5)
                lost(i, TIMEOUT, f"timed out after {self.timeout_s:g} s")
            elif not w.ready and now - w.t_start > START_TIMEOUT_S:
                self.close()
                raise RuntimeError(f"verify worker did not start within {START_TIMEOUT_S:g} s")

    def _wake_in(self) -> float:
        """Seconds until the earliest deadline: a running item's timeout or a worker's start-up limit."""
        now = time.monotonic()
        wake = now + 5.0
        for w in self._pool:
            if w.chunk is not None:
                started = w.slot[0]
                wake = min(wake, (started if started > 0 else now) + self.timeout_s)
            elif not w.ready:
                wake = min(wake, w.t_start + START_TIMEOUT_S)
        return max(0.0, wake - now) + 1e-3


__all__ = ["ERROR", "OK", "TIMEOUT", "Verdicts", "VerifyRunner", "as_score", "run_inline"]
