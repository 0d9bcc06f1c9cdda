"""Run-folder plumbing: atomic folders, manifests, stage input checks."""

from __future__ import annotations

import json
import os
import resource
import sys
import types

import pytest

from arena_distill.io import (
    StageInputError,
    StageTimer,
    atomic_dir,
    describe_inputs,
    file_sha256,
    peak_rss_mb,
    require_stage_output,
    write_manifest,
)


def test_atomic_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "stage"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first"

    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("second")
            raise RuntimeError("killed mid-way")
    assert (out / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]

    with atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("third")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]


def test_manifest_records_config_inputs_versions_timings(tmp_path):
    src = tmp_path / "input.csv"
    src.write_text("id\n1\n")
    timer = StageTimer()
    timer.lap("read")
    m = write_manifest(
        tmp_path, stage="data", config={"x": 1}, inputs=[src], outputs={"rows": 1}, timer=timer
    )
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(m, default=str))
    assert on_disk["stage"] == "data" and on_disk["config"] == {"x": 1}
    assert on_disk["inputs"] == [{"path": str(src), "bytes": 5, "sha256": file_sha256(src)}]
    assert on_disk["versions"]["torch"] and on_disk["versions"]["transformers"] == "5.17.0"
    assert "read" in on_disk["timings"]["phases"]
    assert on_disk["timings"]["peak_rss_mb"] > 0


def test_timer_records_peak_memory(monkeypatch):
    d = StageTimer().to_dict()
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    assert d["peak_rss_mb"] == peak_rss_mb() > 0
    if sys.platform.startswith("linux"):
        assert d["peak_rss_mb"] == pytest.approx(kib / 1024, abs=0.1)
    assert round(d["peak_rss_mb"], 1) == d["peak_rss_mb"]

    def fake_torch(available: bool, initialized: bool = True) -> types.SimpleNamespace:
        cuda = types.SimpleNamespace(
            is_available=lambda: available,
            is_initialized=lambda: initialized,
            max_memory_allocated=lambda: 3 * 2**20 + 2**19,  # 3.5 MiB
        )
        return types.SimpleNamespace(cuda=cuda)

    monkeypatch.setitem(sys.modules, "torch", fake_torch(False))
    assert "peak_cuda_mb" not in StageTimer().to_dict()
    monkeypatch.setitem(sys.modules, "torch", fake_torch(True))
    assert StageTimer().to_dict()["peak_cuda_mb"] == 3.5
    monkeypatch.setitem(sys.modules, "torch", fake_torch(True, initialized=False))
    assert StageTimer().to_dict()["peak_cuda_mb"] == 0.0
    monkeypatch.delitem(sys.modules, "torch")
    assert "peak_cuda_mb" not in StageTimer().to_dict()  # torch never imported: no GPU use


