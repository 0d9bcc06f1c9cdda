"""Fault-injection harness: run ``arena-distill <stage>`` in a child process, SIGKILL it at a
seeded point, run it again, compare with an uninterrupted run.

The kill comes from inside the child (``arena_distill.faults``): ``ARENA_DISTILL_FAULT=
"<point>:<n>"`` makes it ``SIGKILL`` itself the n-th time it reaches ``<point>``. The moment is
drawn with a seed from the trace of an uninterrupted run (``ARENA_DISTILL_FAULT_TRACE``: every
point reached, in order), so a kill test is deterministic and needs no wall-clock timer.

Children start in one of two ways:

- ``fork`` (default): forked from a ``multiprocessing`` fork server that imported the package
  once and never ran torch (no thread pools to inherit), then ``arena_distill.__main__.main``
  with the command line, exactly as the console script does. Saves the ~8 s import per attempt.
- ``exec``: ``python -m arena_distill ...``, a brand-new interpreter.

Either way the child's stdout and stderr go to a log file per attempt, and a kill is seen as
return code ``-SIGKILL``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from arena_distill.faults import ENV, TRACE_ENV
from arena_distill.stages import STAGES

REPO = Path(__file__).resolve().parents[1]
KILLED = -signal.SIGKILL
# what the fork server imports once (every stage, the pipeline, the command line)
PRELOAD = ["tests.faults", "arena_distill.__main__", "arena_distill.pipeline", *STAGES.values()]


@dataclass
class Attempt:
    argv: list[str]
    kill: str | None
    returncode: int
    log: Path
    seconds: float = 0.0

    @property
    def killed(self) -> bool:
        return self.returncode == KILLED

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def _child(argv: list[str], env: dict[str, str], log: str) -> None:  # runs in the child
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)
    from arena_distill import faults
    from arena_distill.__main__ import main

    faults.configure_from_env()
    try:
        code = main(list(argv))
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:  # noqa: BLE001 - report anything, as the interpreter would
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


_context = None


def fork_context():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def children_cpu_seconds() -> float | None:
    """CPU seconds of every child the fork server has reaped so far (Linux; None elsewhere or
    before it started): the work of the attempts, whatever the machine's load."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    stat = Path(f"/proc/{pid}/stat")
    if pid is None or not stat.exists():
        return None
    fields = stat.read_text().rsplit(")", 1)[1].split()
    cutime, cstime = int(fields[13]), int(fields[14])  # fields 16, 17 of proc(5)
    return (cutime + cstime) / os.sysconf("SC_CLK_TCK")


@dataclass
class Runner:
    """Runs ``arena-distill`` command lines as child processes; logs and traces in ``work``."""

    work: Path
    mode: str = "fork"
    timeout: float = 600.0

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self._n = 0
        self.attempts: list[Attempt] = []

    def run(
        self, argv: Sequence[str], *, kill: str | None = None, trace: Path | None = None
    ) -> Attempt:
        self._n += 1
        log = self.work / f"attempt-{self._n:02d}.log"
        env = {ENV: kill or "", TRACE_ENV: str(trace) if trace else "", "OMP_NUM_THREADS": "1"}
        argv = [str(a) for a in argv]
        t0 = time.perf_counter()
        attempt = self._start(argv, env, log)
        attempt.kill, attempt.seconds = kill, round(time.perf_counter() - t0, 2)
        self.attempts.append(attempt)
        return attempt

    def _start(self, argv: list[str], env: dict[str, str], log: Path) -> Attempt:
        if self.mode == "exec":
            with open(log, "w") as out:
                proc = subprocess.run(
                    [sys.executable, "-m", "arena_distill", *argv],
                    env={**os.environ, **env},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=REPO,
                    timeout=self.timeout,
                )
            return Attempt(argv, None, proc.returncode, log)
        proc = fork_context().Process(target=_child, args=(argv, env, str(log)))
        proc.start()
        proc.join(self.timeout)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
            raise TimeoutError(f"{argv} ran past {self.timeout}s; log {log}")
        return Attempt(argv, None, proc.exitcode, log)

    def ok(self, argv: Sequence[str], *, trace: Path | None = None) -> Attempt:
        """Run to the end (optionally traced); fail the test with the log's tail otherwise."""
        attempt = self.run(argv, trace=trace)
        assert attempt.returncode == 0, f"{attempt.argv} failed:\n{attempt.tail()}"
        return attempt

    def traced(self, argv: Sequence[str]) -> list[str]:
        """Run uninterrupted with a trace; the points reached, in order."""
        trace = self.work / f"trace-{self._n + 1:02d}.txt"  # named after the attempt
        trace.unlink(missing_ok=True)
        self.ok(argv, trace=trace)
        return trace.read_text().split() if trace.exists() else []

    def killed(self, argv: Sequence[str], kill: str) -> Attempt:
        """Run with ``kill`` armed; fail the test unless the process died of SIGKILL."""
        attempt = self.run(argv, kill=kill)
        assert attempt.killed, (
            f"{attempt.argv} with {ENV}={kill} ended with {attempt.returncode}, not SIGKILL:\n"
            f"{attempt.tail()}"
        )
        return attempt


