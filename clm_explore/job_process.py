"""A long-lived child process that runs the jobs of one device, so that a job never competes with the
server's own threads for the GIL.

Why a process and not a thread: the app redraws every open session's progress panel once a second in the
server process. A job run in a thread had to win the GIL back after each PyTorch call, and with two browser
sessions watching, the browser test's tiny 'full' job took 81 s instead of 2.3 s (its data preparation 42 s
instead of 0.3 s). In a process of its own the job keeps its speed, and a crash in it (out of memory, a
kernel fault) fails that job, not the server.

The child is spawned, not forked (the server has threads, and maybe CUDA), once per device and reused, so
the imports of torch and transformers are paid once. Protocol over a ``Pipe``: the parent sends
``(fn, kwargs)``; the child answers ``("step", dict)`` any number of times, then ``("done", result)`` or
``("error", traceback text)``. Cancelling sets an ``Event`` shared with the child; the job's own
``should_stop`` reads it. ``fn``, its arguments and its result must pickle: ``fn`` is imported by name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

_SPAWN = multiprocessing.get_context("spawn")
_POLL_SECONDS = 0.1
CANCEL_GRACE_SECONDS = 30.0
"""How long a cancelled job may go on before its child is ended: a job that misses its stop flag (a long step, a
hung kernel) must not block its device's queue until the server restarts."""
_log = logging.getLogger("clm_explore.jobs")  # the queue's logger: one place in the server's log for its jobs


class JobFailed(Exception):
    """The job raised in the child, could not be sent to it, or the child died; ``str()`` is the traceback."""

    def __init__(self, message: str, stopped: bool = False) -> None:
        super().__init__(message)
        self.stopped = stopped
        """The child was stopped by SIGTERM or SIGINT (the server's process group stopped, as `timeout` and systemd
        stop it): the job was interrupted, not failed."""


