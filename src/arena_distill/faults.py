"""Fault injection for the kill tests: named points where a test can SIGKILL the process.

The code calls :func:`point` at moments where a real run can die (a training step's end, inside
a checkpoint save, between inference batches, after part of an output folder is written, between
the two renames that put a finished folder in place). Unless the test hooks are set it returns at
once (one global lookup), so production runs pay nothing.

- ``ARENA_DISTILL_FAULT="<point>:<n>"``: the n-th time (from 1) this process reaches ``<point>``,
  it kills itself with ``SIGKILL`` (no ``finally`` block, no atexit handler, no flush: what a
  preemption or the out-of-memory killer does).
- ``ARENA_DISTILL_FAULT_TRACE=<file>``: every point reached is appended to ``<file>``, one name a
  line, in order. A harness runs a stage once with the trace, then draws a kill moment from the
  trace with a seed (``tests/faults.py``): deterministic, and no wall-clock timers.

Both are read when this module is imported; :func:`configure` sets them in a process that imported
it already (a forked test child). Under a launcher every process reads the same variables.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

ENV = "ARENA_DISTILL_FAULT"
TRACE_ENV = "ARENA_DISTILL_FAULT_TRACE"

_kill: tuple[str, int] | None = None
_trace: Path | None = None
_hits: dict[str, int] = {}


def parse(spec: str) -> tuple[str, int]:
    """``"<point>:<n>"`` -> ``(point, n)``; n >= 1."""
    name, sep, count = spec.rpartition(":")
    if not sep or not name or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{ENV}={spec!r}: expected '<point>:<n>' with n >= 1, e.g. 'train.step:3'")
    return name, int(count)


def configure(kill: str | None = None, trace: str | os.PathLike | None = None) -> None:
    """Arm the kill (``"<point>:<n>"``) and / or the trace file; ``None`` disarms. Hit counts
    start again from zero."""
    global _kill, _trace
    _kill = parse(kill) if kill else None
    _trace = Path(trace) if trace else None
    _hits.clear()


def configure_from_env() -> None:
    configure(os.environ.get(ENV) or None, os.environ.get(TRACE_ENV) or None)


def active() -> bool:
    """Whether a kill or a trace is armed (callers may skip setting up hooks otherwise)."""
    return _kill is not None or _trace is not None


def point(name: str) -> None:
    """A moment where the process may die: traced, and killed at the armed hit."""
    if _kill is None and _trace is None:
        return
    hits = _hits[name] = _hits.get(name, 0) + 1
    if _trace is not None:
        with open(_trace, "a") as f:
            f.write(f"{name}\n")
    if _kill is not None and _kill == (name, hits):
        os.kill(os.getpid(), signal.SIGKILL)


configure_from_env()
