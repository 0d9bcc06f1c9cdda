"""Gather a trained model and the wheels into one Kaggle dataset folder for offline scoring.

    python scripts/package_kaggle.py --run-dir runs/first_place --out dist/kaggle \\
        --kaggle-user me --slug arena-distill-gemma2 -- experiment=first_place model=gemma2_9b
    python scripts/package_kaggle.py --model-dir runs/demo/models/tiny_llama --out dist/kaggle \\
        --kaggle-user me --no-deps -- experiment=demo model=tiny_llama
    python scripts/package_kaggle.py --run-dir runs/first_place --final folds --out dist/kaggle \\
        --kaggle-user me -- experiment=first_place model=gemma2_9b

Layout of ``--out`` (replaced as a whole, atomically)::

    dataset-metadata.json    what `kaggle datasets create` reads: title, id (<user>/<slug>), licence
    model/                   the model folder (config.json, weights, tokenizer) and
                             arena_distill_prompt.json (prompt, model config, predict settings,
                             the final model) and, when the run has one, stacker/ (the stack
                             stage's level-2 model: stacker.json + baseline_<name>.npz;
                             --no-stacker: none); final folds: the BASE model here and
                             folds/fold_<k>/ (each fold student's LoRA adapter)
    wheels/                  arena_distill-<version>-py3-none-any.whl (+ the pinned dependencies)

The final model (``--final``, default the run config's ``pipeline.final``):

* ``merge``: ``--model-dir``, or from ``--run-dir`` its ``quantized/`` (the quantize stage's
  output: GPTQ, bitsandbytes LLM.int8 or fp16) folder, else ``merged/``;
* ``full`` (the student trained on every row, merged alone and quantized): the same, from the
  run's ``full_quantized/``, else ``full_merged/`` (``stages.full``'s default folders); it ships
  and predicts like the merge's single model;
* ``folds``: the base model once (``--model-dir``, else the config's ``model.name_or_path``: a
  folder, or a hub id found in the local Hugging Face cache) and every fold student's LoRA
  adapter (``--folds-dir``, default ``<run-dir>/students/<model>``: ``fold_<k>/adapter``) as
  ``model/folds/fold_<k>/``; ``kaggle.predict_csv`` predicts with each and averages them. Each
  fold is one more forward pass per test row: the run's ``plan/plan.json`` (``make plan
  ARGS="pipeline.final=folds stages.plan.rows=25000 ..."``) must show a plan of the K folds that
  fits the budget, else the package is refused (``--allow-over-budget`` ships it anyway: the
  predictor then averages only the folds that fit); without such a plan, a warning. The base
  ships in its own dtype, unquantized: a 9B base in 16 bits (about 18 GB) does not fit one
  16 GB T4.

A folder without a tokenizer gets the one of the config's ``model.name_or_path`` (or
``--tokenizer-dir``). The prompt/model/predict config comes from the run's composed config:
Hydra overrides after ``--`` (composed with ``arena_distill.config.compose``) or, without any,
the newest Hydra log of the run (``<run-dir>/logs/<stage>/<time>/.hydra/config.yaml`` of
quantize, merge, predict, distill, full or ensemble).

The wheels: the project's own (``pip wheel . --no-deps``, built from a copy of the sources so
the checkout stays clean; it holds no ``configs/``: ``arena_distill.kaggle`` needs none) and,
unless ``--no-deps``, the dependencies a Kaggle image lacks, at this project's pins (from
pyproject.toml), downloaded for Kaggle's Python and platform (``--python-version``, default
3.11; manylinux x86_64). Kaggle's GPU image already ships torch, transformers, tokenizers,
safetensors, accelerate, numpy, pandas, pyarrow, scikit-learn, tqdm, rich and matplotlib, and
replacing torch/CUDA offline is neither needed nor wise, so only these are added
(``KAGGLE_DEPS``):

Requirements are pinned to pyproject.toml, else to the version installed here.

* always: ``hydra-core``, ``omegaconf``, ``antlr4-python3-runtime`` (omegaconf's parser; sdist
  only on PyPI, pure Python, so it is built here into a ``py3-none-any`` wheel): the package
  imports them; ``peft``: adapters (``adapter_dir``) and the factory's imports;
* what the packaged model needs to load, decided from the model folder itself
  (``quantize_methods.folder_method``: its ``config.json`` ``quantization_config``, checked
  against the quantize stage's marker and manifest), never from a flag:

  - ``gptq``: ``optimum``, ``gptqmodel`` and gptqmodel's run-time requirements the image
    lacks (``pypcre``, ``logbar``, ``device-smi``, ``tokenicer``, ``defuser``; loading a GPTQ
    folder in a Kaggle-like environment failed without each). PyPI has only sdists of all but
    optimum: the pure-Python ones are built here into ``py3-none-any`` wheels, but
    ``gptqmodel`` (CUDA sources JIT-compiled at run time against the installed torch) and
    ``pypcre`` (a C extension) are not downloaded unless wheels are found: build them in a
    Kaggle notebook with internet (``scripts/kaggle_build_gptqmodel.md``) and pass
    ``--find-links <folder>``;
  - ``bnb_int8``: ``bitsandbytes`` (a manylinux ``py3-none`` wheel on PyPI);
  - ``none`` (an fp16 / full-precision folder: ``merged/`` or the quantize stage's
    ``method=none``): nothing more.

``--with REQ`` adds more (e.g. ``--with transformers==5.17.0`` when the image's transformers is
too old), ``--without NAME`` drops one. The notebook installs every wheel of ``wheels/`` with
``pip install --no-index --no-deps``, so nothing the image has is replaced by surprise.

Prints the ``kaggle datasets create -p <out> --dir-mode zip`` command that uploads the folder.
Makefile: ``kaggle-package: setup`` / ``$(PY) scripts/package_kaggle.py $(KAGGLE_ARGS)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from arena_distill import settings as config
from arena_distill.config import REPO_ROOT, compose
from arena_distill.io import atomic_dir
from arena_distill.kaggle import FOLDS_DIR, PROMPT_FILE, write_prompt_file
from arena_distill.quantize_methods import FolderMethodError, folder_method
from arena_distill.settings import FINAL_MODELS
from arena_distill.stacking import STACKER_DIR, STACKER_FILE

log = logging.getLogger("package_kaggle")

# name -> requirement when pyproject.toml does not pin it. What the package imports on Kaggle
# whatever the model ...
BASE_DEPS: dict[str, str | None] = {
    "hydra-core": None,
    "omegaconf": None,
    "antlr4-python3-runtime": "antlr4-python3-runtime==4.9.3",  # omegaconf 2.3 needs 4.9.*
    "peft": None,
}
# ... and what loading the packaged model needs, by the quantize method the model folder holds
# (quantize_methods.folder_method: its config.json quantization_config, the quantize manifest)
METHOD_DEPS: dict[str, dict[str, str | None]] = {
    # gptqmodel's own run-time requirements that Kaggle's image lacks come too (all sdists on
    # PyPI: pypcre is a C extension, the others pure Python)
    "gptq": {
        "optimum": None,
        "gptqmodel": None,
        "pypcre": None,
        "logbar": None,
        "device-smi": None,
        "tokenicer": None,
        "defuser": None,
    },
    "bnb_int8": {"bitsandbytes": None},
    "none": {},
}
KAGGLE_DEPS: dict[str, dict[str, str | None]] = {
    method: {**BASE_DEPS, **deps} for method, deps in METHOD_DEPS.items()
}
# Kaggle's image, assumed Ubuntu 22.04 (glibc 2.35): manylinux_2_17 ... _2_35 wheels install there
KAGGLE_GLIBC_MINOR = 35
# sdist-only on PyPI but pure Python: built here into a wheel that installs anywhere
PURE_SDISTS = ("antlr4-python3-runtime", "logbar", "device-smi", "tokenicer", "defuser")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
# the model folders of a run, by pipeline.final (the first one holding a model is shipped)
RUN_MODEL_DIRS = {"merge": ("quantized", "merged"), "full": ("full_quantized", "full_merged")}
LOG_STAGES = ("quantize", "merge", "predict", "distill", "full", "ensemble")
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{3,48}[a-z0-9]$")


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_pins(pyproject: Path = REPO_ROOT / "pyproject.toml") -> dict[str, str]:
    """``{canonical name: requirement}`` of pyproject.toml's ``[project] dependencies``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return {_canon(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]): d for d in deps}


