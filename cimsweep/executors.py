"""Where points run: a local process pool or Ray tasks, behind one small interface.

An executor takes tasks (``submit(fn, *args)`` returns an id), hands back finished ones
(``next_done()`` blocks for one: its id, whether it finished, and its value or what went
wrong) and shares large read-only values (``share``). Both run every task in a
single-threaded worker process (BLAS threads pinned to 1), so a task computes the same bits
wherever it runs. A worker that dies (killed, out of memory, a crash in native code) has its
task retried once on a fresh worker; a second death is reported as the task's failure.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import signal
from collections import deque
from multiprocessing.connection import wait

from .errors import SweepError

SINGLE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                        "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")}
ATTEMPTS = 2  # a task whose worker dies is run once more


def _worker(conn) -> None:
    """A local worker: run tasks from ``conn`` one at a time until it closes. Ctrl-C is the
    driver's to handle (it closes the pipes)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the driver went away
            return
        tid, fn, args = task
        try:
            reply = (tid, True, fn(*args))
        except Exception as exc:  # a task's own errors are its value; this is a bug
            reply = (tid, False, f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except OSError:  # the driver went away (killed): nobody to tell
            return


class LocalExecutor:
    """``jobs`` worker processes on this machine (spawned: nothing inherited but the
    environment), each running one task at a time."""

    name = "local"

    def __init__(self, jobs: int):
        if jobs < 1:
            raise SweepError(f"--jobs {jobs}: must be at least 1")
        self.jobs = jobs
        self.ctx = mp.get_context("spawn")
        self.queue: deque = deque()     # task ids waiting for a worker, first out first
        self.later: deque = deque()     # ... and those submitted with later=True
        self.tasks: dict[int, tuple] = {}
        self.attempts: dict[int, int] = {}
        self.busy: dict = {}            # worker -> tid
        self.workers: list = []         # (process, conn)
        self.ids = itertools.count()

    def _start(self):
        parent, child = self.ctx.Pipe()
        saved = {k: os.environ.get(k) for k in SINGLE_THREAD}
        os.environ.update(SINGLE_THREAD)
        try:
            proc = self.ctx.Process(target=_worker, args=(child,), daemon=True)
            proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        worker = (proc, parent)
        self.workers.append(worker)
        return worker

    def share(self, value):
        return value

    def submit(self, fn, *args, later: bool = False) -> int:
        """Queue ``fn(*args)``; ``later``: after every task submitted without it (so that
        points run as soon as their program exists, before the other compiles)."""
        tid = next(self.ids)
        self.tasks[tid] = (fn, args)
        self.attempts[tid] = 0
        (self.later if later else self.queue).append(tid)
        return tid

    def _dispatch(self) -> None:
        for worker in [w for w in self.workers if w not in self.busy and not w[0].is_alive()]:
            self._bury(worker)  # an idle worker died (killed): replaced below
        waiting = len(self.queue) + len(self.later)
        while len(self.workers) < self.jobs and len(self.workers) < len(self.busy) + waiting:
            self._start()
        for worker in self.workers:
            if worker not in self.busy and (self.queue or self.later):
                tid = (self.queue or self.later).popleft()
                self.attempts[tid] += 1
                fn, args = self.tasks[tid]
                try:
                    worker[1].send((tid, fn, args))
                except OSError:  # it died just now: next_done sees it and retries the task
                    pass
                self.busy[worker] = tid

    def next_done(self) -> tuple[int, bool, object]:
        """Block until a task finishes: (id, True, value) or (id, False, why it failed)."""
        while True:
            self._dispatch()
            if not self.busy:
                raise SweepError("internal: next_done() with no task submitted")
            waiting = {}
            for worker in self.busy:
                waiting[worker[1]] = worker
                waiting[worker[0].sentinel] = worker
            for ready in wait(list(waiting)):
                worker = waiting[ready]
                if worker not in self.busy:
                    continue
                tid = self.busy[worker]
                if worker[1].poll():  # a reply waiting counts even if the worker died since
                    try:
                        got, ok, value = worker[1].recv()
                    except (EOFError, OSError):
                        got = None
                    if got == tid:
                        del self.busy[worker]
                        return self._finish(tid, ok, value)
                return_code = self._bury(worker)
                if self.attempts[tid] < ATTEMPTS:
                    self.queue.appendleft(tid)
                    break
                return self._finish(tid, False, f"worker process died twice (exit code "
                                                f"{return_code})")

    def _finish(self, tid: int, ok: bool, value) -> tuple[int, bool, object]:
        del self.tasks[tid], self.attempts[tid]
        return tid, ok, value

    def _bury(self, worker):
        """Remove a dead worker; its exit code."""
        proc, conn = worker
        self.busy.pop(worker, None)
        self.workers.remove(worker)
        conn.close()
        proc.join(timeout=5)
        return proc.exitcode

    def close(self) -> None:
        for _, conn in self.workers:
            conn.close()
        for proc, _ in self.workers:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        self.workers.clear()


class RayExecutor:
    """Ray tasks, one CPU each. Without ``address`` Ray starts on this machine with
    ``jobs`` CPUs (all of them when None); with one, it joins that cluster (whose nodes must
    have cimstack installed). Ray retries a task whose worker died once."""

    name = "ray"

    def __init__(self, jobs: int | None = None, address: str | None = None):
        try:
            import ray
        except ImportError:
            raise SweepError("--executor ray needs Ray: pip install 'cimstack[ray]'") from None
        self.ray = ray
        options = dict(include_dashboard=False, log_to_driver=False,
                       runtime_env={"env_vars": SINGLE_THREAD})
        if address is None and jobs is not None:
            options["num_cpus"] = jobs
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SweepError(f"--executor ray: cannot start or reach Ray"
                             f"{' at ' + address if address else ''}: {exc}") from None
        self.remote: dict = {}
        self.refs: dict = {}            # ObjectRef -> tid
        self.ids = itertools.count()

    def share(self, value):
        return self.ray.put(value)

    def submit(self, fn, *args, later: bool = False) -> int:
        """Submit ``fn(*args)`` as a Ray task (``later`` is the local pool's ordering hint:
        Ray schedules by its own rules)."""
        if fn not in self.remote:
            self.remote[fn] = self.ray.remote(num_cpus=1, max_retries=ATTEMPTS - 1)(fn)
        tid = next(self.ids)
        self.refs[self.remote[fn].remote(*args)] = tid
        return tid

    def next_done(self) -> tuple[int, bool, object]:
        ready, _ = self.ray.wait(list(self.refs), num_returns=1)
        tid = self.refs.pop(ready[0])
        try:
            return tid, True, self.ray.get(ready[0])
        except self.ray.exceptions.RayTaskError as exc:  # its first line names only the task
            lines = [line for line in str(exc.cause).splitlines() if line.strip()]
            return tid, False, f"{type(exc.cause).__name__}: {lines[-1] if lines else ''}"
        except self.ray.exceptions.RayError as exc:
            return tid, False, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"

    def close(self) -> None:
        self.ray.shutdown()


def make(kind: str, jobs: int | None, address: str | None):
    """The executor ``--executor KIND`` names."""
    if kind == "local":
        return LocalExecutor(jobs or os.cpu_count() or 1)
    if kind == "ray":
        return RayExecutor(jobs, address)
    raise SweepError(f"--executor {kind!r}: choose local or ray")
