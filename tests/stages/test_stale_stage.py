"""Stale inputs refused with what changed, on copies of the shared trained run (tiny Llama
teacher, 3 folds): a data file, the fold seed, a prompt setting, a model setting and a
retrained upstream; ``overwrite=true`` recomputes; unchanged inputs pass. Every test name
contains ``stale`` (``pytest -k stale``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from arena_distill import fingerprint
from arena_distill.config import compose
from arena_distill.data.tableio import load_table, save_table
from arena_distill.io import StageInputError, file_sha256, read_json
from arena_distill.stages import data as data_stage
from arena_distill.stages import (
    distill,
    dump_logits,
    merge,
    predict,
    pretrain,
    quantize,
    teacher,
)
from tests.stages.conftest import small_overrides


@pytest.fixture(scope="module")
def stale_base(trained_run, tmp_path_factory) -> Path:
    """The trained run's folder, copied (its demo files stay where they are)."""
    root = tmp_path_factory.mktemp("stale")
    shutil.copytree(trained_run.root / "runs", root / "runs")
    return root


def copy_of(stale_base: Path, trained_run, tmp_path: Path) -> Path:
    shutil.copytree(stale_base / "runs", tmp_path / "runs")
    return tmp_path


def cfg_of(root: Path, trained_run, *extra: str):
    demo = f"stages.demo_data.out_dir={trained_run.root}/demo"
    base = [o for o in small_overrides(root) if not o.startswith("stages.demo_data.out_dir=")]
    return compose([*base, demo, *extra])


def run_dir(root: Path) -> Path:
    return root / "runs" / "demo"


def test_stale_unchanged_inputs_pass_and_every_manifest_has_a_fingerprint(
    stale_base, trained_run, tmp_path
):
    root = copy_of(stale_base, trained_run, tmp_path)
    out = dump_logits.run(cfg_of(root, trained_run))
    manifest = read_json(out / "manifest.json")
    fp = manifest["fingerprint"]
    assert manifest["id"] == fingerprint.manifest_id(fp)
    teachers = run_dir(root) / "teachers" / "tiny_llama"
    assert fp["upstream"] == {"teachers/tiny_llama": read_json(teachers / "manifest.json")["id"]}
    assert fp["files"]["data/folds.csv"] == file_sha256(run_dir(root) / "data" / "folds.csv")
    assert fp["settings"]["prompt.max_length"] == 128 and "stale_inputs_accepted" not in manifest
    teacher_fp = read_json(teachers / "fold_0" / "manifest.json")["fingerprint"]
    assert teacher_fp["settings"]["data.folds.seed"] == 2025
    assert set(teacher_fp["upstream"]) == {"pretrain/tiny_llama", "models"}
    for folder in ("data", "models", "pretrain/tiny_llama", "teachers/tiny_llama"):
        assert read_json(run_dir(root) / folder / "manifest.json")["id"], folder


def test_stale_data_file_is_refused_and_overwrite_recomputes(stale_base, trained_run, tmp_path):
    root = copy_of(stale_base, trained_run, tmp_path)
    path = run_dir(root) / "data" / "train.parquet"
    before = file_sha256(path)
    table = load_table(path)
    table.loc[0, "response_a"] = ["an answer edited after the teacher ran"]
    save_table(table, path)
    after = file_sha256(path)
    with pytest.raises(StageInputError) as err:
        dump_logits.run(cfg_of(root, trained_run))
    change = (
        f"data/train.parquet changed since teachers/tiny_llama was trained (sha {before[:8]}.. "
        f"-> {after[:8]}..)"
    )
    assert str(err.value).startswith(change)
    assert "rerun `arena-distill teacher model=tiny_llama` (or overwrite=true" in str(err.value)
    assert not (run_dir(root) / "logits").exists()
    out = dump_logits.run(cfg_of(root, trained_run, "overwrite=true"))
    assert read_json(out / "manifest.json")["stale_inputs_accepted"] == [change]


