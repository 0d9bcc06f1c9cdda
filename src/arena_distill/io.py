"""Run-folder plumbing shared by every stage: atomic outputs, manifests, input checks.

Every stage writes its outputs into one folder under the run directory. It builds them in a
temporary sibling folder and renames it into place at the end, so a killed stage never leaves a
half-written output that a later stage could mistake for a finished one. Beside its outputs it
writes ``manifest.json``: the resolved config, its inputs (paths, sizes, sha256), package
versions and timings (wall time per phase, and the process's peak memory so far).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from arena_distill import faults

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# Packages whose versions go into every manifest.
TRACKED_PACKAGES = (
    "arena-distill",
    "torch",
    "transformers",
    "tokenizers",
    "peft",
    "accelerate",
    "datasets",
    "scikit-learn",
    "pandas",
    "numpy",
    "hydra-core",
    "bitsandbytes",
    "gptqmodel",
    "optimum",
)


class StageInputError(RuntimeError):
    """A stage's input is missing or was not produced by a finished earlier stage."""


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def describe_inputs(paths: Sequence[str | Path]) -> list[dict]:
    """Path, size and sha256 of each input file (folders: every file inside, sorted)."""
    out = []
    for p in map(Path, paths):
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            out.append({"path": str(f), "bytes": f.stat().st_size, "sha256": file_sha256(f)})
    return out


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def write_json(path: str | Path, obj: object) -> None:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)


def write_parquet(table, path: str | Path) -> Path:
    """Write a pyarrow Table or a DataFrame as parquet atomically (temp file, then rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _sibling_suffix() -> str:
    """``<pid>@<host>``: who owns a temporary sibling of an output folder."""
    return f"{os.getpid()}@{socket.gethostname()}"


def remove_stale_siblings(final: Path) -> list[Path]:
    """Remove what a killed ``atomic_dir`` left beside ``final``: ``.<name>.tmp-<pid>@<host>``
    (an output never finished) and ``.<name>.old-<pid>@<host>`` (a previous output being
    replaced) of a process of this host that is no longer running. A folder of a live process,
    or of another host, is left alone. Returns the removed folders."""
    host = socket.gethostname()
    removed = []
    for kind in ("tmp", "old"):
        for path in final.parent.glob(f".{final.name}.{kind}-*"):
            owner = path.name[len(f".{final.name}.{kind}-") :]
            pid, _, owner_host = owner.partition("@")
            if not pid.isdigit() or owner_host != host or _pid_alive(int(pid)):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``final`` only if the block finishes.

    On an exception the temporary folder is removed and ``final`` is left as it was. What a
    killed process left beside ``final`` (its temporary folder, a previous output it was
    replacing) is removed first (``remove_stale_siblings``). A process killed between the two
    renames of the swap leaves no ``final`` at all: never a half-written one.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for path in remove_stale_siblings(final):
        log.warning("removed %s, left by a process that did not finish", path)
    tmp = final.with_name(f".{final.name}.tmp-{_sibling_suffix()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old-{_sibling_suffix()}")
    if final.exists():
        os.replace(final, old)
        faults.point("io.replace")  # the old output moved aside, the new one not in place yet
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (0.1 resolution).

    ``ru_maxrss`` is in KiB on Linux and in bytes on macOS. Child processes (multi-device
    prediction workers) are not included."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


def peak_cuda_mb() -> float | None:
    """Peak CUDA memory allocated by torch in this process (current device), in MiB; None
    without CUDA. Never imports torch itself: a process that has not imported it has
    allocated nothing on a GPU (and io.py stays cheap to import)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    if not torch.cuda.is_initialized():  # nothing allocated; do not create a context to say so
        return 0.0
    return round(torch.cuda.max_memory_allocated() / (1 << 20), 1)


class StageTimer:
    """Wall-clock timings of a stage's phases and peak memory, for the manifest."""

    def __init__(self) -> None:
        self.started = datetime.now(timezone.utc)
        self._t0 = time.perf_counter()
        self._last = self._t0
        self.phases: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = round(now - self._last, 3)
        self._last = now

    def to_dict(self) -> dict:
        """``started``, ``seconds`` (since the timer started), ``phases`` (seconds per lap),
        ``peak_rss_mb`` (the process's peak resident memory so far) and, with CUDA,
        ``peak_cuda_mb``."""
        out: dict = {
            "started": self.started.isoformat(),
            "seconds": round(time.perf_counter() - self._t0, 3),
            "phases": self.phases,
            "peak_rss_mb": peak_rss_mb(),
        }
        cuda = peak_cuda_mb()
        if cuda is not None:
            out["peak_cuda_mb"] = cuda
        return out