def kaggle_requirements(
    method: str, with_: Sequence[str] = (), without: Sequence[str] = ()
) -> list[str]:
    """The requirements to download for a model folder holding a ``method`` model."""
    if method not in KAGGLE_DEPS:
        raise SystemExit(f"no Kaggle dependencies known for quantize method {method!r}")
    pins = project_pins()
    drop = {_canon(n) for n in without}
    reqs = [
        req or pins.get(_canon(name)) or installed_pin(name)
        for name, req in KAGGLE_DEPS[method].items()
        if _canon(name) not in drop
    ]
    return reqs + list(with_)


def installed_pin(name: str) -> str:
    """``name==<the version installed here>`` (what the project ran with), else ``name``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{name}=={version(name)}"
    except PackageNotFoundError:
        return name


def model_method(model_dir: Path) -> str:
    """The quantize method of the model folder (``quantize_methods.folder_method``)."""
    try:
        return folder_method(model_dir)
    except FolderMethodError as e:
        raise SystemExit(f"cannot tell which wheels {model_dir} needs: {e}") from e


# ---------------------------------------------------------------------------------------------
# The run's config
# ---------------------------------------------------------------------------------------------


def newest_run_config(run_dir: Path) -> Path | None:
    found = [
        p for stage in LOG_STAGES for p in (run_dir / "logs" / stage).glob("*/.hydra/config.yaml")
    ]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def run_config(run_dir: Path | None, overrides: Sequence[str]) -> tuple[DictConfig, str]:
    """The composed config and where it came from."""
    if not overrides and run_dir is not None:
        path = newest_run_config(run_dir)
        if path is not None:
            return OmegaConf.load(path), str(path)
    if not overrides:
        log.warning("no Hydra overrides and no run log: packaging with the default config")
    return compose(list(overrides)), "compose(" + " ".join(overrides) + ")"


def run_prior(run_dir: Path | None) -> list[float] | None:
    """The class mix of the run's labelled training rows (train + extra), from its data
    stage's output; None without a run folder."""
    if run_dir is None or not (run_dir / "data" / "train.parquet").is_file():
        return None
    from arena_distill.layout import read_run_data
    from arena_distill.metrics import class_prior

    labels = read_run_data(run_dir / "data").labelled["label"].dropna().astype(int)
    return class_prior(labels.to_numpy()).tolist()