class WorkerProcess:
    """The child process of one device; ``run`` one job at a time (the device's queue thread calls it).

    Args:
        device: the device name, for messages and the process name.
        torch_threads: CPU threads for torch in the child (None: torch's default).
        preload: modules the child imports as soon as it starts, before the first job arrives.
    """

    def __init__(self, device: str, torch_threads: int | None = None, preload: tuple[str, ...] = ()) -> None:
        self.device = device
        self.torch_threads = torch_threads
        self.preload = preload
        self._process: Any = None
        self._conn: Connection | None = None
        self._stop: Any = None

    def start(self) -> None:
        """Spawn the child unless it is alive already (after a crash, the next job spawns a new one)."""
        if self._process is not None and self._process.is_alive():
            return
        parent_end, child_end = _SPAWN.Pipe()
        self._stop = _SPAWN.Event()
        self._process = _SPAWN.Process(
            target=_serve,
            args=(child_end, self._stop, self.torch_threads, self.preload),
            name=f"clm-jobs-{self.device}",
            daemon=True,  # ends with the server on a clean exit; after a kill, _watch_parent ends it
        )
        self._process.start()
        child_end.close()
        self._conn = parent_end
        # Its pid in the log: an admin who finds a worker killed (out of memory, kill -9) can tell which it was.
        _log.info("worker process for %s started (pid %s)", self.device, self._process.pid)

    def run(self, fn: Callable[..., Any], kwargs: dict[str, Any], on_step: Callable[[Any], None],
            cancel: threading.Event) -> Any:  # fmt: skip
        """``fn(**kwargs, on_step=..., should_stop=...)`` in the child; its result, or ``JobFailed``."""
        self.start()
        assert self._conn is not None
        self._stop.clear()
        try:
            self._conn.send((fn, kwargs))  # pickles first, so a failure here sends nothing
        except Exception as exc:  # noqa: BLE001 - unpicklable arguments or a dead pipe: the job fails
            message = f"the job could not be handed to its worker process:\n{traceback.format_exc()}"
            raise JobFailed(message) from exc
        cancelled_at = None
        while True:
            if cancel.is_set():
                self._stop.set()
                cancelled_at = cancelled_at or time.monotonic()
                if time.monotonic() - cancelled_at > CANCEL_GRACE_SECONDS:
                    _log.warning("a cancelled job on %s did not stop within %s s: its worker process (pid %s) is "
                                 "ended", self.device, CANCEL_GRACE_SECONDS, self._process.pid)
                    self._end_child()  # it did not stop in time; the next job starts a new one
                    return None  # no result: the job ends cancelled, by its cancel flag
            if self._conn.poll(_POLL_SECONDS):
                try:
                    kind, payload = self._conn.recv()
                except EOFError:
                    raise self._died() from None
                if kind == "step":
                    on_step(payload)
                elif kind == "done":
                    return payload
                else:
                    raise JobFailed(payload)
            elif not self._process.is_alive():
                raise self._died()

    def _died(self) -> JobFailed:
        self._process.join(1)
        code = self._process.exitcode
        self._release()
        why = ""
        if code is not None and code < 0:  # killed by a signal; SIGKILL is most often the kernel out of memory
            try:
                name = signal.Signals(-code).name
            except ValueError:  # a real-time signal has no name
                name = f"signal {-code}"
            why = f", {name}" + (": out of memory?" if -code == signal.SIGKILL else "")
        stopped = code is not None and -code in (signal.SIGTERM, signal.SIGINT)
        return JobFailed(f"the worker process for {self.device} died (exit code {code}{why}); the next job starts a new "
                         "one", stopped=stopped)

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the child: its current job is told to stop (``should_stop``), then it exits; terminated when it
        has not within ``timeout``."""
        if self._process is None:
            return
        if self._stop is not None:
            self._stop.set()
        with contextlib.suppress(OSError):
            assert self._conn is not None
            self._conn.send(None)
        self._process.join(timeout)
        self._end_child(timeout)

    def _end_child(self, timeout: float | None = 5.0) -> None:
        """Terminate the child (kill it if it ignores that) and forget it."""
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout)
        self._release()

    def _release(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn = None, None


def _serve(conn: Connection, stop: Any, torch_threads: int | None, preload: tuple[str, ...]) -> None:
    """The child's loop: run each ``(fn, kwargs)`` received and report back, until ``None`` or EOF."""
    # Ctrl-C in the server's terminal stops the server, which ends this process (daemon).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), name="clm-jobs-parent", daemon=True).start()
    if torch_threads:
        import torch

        torch.set_num_threads(max(1, int(torch_threads)))
    for name in preload:
        importlib.import_module(name)
    send = _sender(conn)
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the server is gone
            return
        except Exception:  # noqa: BLE001 - a job that does not unpickle here (e.g. its module fails to import)
            conn.send(
                ("error", f"the job could not be read in its worker process:\n{traceback.format_exc()}")
            )
            continue
        if message is None:
            return
        try:
            fn, kwargs = message
            phase = {"on_phase": lambda *report: send(("step", {"phase": report}))} if takes_phases(fn) else {}
            result = fn(**kwargs, on_step=lambda info: send(("step", _as_dict(info))),
                        should_stop=stop.is_set, **phase)  # fmt: skip
            reply = ("done", result)
        except BaseException:  # noqa: BLE001 - report any failure of the job, then take the next one
            reply = ("error", traceback.format_exc())
        try:
            conn.send(reply)
        except OSError:  # the server is gone
            return
        except Exception:  # noqa: BLE001 - a result that does not pickle
            conn.send(("error", traceback.format_exc()))


def _sender(conn: Connection) -> Callable[[Any], None]:
    """``conn.send`` for a job's progress reports, ending this process at once when the server is gone: the job's
    report raised a broken pipe inside ``finetune``, which recorded its run "failed: [Errno 32] Broken pipe" before
    ``_watch_parent`` noticed, so a server killed mid-training left runs that read as their own fault, not the
    server's (the crash review), and the restarted server's "launch them again" note left them out."""

    def send(message: Any) -> None:
        try:
            conn.send(message)
        except (OSError, EOFError):  # the other end is the server's: nobody is left to hear the job or its result
            os._exit(1)

    return send


def _watch_parent(parent: int, every: float = 1.0) -> None:
    """End this process as soon as the server that spawned it is gone. A server killed outright (SIGKILL, out of
    memory) runs no exit handlers, so the daemon flag does not end us: we would be re-parented and go on loading,
    scoring and training into a run the restarted server has already marked interrupted, holding its memory."""
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


def takes_phases(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` reports its preparation's phases (an ``on_phase`` argument, as ``finetune`` has)."""
    try:
        return "on_phase" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or a callable without a signature
        return False


def _as_dict(info: Any) -> dict[str, Any]:
    return dataclasses.asdict(info) if dataclasses.is_dataclass(info) else dict(info)
