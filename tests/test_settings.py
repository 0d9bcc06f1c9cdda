"""The configuration contract: unknown keys refused with their path and a guess, types checked,
nested blocks built, and the legacy prompt-file layout of the prediction settings read."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from arena_distill import settings
from arena_distill.config import compose
from arena_distill.settings import (
    ConfigError,
    DataSettings,
    DistillSettings,
    PredictSettings,
    TrainSettings,
    build,
    nearest_key,
    validate,
)


@pytest.mark.parametrize(
    ("typo", "known", "guess"),
    [
        ("learning_rate", ["lr", "head_lr", "epochs"], "lr"),  # an abbreviation
        ("epoch", ["lr", "epochs"], "epochs"),  # a near spelling
        ("nfolds", ["n_folds", "seed"], "n_folds"),
        ("max_len", ["max_length", "max_prompt_tokens"], "max_length"),
        ("enable", ["enabled", "empty_answer"], "enabled"),
        ("zzz", ["lr", "epochs"], None),  # nothing close
    ],
)
def test_nearest_key(typo, known, guess):
    assert nearest_key(typo, known) == guess


def test_unknown_keys_are_refused_at_any_depth_with_their_full_path():
    cases = {
        "+stages.teacher.learning_rate=1e-4": "stages.teacher.learning_rate: unknown key; "
        "did you mean lr?",
        "+stages.distill.weights.kld=1": "stages.distill.weights.kld: unknown key; did you mean kl?",
        "+model.lora.alpah=3": "model.lora.alpah: unknown key; did you mean alpha?",
        "+data.folds.nfolds=3": "data.folds.nfolds: unknown key; did you mean n_folds?",
        "+stages.predict.postprocess.enable=true": "stages.predict.postprocess.enable: unknown "
        "key; did you mean enabled?",
        "+stagse.x=1": "stagse: unknown key; did you mean stages?",
        "+stages.distil.lr=1": "stages.distil: unknown key; did you mean distill?",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError) as err:
            compose(["experiment=demo", override])
        assert str(err.value) == message


def test_list_items_are_checked_too():
    cfg = OmegaConf.create({"path": "a.csv", "fromat": "competition"})
    with pytest.raises(
        ConfigError, match=r"data.extra\[0\].fromat: unknown key; did you mean format"
    ):
        build(DataSettings, {"name": "x", "train": {"path": "t.csv"}, "extra": [cfg]}, "data")


def test_values_of_the_wrong_type_are_refused():
    with pytest.raises(ConfigError, match="stages.teacher.lr: expected a number, got 'abc'"):
        settings.stage(compose(["stages.teacher.lr=abc"]), "teacher")
    with pytest.raises(ConfigError, match="epochs: expected a number"):
        build(TrainSettings, {"epochs": "2"})
    with pytest.raises(ConfigError, match="keep_best: expected true or false"):
        build(TrainSettings, {"keep_best": 1})
    with pytest.raises(ConfigError, match="per_device_batch_size: 2.5 fits no type"):
        build(TrainSettings, {"per_device_batch_size": 2.5})
    with pytest.raises(ConfigError, match="per_device_batch_size must be an integer or auto"):
        build(TrainSettings, {"per_device_batch_size": "largest"})
    assert build(TrainSettings, {"per_device_batch_size": "auto"}).per_device_batch_size == "auto"
    with pytest.raises(ConfigError, match="betas: expected 2 values"):
        build(TrainSettings, {"betas": [0.9]})


def test_a_required_value_must_be_given():
    with pytest.raises(ConfigError, match="data.train.path"):
        settings.data(compose(["data=competition"]))  # path: ??? in the file
    with pytest.raises(ConfigError, match="out_dir: a value is required"):
        build(DistillSettings, {"logits_dir": "x"}, "stages.distill")


def test_blocks_build_into_typed_nested_settings():
    cfg = compose(["experiment=demo", "stages.distill.weights.kl=0", "stages.teacher.folds=1"])
    distill = settings.stage(cfg, "distill")
    assert isinstance(distill, TrainSettings)  # fit() takes it as is
    assert distill.weights.kl == 0.0 and distill.weights.cos == 1.0
    assert distill.betas == (0.9, 0.95) and distill.epochs == 3.0
    assert settings.stage(cfg, "teacher").folds == 1
    data = settings.data(cfg)
    assert data.folds.n_folds == 3 and data.pretrain[0].format == "competition"
    assert settings.pipeline(cfg).teachers == ["tiny_llama", "tiny_qwen2"]


def test_values_in_choices_are_checked():
    with pytest.raises(ConfigError, match="swap must be one of"):
        settings.stage(compose(["stages.teacher.swap=both"]), "teacher")
    with pytest.raises(ConfigError, match="merge method"):
        settings.stage(compose(["stages.merge.method=mean"]), "merge")
    with pytest.raises(ConfigError, match="report_to"):
        settings.logging_settings(compose(["logging.report_to=comet"]))
    with pytest.raises(ConfigError, match="stages.stack.inner_cv: random, folds or both"):
        settings.stage(compose(["stages.stack.inner_cv=fold"]), "stack")
    with pytest.raises(ConfigError, match=r"stages.stack.flat_fold_ratio: in \[0, 1\)"):
        settings.stage(compose(["stages.stack.flat_fold_ratio=1.5"]), "stack")


def test_predict_settings_read_the_flat_prompt_file_layout_of_earlier_versions():
    old = {"tta": False, "postprocess": True, "empty_answer": [0.1, 0.8, 0.1], "batch_size": 4}
    s = PredictSettings.from_config(old)
    assert not s.tta and s.batch_size == 4
    assert s.postprocess.enabled and s.postprocess.empty_answer == (0.1, 0.8, 0.1)
    again = PredictSettings.from_config(s.to_dict())
    assert again == s
    with pytest.raises(ConfigError, match="unknown key"):
        PredictSettings.from_config({"ttaa": True})


def test_validate_accepts_the_root_config_and_refuses_an_unknown_root_key():
    cfg = compose([])
    assert validate(cfg) is cfg
    OmegaConf.set_struct(cfg, False)  # as a file-level key would arrive
    cfg.extra_block = {"a": 1}
    with pytest.raises(ConfigError, match="extra_block: unknown key"):
        validate(cfg)