def choose_model_dir(run_dir: Path | None, model_dir: Path | None, final: str = "merge") -> Path:
    if model_dir is not None:
        candidates = [model_dir]
    elif run_dir is not None:
        candidates = [run_dir / d for d in RUN_MODEL_DIRS[final]]
    else:
        raise SystemExit("give --run-dir or --model-dir")
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    raise SystemExit(f"no model folder (config.json) in {[str(c) for c in candidates]}")


def base_model_dir(name_or_path: str) -> Path:
    """The base model of a folds package: a folder, or a hub id's snapshot in the local cache."""
    if (Path(name_or_path) / "config.json").is_file():
        return Path(name_or_path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception as e:  # noqa: BLE001 (not cached, not a hub id, offline)
        raise SystemExit(
            f"the base model {name_or_path!r} is neither a folder nor in the local Hugging Face "
            f"cache ({type(e).__name__}); give --model-dir <the base model folder>"
        ) from e


def fold_adapter_dirs(folds_dir: Path, run_dir: Path | None) -> list[Path]:
    """``fold_<k>/adapter`` of every fold of a per-fold stage's output (every fold of the run's
    folds file when ``run_dir`` has one)."""
    found = sorted(
        (
            p
            for p in folds_dir.glob("fold_*/adapter")
            if p.parent.name.removeprefix("fold_").isdigit()
            and (p / "adapter_config.json").is_file()
        ),
        key=lambda p: int(p.parent.name.removeprefix("fold_")),
    )
    want = None
    if run_dir is not None and (run_dir / "data" / "folds.csv").is_file():
        from arena_distill.data.folds import read_folds
        from arena_distill.layout import n_folds

        want = n_folds(read_folds(run_dir / "data" / "folds.csv"))
    names = [p.parent.name for p in found]
    expected = [f"fold_{k}" for k in range(want if want is not None else len(found))]
    if not found or names != expected:
        raise SystemExit(
            f"{folds_dir}: fold adapters {names or 'none'}, expected {expected or 'fold_0 ...'} "
            "(run the distill stage for every fold, or give --folds-dir)"
        )
    return found


def check_folds_plan(run_dir: Path | None, n_folds: int, allow_over_budget: bool) -> None:
    """Refuse a folds package whose run plan (``plan/plan.json`` of ``make plan`` with
    ``pipeline.final=folds``) fits no plan in the time budget; warn when there is none."""
    path = None if run_dir is None else run_dir / "plan" / "plan.json"
    hint = 'make plan ARGS="pipeline.final=folds stages.plan.rows=25000 <the run\'s overrides>"'
    if path is None or not path.is_file():
        log.warning(
            "no time plan of the %d fold students (%s): %d forward passes per test row; "
            "project them first with `%s`",
            n_folds,
            path or "no --run-dir",
            n_folds,
            hint,
        )
        return
    plan = json.loads(path.read_text())
    if int(plan.get("models") or 1) != n_folds:
        log.warning(
            "%s projects %s model(s), not the %d fold students: rerun `%s`",
            path,
            plan.get("models"),
            n_folds,
            hint,
        )
        return
    chosen = plan.get("chosen")
    if chosen is None:
        message = (
            f"{path}: no plan of the {n_folds} fold students fits the time budget "
            f"({plan.get('budget_s', 0) / 3600:.2f} h with the safety margin), not even the "
            "cheapest; on Kaggle the predictor would average only the folds that fit. Ship "
            "--final merge or full (one forward pass per row), or --allow-over-budget"
        )
        if not allow_over_budget:
            raise SystemExit(message)
        log.warning("%s (shipped anyway: --allow-over-budget)", message)
        return
    log.info(
        "%s: the %d fold students fit: max_length %s, TTA %s, %.2f h projected",
        path,
        n_folds,
        chosen["max_length"],
        chosen["tta"],
        chosen["seconds"] / 3600,
    )


def copy_adapters(adapters: list[Path], dest: Path) -> list[str]:
    """Each fold adapter as ``dest/folds/fold_<k>/`` (its config and weights); returns their
    paths relative to ``dest``."""
    out = []
    for adapter in adapters:
        rel = f"{FOLDS_DIR}/{adapter.parent.name}"
        shutil.copytree(adapter, dest / rel, ignore=shutil.ignore_patterns(".*", "README.md"))
        out.append(rel)
    return out


def copy_model(model_dir: Path, dest: Path, tokenizer_dir: Path | None) -> None:
    shutil.copytree(model_dir, dest, ignore=shutil.ignore_patterns(".*", "__pycache__"))
    if any((dest / f).exists() for f in TOKENIZER_FILES):
        return
    if tokenizer_dir is None or not any((tokenizer_dir / f).exists() for f in TOKENIZER_FILES):
        raise SystemExit(f"{model_dir} has no tokenizer; give --tokenizer-dir")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(dest))