def write_manifest(
    out_dir: str | Path,
    *,
    stage: str,
    config: Mapping,
    inputs: Sequence[str | Path] = (),
    outputs: Mapping[str, object] | None = None,
    timer: StageTimer | None = None,
    extra: Mapping[str, object] | None = None,
) -> dict:
    """Write ``manifest.json`` into ``out_dir`` and return it."""
    manifest = {
        "stage": stage,
        "finished": datetime.now(timezone.utc).isoformat(),
        "host": socket.gethostname(),
        "argv": sys.argv,
        "git_commit": git_commit(),
        "versions": package_versions(),
        "inputs": describe_inputs(inputs),
        "outputs": dict(outputs or {}),
        "timings": timer.to_dict() if timer else None,
        "config": dict(config),
    }
    if extra:
        manifest.update(extra)
    write_json(Path(out_dir) / MANIFEST, manifest)
    return manifest


def require_stage_output(folder: str | Path, *, stage: str, files: Sequence[str] = ()) -> Path:
    """Check that ``folder`` holds a finished ``stage`` output (its manifest and ``files``).

    Raises StageInputError naming what is missing and the command that produces it.
    """
    folder = Path(folder)
    hint = f"run `arena-distill {stage}` (or `make {stage.replace('_', '-')}`) with the same overrides first"
    if not (folder / MANIFEST).is_file():
        raise StageInputError(
            f"{folder} is not a finished '{stage}' output (no {MANIFEST}); {hint}"
        )
    manifest = read_json(folder / MANIFEST)
    if manifest.get("stage") != stage:
        raise StageInputError(
            f"{folder}/{MANIFEST} was written by stage {manifest.get('stage')!r}, expected {stage!r}"
        )
    missing = [f for f in files if not (folder / f).exists()]
    if missing:
        raise StageInputError(f"{folder} lacks {missing}; {hint}")
    return folder


def require_fresh(
    folder: str | Path, inputs: Sequence[str | Path], *, stage: str, overwrite: bool = False
) -> list[str]:
    """Refuse a stage output built from inputs that have changed since.

    ``folder/manifest.json`` lists the inputs it was built from with their sha256; every path
    of ``inputs`` it lists must still have that hash (a rerun data stage with other folds, say,
    makes every teacher trained on the old folds stale). With ``overwrite`` (the root key
    ``overwrite=true``, as :func:`arena_distill.fingerprint.check_input` takes it) the changes
    are logged and returned instead, for the caller's manifest (``stale_inputs_accepted``).
    """
    manifest = read_json(Path(folder) / MANIFEST)
    recorded = {Path(i["path"]).resolve(): i["sha256"] for i in manifest.get("inputs", [])}
    reasons = []
    for path in map(Path, inputs):
        sha = recorded.get(path.resolve())
        if sha is not None and (not path.exists() or file_sha256(path) != sha):
            reasons.append(f"{folder} is stale: {path} changed after it was built")
    if not reasons:
        return []
    if not overwrite:
        raise StageInputError(
            f"{'; '.join(reasons)}; rerun `arena-distill {stage}` (with overwrite=true where "
            "the stage keeps finished parts)"
        )
    log.warning("overwrite=true: using a stale input: %s", "; ".join(reasons))
    return reasons


def remove_dir(path: str | Path) -> None:
    """Remove a folder and everything in it, if it exists."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)


class OutputBusyError(RuntimeError):
    """Another process is writing the same stage output (or running the same pipeline)."""


@contextlib.contextmanager
def output_lock(folder: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (a stage's output folder, or a run folder) while the
    block runs; a second writer fails at once, naming the holder (pid, host, since when).

    The lock is ``<parent>/.<name>.lock`` (``fcntl.flock``: released by the OS when the holder
    dies, so a killed run never leaves a stale lock behind). Under a launcher only the main
    process (``RANK`` 0) locks: the other ranks of the same run are not second writers."""
    if int(os.environ.get("RANK", "0")) != 0 or sys.platform == "win32":
        yield
        return
    import fcntl

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = folder.with_name(f".{folder.name}.lock")
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise OutputBusyError(
                f"{folder} is being written by another process ({holder}); {what} refuses to "
                "write it at the same time: wait for that process or stop it"
            ) from None
        handle.seek(0)
        handle.truncate()
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}: {what}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
