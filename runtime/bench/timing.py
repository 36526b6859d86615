"""Measuring: percentiles of timed calls, resident memory, and a function run in a fresh process.

No torch here (nor in mtp_edge.runtime.bench's __init__): `run_in_child` starts a spawned
interpreter that imports this module before the measured function, and `mtp-edge eval` takes an
RSS baseline in such a child before it imports anything heavy.

Ratios are measured within one run; these machines are noisy, so compare nothing across runs.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import statistics
import threading
import time
import traceback


def percentiles(seconds: list[float]) -> dict:
    ms = sorted(s * 1e3 for s in seconds)
    p90 = ms[min(len(ms) - 1, max(0, -(-len(ms) * 9 // 10) - 1))]  # nearest-rank 90th percentile
    return {"median_ms": statistics.median(ms), "p90_ms": p90, "min_ms": ms[0], "repeats": len(ms)}


def time_calls(fn, repeats: int, warmup: int) -> dict:
    """Median / p90 / min of `repeats` calls of fn() after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return percentiles(seconds)


def loadavg() -> float:
    """The 1-minute load average: other work on the machine skews every latency."""
    return os.getloadavg()[0]


def peak_rss_bytes() -> int:
    """This process's peak RSS as the kernel counts it (ru_maxrss)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def rss_bytes() -> int:
    """This process's resident memory now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def own_peak_rss_bytes() -> int | None:
    """VmHWM: the high-water mark of this process's own memory since it started (exec), None off Linux.

    Unlike ru_maxrss it does not count the parent: Linux folds the memory image a child was
    forked from into the child's ru_maxrss at exec, so a child of a large parent reports at least
    the parent's high-water mark there.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class RssWatch:
    """Samples this process's RSS in a thread; `mark(label)` closes a stage and records its peak.

    Installed as a tee on stderr, every progress line of write_bundle / export_pte becomes a mark,
    so each export stage gets the peak RSS seen while it ran (sampled, so short spikes may be
    missed: the process's true peak is ru_maxrss).
    """

    def __init__(self, stream, interval: float = 0.1):
        self.stream, self.interval = stream, interval
        self.started = time.perf_counter()
        self.stage_peak = self.peak = 0
        self.stages: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            r = rss_bytes()
            self.stage_peak, self.peak = max(self.stage_peak, r), max(self.peak, r)

    def mark(self, label: str) -> None:
        r = rss_bytes()
        self.stages.append({"stage": label, "t_s": round(time.perf_counter() - self.started, 2),
                            "rss_gib": round(r / 2**30, 3), "stage_peak_rss_gib": round(max(self.stage_peak, r) / 2**30, 3)})
        self.stage_peak = r

    def write(self, s: str) -> int:
        for line in s.splitlines():
            if line.startswith(("[export", "[bundle")):
                self.mark(line.strip())
        return self.stream.write(s)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ...: the real stream's
        return getattr(self.stream, name)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- a function in a fresh process


class ChildError(RuntimeError):
    """The function run by run_in_child raised, was killed, or did not finish in time; `reason` says which
    (the child's exception as one `Type: message` line, or how the process ended)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def _child(conn, fn, args, kwargs) -> None:
    """The child side of run_in_child: fn's result (or its exception, as text) goes back over `conn`."""
    try:
        outcome = ("ok", fn(*args, **kwargs), own_peak_rss_bytes())
    except BaseException as e:  # noqa: BLE001 - the parent raises it, with this traceback
        outcome = ("error", "".join(traceback.format_exception_only(type(e), e)).strip(), traceback.format_exc())
    conn.send(outcome)
    conn.close()


def run_in_child(fn, *args, timeout: float | None = None, **kwargs) -> dict:
    """fn(*args, **kwargs) in a fresh interpreter (multiprocessing "spawn"; fn must be a module-level
    function and its arguments picklable). Its stdout and stderr are this process's.

    Returns {"result": fn's return value, "wall_s": process start to exit (interpreter start and
    imports included), "peak_rss_bytes": the kernel's ru_maxrss of that one child (wait4 on its
    pid), "own_peak_rss_bytes": its VmHWM when fn returned (see own_peak_rss_bytes: ru_maxrss
    also counts the memory of this parent at the time of the spawn)}.
    """
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    name = getattr(fn, "__qualname__", "child")
    proc = ctx.Process(target=_child, args=(send, fn, args, kwargs), name=f"mtp-edge {name}")
    started = time.perf_counter()
    proc.start()
    send.close()  # the child holds the only writer now: its exit reads as EOF here
    outcome = None
    try:
        if receive.poll(timeout):  # the result, or EOF when the child died first
            outcome = receive.recv()
        else:
            os.kill(proc.pid, signal.SIGKILL)
    except EOFError:
        pass
    finally:
        receive.close()
    _, status, usage = os.wait4(proc.pid, 0)  # reaps it: its own ru_maxrss, not the sum over all children
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    proc._popen.returncode = code  # reaped here, so multiprocessing's own wait would find no child to wait for
    proc.close()
    if outcome is None:
        why = f"did not finish within {timeout:.0f}s" if code == -signal.SIGKILL and timeout is not None else f"exited with code {code}"
        raise ChildError(f"{name} {why} in its child process after {wall:.0f}s (see its output above).", why)
    if outcome[0] == "error":
        error = ChildError(f"{name} failed in its child process after {wall:.0f}s: {outcome[1]}", outcome[1])
        error.add_note(f"the child's traceback:\n{outcome[2]}")
        raise error
    return {"result": outcome[1], "wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024, "own_peak_rss_bytes": outcome[2]}