# ---------------------------------------------------------------------------------------------
# Wheels
# ---------------------------------------------------------------------------------------------


def _pip(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    log.info("%s", " ".join(cmd))
    return subprocess.run(cmd, capture_output=True, text=True)


def build_project_wheel(dest: Path) -> Path:
    """``pip wheel . --no-deps`` from a copy of the project's sources (no build/ in the tree)."""
    with tempfile.TemporaryDirectory(prefix="arena-wheel-") as tmp:
        src = Path(tmp) / "src-copy"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "MANIFEST.in"):
            if (REPO_ROOT / name).is_file():
                shutil.copy2(REPO_ROOT / name, src / name)
        shutil.copytree(
            REPO_ROOT / "src",
            src / "src",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
        )
        before = set(dest.glob("*.whl"))
        # the build backend is usually here already (setuptools); else pip fetches it
        res = _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(dest), str(src))
        if res.returncode != 0:
            res = _pip("wheel", "--no-deps", "-w", str(dest), str(src))
        if res.returncode != 0:
            raise SystemExit(f"building the project wheel failed:\n{res.stdout}\n{res.stderr}")
    new = sorted(set(dest.glob("*.whl")) - before)
    if not new:
        raise SystemExit("pip wheel produced no wheel")
    return new[0]


def kaggle_platforms(glibc_minor: int = KAGGLE_GLIBC_MINOR) -> list[str]:
    """Every platform tag a wheel for Kaggle's image may carry. pip does not widen an explicit
    ``--platform manylinux_2_28_x86_64`` to older glibc tags, so each one is listed (e.g.
    bitsandbytes 0.50.2 ships only ``manylinux_2_24_x86_64``)."""
    tags = [f"manylinux_2_{m}_x86_64" for m in range(glibc_minor, 16, -1)]
    return [*tags, "manylinux2014_x86_64", "linux_x86_64"]


