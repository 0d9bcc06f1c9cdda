"""``arena-distill <stage> [hydra overrides]``: run one pipeline stage;
``arena-distill pipeline [--only ...] [--force] [hydra overrides]``: the whole chain in one process.

Examples::

    arena-distill pipeline experiment=demo
    arena-distill demo_data
    arena-distill data experiment=demo data.folds.n_folds=3
    arena-distill tokenize experiment=demo model=tiny_llama --cfg job   # print the config
"""

from __future__ import annotations

import importlib
import sys

from arena_distill.stages import STAGES


def usage() -> str:
    lines = [__doc__.strip(), "", "stages (and `pipeline`, the chain of them):"]
    lines += [f"  {name}" for name in STAGES]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name = argv[0].replace("-", "_")
    if name == "pipeline":
        from arena_distill.pipeline import main as pipeline_main

        return pipeline_main(argv[1:])
    if name not in STAGES:
        print(f"arena-distill: unknown stage {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(STAGES[name])
    # Hydra reads its overrides from sys.argv.
    sys.argv = [f"arena-distill {name}", *argv[1:]]
    module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