def test_describe_inputs_walks_folders(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b").write_text("b")
    (tmp_path / "d" / "a").write_text("a")
    assert [i["path"] for i in describe_inputs([tmp_path / "d"])] == [
        str(tmp_path / "d" / "a"),
        str(tmp_path / "d" / "b"),
    ]


def test_require_stage_output_names_what_is_missing(tmp_path):
    with pytest.raises(StageInputError, match="no manifest.json.*arena-distill data"):
        require_stage_output(tmp_path, stage="data")
    write_manifest(tmp_path, stage="tokenize", config={})
    with pytest.raises(StageInputError, match="written by stage 'tokenize', expected 'data'"):
        require_stage_output(tmp_path, stage="data")
    write_manifest(tmp_path, stage="data", config={})
    with pytest.raises(StageInputError, match=r"lacks \['train.parquet'\]"):
        require_stage_output(tmp_path, stage="data", files=["train.parquet"])
    (tmp_path / "train.parquet").write_bytes(b"")
    assert require_stage_output(tmp_path, stage="data", files=["train.parquet"]) == tmp_path


def test_require_fresh_refuses_outputs_built_from_changed_inputs(tmp_path):
    from arena_distill.io import require_fresh

    src = tmp_path / "train.parquet"
    src.write_text("v1")
    out = tmp_path / "teacher"
    out.mkdir()
    write_manifest(out, stage="teacher", config={}, inputs=[src])
    other = tmp_path / "unrelated.csv"
    other.write_text("x")
    require_fresh(out, [src, other], stage="teacher")  # unchanged, and unlisted paths are ignored
    src.write_text("v2")
    with pytest.raises(
        StageInputError, match=r"stale: .*train.parquet changed.*arena-distill teacher"
    ):
        require_fresh(out, [src], stage="teacher")
    # overwrite=true takes it as it is, and says what it took (the stage's manifest records it)
    (reason,) = require_fresh(out, [src], stage="teacher", overwrite=True)
    assert "train.parquet changed after it was built" in reason


def test_a_second_writer_of_the_same_output_is_refused_with_the_holder(tmp_path):
    from arena_distill.io import OutputBusyError, output_lock

    out = tmp_path / "runs" / "r" / "teachers"
    with output_lock(out, "arena-distill teacher"):
        with pytest.raises(OutputBusyError) as err:
            with output_lock(out, "arena-distill teacher (again)"):
                pass
        assert f"pid {os.getpid()}" in str(err.value) and "arena-distill teacher" in str(err.value)
        with output_lock(tmp_path / "runs" / "r" / "students", "arena-distill distill"):
            pass  # another output of the same run: free
    with output_lock(out, "arena-distill teacher"):  # released when the holder is done
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    """flock is released by the OS when the holding process dies (SIGKILL included)."""
    import signal
    import subprocess
    import sys
    import time

    from arena_distill.io import output_lock

    out = tmp_path / "merged"
    code = (
        "import time, sys; from arena_distill.io import output_lock\n"
        f"with output_lock({str(out)!r}, 'holder'):\n"
        "    print('locked', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    from arena_distill.io import OutputBusyError

    with pytest.raises(OutputBusyError, match="holder"):
        with output_lock(out, "second"):
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(0.1)
    with output_lock(out, "after the kill"):
        pass


def test_the_stage_command_refuses_to_write_an_output_another_process_writes(tmp_path):
    """Two writers of one stage output: the second ``arena-distill <stage>`` exits at once."""
    import subprocess
    import sys

    from arena_distill.io import output_lock

    out = tmp_path / "demo"
    with output_lock(out, "a long demo_data run"):
        proc = subprocess.run(
            [sys.executable, "-m", "arena_distill", "demo_data", f"stages.demo_data.out_dir={out}"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=300,
        )
    assert proc.returncode == 1
    assert "busy:" in proc.stderr and "a long demo_data run" in proc.stderr
    assert not out.exists()


def test_atomic_dir_removes_what_dead_writers_left_and_nothing_else(tmp_path):
    """``.<name>.tmp-<pid>@<host>`` / ``.old-`` of a dead process of this host go; those of a
    live process, of another host, or of another output stay."""
    import socket
    import subprocess

    from arena_distill.io import remove_stale_siblings

    host = socket.gethostname()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    final = tmp_path / "merged"
    left = {
        f".merged.tmp-{dead}@{host}": False,  # killed while building: removed
        f".merged.old-{dead}@{host}": False,  # killed between the renames: removed
        f".merged.tmp-{os.getpid()}@{host}": True,  # a live writer
        f".merged.tmp-{dead}@another-host": True,  # cannot tell: kept
        f".quantized.tmp-{dead}@{host}": True,  # another output
    }
    for name in left:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"half")
    removed = remove_stale_siblings(final)
    assert sorted(p.name for p in removed) == sorted(k for k, keep in left.items() if not keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(k for k, v in left.items() if v)
    with atomic_dir(final) as tmp:
        assert tmp.name == f".merged.tmp-{os.getpid()}@{host}"
        (tmp / "a").write_text("x")
    assert (final / "a").read_text() == "x"


def test_fault_points_kill_at_the_armed_hit_and_trace_every_hit(tmp_path):
    """``ARENA_DISTILL_FAULT=<point>:<n>``: SIGKILL at the n-th hit; the trace lists hits."""
    import signal
    import subprocess

    from arena_distill import faults

    assert not faults.active()  # the test process: nothing armed, point() is a no-op
    faults.point("train.step")
    with pytest.raises(ValueError, match="<point>:<n>"):
        faults.parse("train.step")
    with pytest.raises(ValueError):
        faults.parse("train.step:0")
    assert faults.parse("io.replace:3") == ("io.replace", 3)
    trace = tmp_path / "trace.txt"
    code = (
        "from arena_distill import faults\n"
        "for i in range(5):\n"
        "    faults.point('a'); faults.point('b'); print(i, flush=True)\n"
    )
    env = {**os.environ, faults.ENV: "b:3", faults.TRACE_ENV: str(trace)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout.split() == ["0", "1"]
    assert trace.read_text().split() == ["a", "b"] * 3


def test_the_kill_harness_draws_every_point_reached_with_a_seed():
    """tests/faults.py: the same seed gives the same kill; points first, then one of their hits;
    ``after`` keeps only what follows a point's first hit."""
    from tests.faults import choose_kill

    hits = ["train.step"] * 8 + ["train.save"] + ["train.step"] * 4 + ["io.replace"]
    draws = [choose_kill(hits, seed) for seed in range(40)]
    assert draws == [choose_kill(hits, seed) for seed in range(40)]
    assert {d.split(":")[0] for d in draws} == {"train.step", "train.save", "io.replace"}
    assert {d for d in draws if d.startswith("train.save")} == {"train.save:1"}
    after = {choose_kill(hits, s, ["train.step"], after="train.save") for s in range(40)}
    assert after == {f"train.step:{n}" for n in range(9, 13)}
    with pytest.raises(AssertionError, match="no hit"):
        choose_kill(hits, 0, ["crossval.combine"])