def download_deps(
    reqs: Sequence[str], dest: Path, python_version: str, find_links: Sequence[str] = ()
) -> list[str]:
    """Wheels of ``reqs`` (no dependencies of theirs) for Kaggle; returns the failures."""
    abi = "cp" + python_version.replace(".", "")
    platform = [a for tag in kaggle_platforms() for a in ("--platform", tag)]
    links = [a for f in find_links for a in ("--find-links", f)]
    failed = []
    for req in reqs:
        res = _pip(
            "download",
            "--no-deps",
            "--only-binary=:all:",
            *platform,
            "--python-version",
            python_version,
            "--implementation",
            "cp",
            "--abi",
            abi,
            "--abi",
            "abi3",
            "--abi",
            "none",
            *links,
            "-d",
            str(dest),
            req,
        )
        if res.returncode != 0 and _canon(re.split(r"[<>=!~ ]", req)[0]) in PURE_SDISTS:
            res = _pip("wheel", "--no-deps", *links, "-w", str(dest), req)
        if res.returncode != 0:
            log.error("no wheel for %s: %s", req, res.stderr.strip().splitlines()[-1:])
            failed.append(req)
    return failed


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def dataset_metadata(user: str, slug: str, title: str) -> dict[str, Any]:
    if not SLUG_RE.match(slug):
        raise SystemExit(f"--slug {slug!r}: 5-50 characters, lowercase letters, digits, hyphens")
    if not 6 <= len(title) <= 50:
        raise SystemExit(f"--title {title!r}: Kaggle wants 6 to 50 characters")
    return {"title": title, "id": f"{user}/{slug}", "licenses": [{"name": "apache-2.0"}]}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Package a model and the wheels as a Kaggle dataset folder.",
        epilog="Hydra overrides of the run (e.g. experiment=first_place model=gemma2_9b) go "
        "after the options, best after --.",
    )
    p.add_argument("--run-dir", type=Path, help="run folder: uses quantized/, else merged/")
    p.add_argument(
        "--model-dir",
        type=Path,
        help="a full classifier folder (--final folds: the base model folder)",
    )
    p.add_argument(
        "--final",
        choices=FINAL_MODELS,
        help="the final model to ship (default: the run config's pipeline.final)",
    )
    p.add_argument(
        "--folds-dir",
        type=Path,
        help="--final folds: the fold students (fold_<k>/adapter; default "
        "<run-dir>/students/<model>)",
    )
    p.add_argument(
        "--allow-over-budget",
        action="store_true",
        help="--final folds: ship even when the run's plan fits no plan of the K folds",
    )
    p.add_argument("--tokenizer-dir", type=Path, help="when the model folder has no tokenizer")
    p.add_argument("--out", type=Path, required=True, help="the dataset folder (replaced)")
    p.add_argument("--kaggle-user", required=True)
    p.add_argument("--slug", default="arena-distill-model")
    p.add_argument("--title", default="arena-distill model")
    p.add_argument("--no-deps", action="store_true", help="only the project's own wheel")
    p.add_argument("--with", dest="with_", action="append", default=[], metavar="REQ")
    p.add_argument("--without", action="append", default=[], metavar="NAME")
    p.add_argument("--find-links", action="append", default=[], metavar="DIR_OR_URL")
    p.add_argument("--python-version", default="3.11", help="Kaggle's Python (default 3.11)")
    p.add_argument(
        "--stacker-dir",
        type=Path,
        help="the stack stage's stacker/ folder (default: <run-dir>/stack/stacker when present); "
        "shipped as model/stacker/, which kaggle.predict_csv applies",
    )
    p.add_argument("--no-stacker", action="store_true", help="ship the model without the stacker")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the run's config")
    args = p.parse_args(argv)
    if args.run_dir is None and args.model_dir is None:
        p.error("give --run-dir or --model-dir")
    return args


