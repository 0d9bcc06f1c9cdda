"""scripts/results_table.py: the README's tables from report metrics, numbers passed through."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def results_table():
    spec = importlib.util.spec_from_file_location(
        "results_table", REPO_ROOT / "scripts" / "results_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp_path, name: str, teacher: float) -> str:
    run = tmp_path / name
    (run / "report").mkdir(parents=True)
    metrics = {
        "n_cv_rows": 90,
        "n_holdout_rows": 10,
        "oof_log_loss": {
            "teacher/t": teacher,
            "teacher/t+tta": teacher - 0.01,
            "baseline/prior": 1.05,
            "baseline/tfidf_lr": 1.01,
        },
        "fold_log_loss": {"teacher/t": [0.9, 0.95, 1.0]},
        "holdout_log_loss": {"quantized": 0.97, "quantized+tta": 0.96, "baseline/tfidf_lr": 1.02},
        "tta_gain": {"teacher/t": 0.01},
        "holdout_tta_gain": {"quantized": 0.01},
        "recipe_gains": [
            {
                "step": "quantization",
                "rows": "holdout",
                "compared": "merged → quantized",
                "gain": -0.002,
            }
        ],
        "cost": [
            {"output": "data", "seconds": 2.0, "peak_rss_mb": 300.0},
            {"output": "teachers/t", "seconds": None},
            {
                "output": "teachers/t/fold_0",
                "seconds": 100.0,
                "train_examples_per_s": 12.5,
                "train_tokens_per_s": 1500.0,
                "rows_per_s": 40.0,
                "tokens_per_s": 5000.0,
                "peak_rss_mb": 2048.0,
            },
        ],
    }
    (run / "report" / "metrics.json").write_text(json.dumps(metrics))
    return str(run)


def test_tables_carry_the_report_numbers(results_table, tmp_path, capsys):
    a, b = _run(tmp_path, "a", 0.95), _run(tmp_path, "b", 0.9)
    results_table.main([a, b, "--json", str(tmp_path / "t.json")])
    out = capsys.readouterr().out
    assert "| log loss | a | b |" in out
    assert "| teacher/t: OOF (+tta) [folds] | 0.9500 (0.9400) [0.900, 0.950, 1.000] |" in out
    assert "| quantized: holdout (+tta) | 0.9700 (0.9600) | 0.9700 (0.9600) |" in out
    assert "| baseline/tfidf_lr: OOF / holdout | 1.0100 / 1.0200 |" in out
    assert "quantization (holdout): merged → quantized | -0.0020 |" in out
    assert "| teachers/t/fold_0 | 100 s; train 12.5 ex/s, 1500 tok/s; infer 40.0 rows/s" in out
    assert "teachers/t |" not in out  # no timings: not a cost row
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["log loss"]["b"]["teacher/t: OOF (+tta) [folds]"].startswith("0.9000")


def test_missing_report_is_a_clear_error(results_table, tmp_path):
    with pytest.raises(SystemExit, match="make report"):
        results_table.main([str(tmp_path / "nothing")])