def choose_kill(
    hits: Sequence[str],
    seed: int,
    points: Iterable[str] | None = None,
    *,
    after: str | None = None,
) -> str:
    """``"<point>:<n>"``: one hit of the trace ``hits`` drawn with ``seed``, among the hits of
    ``points`` (every point when None), only those after the first hit of ``after`` if given.

    The point is drawn first (each point reached equally likely), then one of its hits: a point
    reached once (a folder half written) is drawn as often as one reached at every batch."""
    wanted = None if points is None else set(points)
    counts: Counter[str] = Counter()
    candidates: dict[str, list[str]] = {}
    armed = after is None
    for name in hits:
        counts[name] += 1
        if armed and (wanted is None or name in wanted):
            candidates.setdefault(name, []).append(f"{name}:{counts[name]}")
        armed = armed or name == after
    if not candidates:
        raise AssertionError(f"no hit of {sorted(wanted or [])} after {after!r} in the trace")
    rng = random.Random(seed)
    return rng.choice(candidates[rng.choice(sorted(candidates))])


# ---------------------------------------------------------------------------------------------
# Comparing outputs
# ---------------------------------------------------------------------------------------------

# keys whose values are measurements of this run (time, speed, memory, where and when it ran)
VOLATILE = ("seconds", "runtime", "per_second", "per_s", "started", "finished", "timings")
VOLATILE_KEYS = {"argv", "host", "git_commit", "throughput", "peak_rss_mb", "peak_cuda_mb"}


def volatile(key: str) -> bool:
    return key in VOLATILE_KEYS or any(v in key for v in VOLATILE)


def strip_volatile(obj):
    if isinstance(obj, dict):
        return {k: strip_volatile(v) for k, v in obj.items() if not volatile(str(k))}
    if isinstance(obj, list):
        return [strip_volatile(v) for v in obj]
    return obj


def files_of(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def assert_same_output(got: Path, expected: Path) -> None:
    """``got`` holds what ``expected`` holds: the same files, byte for byte, except JSON files
    (compared without the measurements of ``VOLATILE``) and parquet tables (equal frames)."""
    assert files_of(got) == files_of(expected), (files_of(got), files_of(expected))
    for name in files_of(expected):
        a, b = got / name, expected / name
        if name.endswith(".json"):
            assert strip_volatile(json.loads(a.read_text())) == strip_volatile(
                json.loads(b.read_text())
            ), name
        elif name.endswith(".parquet"):
            pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b), check_exact=True)
        else:
            assert a.read_bytes() == b.read_bytes(), name


def assert_close_json(got, expected, atol: float, path: str = "") -> None:
    """Equal JSON trees, floats within ``atol`` (training outputs after a resume)."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), (path, got, expected)
        for k in expected:
            assert_close_json(got[k], expected[k], atol, f"{path}.{k}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), (path, got, expected)
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            assert_close_json(g, e, atol, f"{path}[{i}]")
    elif isinstance(expected, float) and isinstance(got, (int, float)):
        assert math.isclose(got, expected, abs_tol=atol) or (
            math.isnan(got) and math.isnan(expected)
        ), (path, got, expected)
    else:
        assert got == expected, (path, got, expected)


def assert_same_tensors(got: Path, expected: Path, atol: float) -> None:
    """Two safetensors files with the same tensors (names, shapes, dtypes), values within atol."""
    from safetensors.torch import load_file

    a, b = load_file(str(got)), load_file(str(expected))
    assert a.keys() == b.keys()
    for k in b:
        assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, k
        np.testing.assert_allclose(a[k].float().numpy(), b[k].float().numpy(), atol=atol, err_msg=k)


def snapshot(folder: Path, to: Path) -> Path:
    """Copy of a finished output (the uninterrupted run's), for comparing after a rerun."""
    shutil.rmtree(to, ignore_errors=True)
    shutil.copytree(folder, to)
    return to


def leftovers(folder: Path) -> list[str]:
    """Temporary siblings of an output folder (``.<name>.tmp-*``, ``.<name>.old-*``)."""
    return sorted(
        p.name for kind in ("tmp", "old") for p in folder.parent.glob(f".{folder.name}.{kind}-*")
    )