def test_stale_fold_seed_is_refused_by_data_and_by_what_was_trained_on_the_old_folds(
    stale_base, trained_run, tmp_path
):
    root = copy_of(stale_base, trained_run, tmp_path)
    folds = run_dir(root) / "data" / "folds.csv"
    old = file_sha256(folds)
    with pytest.raises(
        StageInputError, match=r"folds.csv was built with data.folds.seed=2025, now 7"
    ):
        data_stage.run(cfg_of(root, trained_run, "data.folds.seed=7"))
    assert file_sha256(folds) == old
    data_stage.run(cfg_of(root, trained_run, "data.folds.seed=7", "data.folds.overwrite=true"))
    assert file_sha256(folds) != old
    with pytest.raises(StageInputError) as err:
        dump_logits.run(cfg_of(root, trained_run, "data.folds.seed=7"))
    assert "teachers/tiny_llama was trained with data.folds.seed=2025, now 7" in str(err.value)
    assert "data/folds.csv changed since teachers/tiny_llama was trained" in str(err.value)
    # the old seed against the new folds: the data stage's own output is refused first
    with pytest.raises(StageInputError, match=r"^data was built with data.folds.seed=7, now 2025"):
        dump_logits.run(cfg_of(root, trained_run))


def test_stale_prompt_setting_is_refused(stale_base, trained_run):
    with pytest.raises(
        StageInputError,
        match=r"^teachers/tiny_llama was trained with prompt.max_length=128, now 96: rerun "
        r"`arena-distill teacher model=tiny_llama`",
    ):
        dump_logits.run(cfg_of(stale_base, trained_run, "prompt.max_length=96"))


def test_stale_model_setting_is_refused_by_dump_and_merge(stale_base, trained_run, tmp_path):
    change = "teachers/tiny_llama was trained with model.lora.r=8, now 4"
    with pytest.raises(StageInputError, match=change):
        dump_logits.run(cfg_of(stale_base, trained_run, "model.lora.r=4"))
    source = f"stages.merge.source={run_dir(stale_base)}/teachers/tiny_llama"
    with pytest.raises(StageInputError, match=change):
        merge.run(
            cfg_of(
                stale_base,
                trained_run,
                "model.lora.r=4",
                source,
                f"stages.merge.out_dir={tmp_path}",
            )
        )


def test_stale_retrained_upstream_is_refused(stale_base, trained_run, tmp_path):
    """A quantized model whose merged source was rebuilt since, and teacher folds whose
    pretrain adapter was retrained since, are refused."""
    root = copy_of(stale_base, trained_run, tmp_path)
    # merge -> quantize (fp16 copy), then the merge redone with another method
    source = f"stages.merge.source={run_dir(root)}/teachers/tiny_llama"
    merge.run(cfg_of(root, trained_run, source))
    quantize.run(cfg_of(root, trained_run, "stages.quantize.method=none"))
    merged_before = read_json(run_dir(root) / "merged" / "manifest.json")["id"]
    merge.run(cfg_of(root, trained_run, source, "stages.merge.method=delta_mean"))
    with pytest.raises(
        StageInputError,
        match=rf"^merged changed since quantized was built \(manifest {merged_before[:8]}",
    ):
        predict.run(cfg_of(root, trained_run, "stages.predict.split=holdout"))
    # the pretrain adapter retrained with another rate: the teacher folds built on it
    pre = run_dir(root) / "pretrain" / "tiny_llama"
    before = read_json(pre / "manifest.json")["id"]
    pretrain.run(cfg_of(root, trained_run, "stages.pretrain.lr=1e-3"))
    now = read_json(pre / "manifest.json")["id"]
    assert now != before
    with pytest.raises(
        StageInputError,
        match=rf"pretrain/tiny_llama changed since teachers/tiny_llama was trained \(manifest "
        rf"{before[:8]}\.\. -> {now[:8]}\.\.\)",
    ):
        dump_logits.run(cfg_of(root, trained_run))