def choose_stacker_dir(args: argparse.Namespace) -> Path | None:
    """The stacker folder to ship: ``--stacker-dir``, else the run's ``stack/stacker/``."""
    if args.no_stacker:
        return None
    if args.stacker_dir is not None:
        if not (args.stacker_dir / STACKER_FILE).is_file():
            raise SystemExit(f"{args.stacker_dir} has no {STACKER_FILE}")
        return args.stacker_dir
    if args.run_dir is not None:
        folder = args.run_dir / "stack" / STACKER_DIR
        if (folder / STACKER_FILE).is_file():
            return folder
    return None


def main(argv: Sequence[str] | None = None) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    metadata = dataset_metadata(args.kaggle_user, args.slug, args.title)
    cfg, cfg_source = run_config(args.run_dir, args.overrides)
    final = args.final or str(config.pipeline(cfg).final)
    adapters: list[Path] = []
    if final == "folds":
        model_dir = args.model_dir or base_model_dir(str(cfg.model.name_or_path))
        folds_dir = args.folds_dir or (
            None if args.run_dir is None else args.run_dir / "students" / str(cfg.model.name)
        )
        if folds_dir is None:
            raise SystemExit("--final folds: give --run-dir or --folds-dir")
        adapters = fold_adapter_dirs(folds_dir, args.run_dir)
        check_folds_plan(args.run_dir, len(adapters), args.allow_over_budget)
    elif args.run_dir is not None and args.model_dir is not None:
        raise SystemExit("give --run-dir or --model-dir, not both (both: --final folds only)")
    else:
        model_dir = choose_model_dir(args.run_dir, args.model_dir, final)
    method = model_method(model_dir)
    log.info("%s holds a %s model: wheels %s", model_dir, method, sorted(KAGGLE_DEPS[method]))
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    prompt = OmegaConf.to_container(cfg.prompt, resolve=True)
    # the prediction settings without the run's paths (settings.PredictStageSettings.predict)
    predict = config.to_dict(config.stage(cfg, "predict").predict())
    tokenizer_dir = args.tokenizer_dir or Path(str(model_cfg.get("name_or_path", "")))

    with atomic_dir(args.out) as tmp:
        copy_model(model_dir, tmp / "model", tokenizer_dir)
        shipped = {"kind": final}
        if adapters:
            shipped["adapters"] = copy_adapters(adapters, tmp / "model")
            shipped["source"] = str(adapters[0].parent.parent.resolve())
            log.info("%d fold adapters shipped on the base %s", len(adapters), model_dir)
        stacker_dir = choose_stacker_dir(args)
        if stacker_dir is not None:
            shutil.copytree(stacker_dir, tmp / "model" / STACKER_DIR)
            log.info("stacker shipped: %s -> model/%s", stacker_dir, STACKER_DIR)
        write_prompt_file(
            tmp / "model",
            prompt=prompt,
            model_cfg=model_cfg,
            predict=predict,
            source={"model_dir": str(model_dir.resolve()), "config": cfg_source},
            prior=run_prior(args.run_dir),
            final=shipped,
        )
        wheels = tmp / "wheels"
        wheels.mkdir()
        own = build_project_wheel(wheels)
        log.info("project wheel: %s", own.name)
        if not args.no_deps:
            reqs = kaggle_requirements(method, args.with_, args.without)
            failed = download_deps(reqs, wheels, args.python_version, args.find_links)
            if failed:
                raise SystemExit(
                    f"no wheel for {failed} on Python {args.python_version} manylinux x86_64; "
                    "add --find-links to a folder with one, or --without NAME"
                )
        (tmp / "dataset-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    what = f"{method}; final {final}" + (f", {len(adapters)} fold adapters" if adapters else "")
    print(f"Kaggle dataset folder: {args.out} (model/ with {PROMPT_FILE}, wheels/; {what})")
    print("upload it with:")
    print(f"  kaggle datasets create -p {args.out} --dir-mode zip")
    print(f'  (a new version later: kaggle datasets version -p {args.out} -m "..." --dir-mode zip)')
    return args.out


if __name__ == "__main__":
    main()