def test_stale_own_folds_are_retrained_and_a_retrained_teacher_refused_by_distill(
    stale_base, trained_run, tmp_path
):
    """A fold trained with other settings is retrained, not skipped; until every fold fits
    the current settings the folder has no combined manifest, so a reader refuses it; once
    the teacher is retrained, its old dump is refused by the student."""
    root = copy_of(stale_base, trained_run, tmp_path)
    dump_logits.run(cfg_of(root, trained_run))  # from the teacher as it was
    teachers = run_dir(root) / "teachers" / "tiny_llama"
    before = read_json(teachers / "manifest.json")["id"]
    fold_1 = read_json(teachers / "fold_1" / "manifest.json")
    teacher.run(cfg_of(root, trained_run))  # unchanged: every fold skipped
    assert read_json(teachers / "fold_1" / "manifest.json") == fold_1
    epochs = "stages.teacher.epochs=1"
    teacher.run(cfg_of(root, trained_run, epochs, "stages.teacher.folds=0"))
    retrained = read_json(teachers / "fold_0" / "manifest.json")["fingerprint"]
    assert retrained["settings"]["stages.teacher.epochs"] == 1
    assert read_json(teachers / "fold_1" / "manifest.json") == fold_1
    assert not (teachers / "manifest.json").exists()
    with pytest.raises(StageInputError, match="not a finished 'teacher' output"):
        dump_logits.run(cfg_of(root, trained_run, epochs))
    teacher.run(cfg_of(root, trained_run, epochs))  # folds 1 and 2 are stale: retrained
    now = read_json(teachers / "manifest.json")["id"]
    assert now != before
    assert read_json(teachers / "fold_1" / "manifest.json")["id"] != fold_1["id"]
    with pytest.raises(
        StageInputError,
        match=rf"^teachers/tiny_llama changed since logits/tiny_llama was dumped \(manifest "
        rf"{before[:8]}\.\. -> {now[:8]}\.\.\): rerun `arena-distill dump_logits "
        r"model=tiny_llama`",
    ):
        distill.run(cfg_of(root, trained_run, "pipeline.teachers=[tiny_llama]"))


def test_stale_fold_folders_are_accepted_under_overwrite_like_the_fingerprint(
    stale_base, trained_run, tmp_path
):
    """pseudo_label reads every teacher fold's folder: a data file changed since is refused,
    and with overwrite=true accepted and recorded (not refused by the fold-level hash check
    after the fingerprint check let it through)."""
    import json

    from arena_distill.demo import generate_demo
    from arena_distill.stages import pseudo_label

    root = copy_of(stale_base, trained_run, tmp_path)
    # the fold manifests list their inputs by absolute path: point them at this copy's files
    for manifest in (run_dir(root) / "teachers" / "tiny_llama").glob("fold_*/manifest.json"):
        text = manifest.read_text().replace(str(trained_run.root / "runs"), str(root / "runs"))
        manifest.write_text(text)
        assert any(str(root) in i["path"] for i in json.loads(text)["inputs"])
    pool = generate_demo(tmp_path / "pool", n_train=24, n_test=2, seed=11)["train"]
    path = run_dir(root) / "data" / "train.parquet"
    table = load_table(path)
    table.loc[0, "response_a"] = ["an answer edited after the teacher ran"]
    save_table(table, path)
    extra = (f"data.unlabelled=[{pool}]", "pipeline.teachers=[tiny_llama]")
    with pytest.raises(StageInputError, match="data/train.parquet changed since"):
        pseudo_label.run(cfg_of(root, trained_run, *extra))
    out = pseudo_label.run(cfg_of(root, trained_run, *extra, "overwrite=true"))
    accepted = read_json(out / "manifest.json")["stale_inputs_accepted"]
    assert any("changed since teachers/tiny_llama" in a for a in accepted)
    assert any("fold_0 is stale" in a for a in accepted)


def test_stale_check_of_a_run_made_from_another_directory_merges(
    stale_base, trained_run, tmp_path, monkeypatch
):
    """``make pipeline OUT=runs/x`` records relative input paths; merging that run from another
    working directory (or a copy of it) must not read them as changed files."""
    root = copy_of(stale_base, trained_run, tmp_path)
    teachers = run_dir(root) / "teachers" / "tiny_llama"
    for manifest in teachers.glob("fold_*/manifest.json"):
        data = read_json(manifest)
        for item in data["inputs"]:
            item["path"] = "runs/demo/data/" + Path(item["path"]).name  # relative, elsewhere
        manifest.write_text(__import__("json").dumps(data))
    monkeypatch.chdir(tmp_path)  # no runs/demo/data here: those paths do not exist
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    out = merge.run(
        cfg_of(
            root,
            trained_run,
            f"stages.merge.source={teachers}",
            f"stages.merge.out_dir={tmp_path}/merged",
        )
    )
    assert (out / "manifest.json").is_file()
