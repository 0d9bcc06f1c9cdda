"""A GPU machine that reaches no package index: what to bring beside the checkout, and a CPU
check that it is enough.

The machines this project's GPU numbers are measured on (an H200 whose image holds torch,
transformers, peft, accelerate, pandas, scikit-learn ...: ``IMAGE``) cannot install anything.
There ``scripts/gpu_device.sh`` runs the project from the checkout's ``src/`` with the image's
Python, plus the wheels of the few packages the image lacks (``CARRY``), brought in ``.carry/``:

    python scripts/gpu_carry.py                      # .carry/wheels/*.whl + .carry/lengths.json
    python scripts/gpu_carry.py --check -- python3 scripts/bench_gpu.py --dry-run
        # run a command here in a copy of this environment cut to IMAGE + CARRY (no download)
    DRY_RUN=1 python scripts/gpu_carry.py --check --wheels -- bash scripts/gpu_device.sh
        # the machine's whole command at tiny shapes, the carried packages from .carry/wheels

``--check`` builds a virtual environment whose site-packages holds links to the packages of
this one that the image has or that are carried, nothing else, and runs the command in it
with ``src/`` on the path (as on the GPU machine): a module the image lacks and nobody
carries fails the import here, not in the machine's minutes. The wheels themselves are for
``--python-version`` (the image's 3.12) and manylinux x86-64.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
CARRY_DIR = REPO / ".carry"

# The H200 image's Python packages as the device tool's KINDS.md lists them (read 2026-11-17;
# torch 2.11.0+cu130, transformers 5.17.0, peft 0.21.0, accelerate 1.15.0, Python 3.12.3).
IMAGE = frozenset(
    """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
    botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
    coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
    diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
    frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
    hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
    jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator
    lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
    mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx
    ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
    nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
    nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
    nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
    opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
    pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf
    psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
    pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
    pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
    scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
    shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
    tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz
    torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers
    treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
    werkzeug wheel wrapt xarray xxhash yarl zipp
    """.split()
)

# What the image lacks and `bench_gpu.py` / `pytest -m gpu` import, with the version to bring
# (None: the version installed here, i.e. the project's pin). peft is on the image (0.21.0) but
# carried at the project's pin; liger-kernel is the `model.liger_kernel` lever (extra gpu).
CARRY: dict[str, str | None] = {
    "hydra-core": None,
    "omegaconf": None,
    "antlr4-python3-runtime": None,  # an sdist only on PyPI: built into a wheel here
    "peft": None,
    "liger-kernel": "0.8.5",
    "bitsandbytes": None,  # QLoRA (the teachers' nf4) in `pytest -m gpu`; 43 MB of the 47
}
# Deliberately not carried (their tests skip, their levers stay off): gptqmodel/optimum (no
# wheel on PyPI for gptqmodel's CUDA build; the GPTQ test on the GPU skips without them),
# flash-attn (no wheel for the image's torch: the attention rule then picks flex_attention),
# the MiniLM wheel (a CPU model). The device tool carries at most 64 MiB with the checkout.
SDIST_ONLY = frozenset({"antlr4-python3-runtime"})
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]


def normalise(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return canonicalize_name(name)


def pins() -> dict[str, str]:
    """``CARRY`` with every version resolved (an unpinned one: the version installed here)."""
    out = {}
    for name, version in CARRY.items():
        if version is None:
            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError as exc:
                raise SystemExit(f"{name} is not installed here: give CARRY a version") from exc
        out[name] = version
    return out


def download(dest: Path, python_version: str) -> list[Path]:
    """The carried wheels for CPython ``python_version`` on manylinux x86-64, in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    for name, version in pins().items():
        spec = f"{name}=={version}"
        if name in SDIST_ONLY:  # pure Python: a wheel built here installs anywhere
            cmd = [*pip, "wheel", "--no-deps", "--quiet", "-w", str(dest), spec]
        else:
            cmd = [*pip, "download", "--no-deps", "--quiet", "--only-binary=:all:"]
            cmd += ["--python-version", python_version, "--implementation", "cp"]
            for platform in PLATFORMS:
                cmd += ["--platform", platform]
            cmd += ["-d", str(dest), spec]
        print(f"[gpu-carry] {spec}", flush=True)
        subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob("*.whl"))
    names = [normalise(w.name.split("-")[0]) for w in wheels]
    doubles = sorted({n for n in names if names.count(n) > 1})
    if doubles:
        raise SystemExit(f"two wheels of {doubles} in {dest}: pip would stop the whole install")
    return wheels


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def owners(site: Path) -> dict[str, str]:
    """Top-level entry of ``site`` (package folder, module, .pth, .dist-info) -> distribution."""
    owner: dict[str, str] = {}
    for dist in metadata.distributions(path=[str(site)]):
        name = normalise(dist.metadata["Name"] or "")
        for f in dist.files or []:
            top = f.parts[0]
            if top not in ("..", "") and not top.startswith("__pycache__"):
                owner.setdefault(top, name)
    return owner


def image_env(root: Path, keep: frozenset[str]) -> Path:
    """A virtual environment at ``root`` whose site-packages links to the entries of this one
    owned by a distribution in ``keep`` (nothing else: no editable install of this project, no
    package the image lacks). Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    target = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    site = site_packages()
    owner = owners(site)
    for entry in site.iterdir():
        dist = owner.get(entry.name)
        if dist is not None and dist in keep:
            (target / entry.name).symlink_to(entry)
    return python


def check(command: list[str], *, wheels: bool = False) -> int:
    """Run ``command`` (``python3`` / ``python`` in it: the cut environment's) with only the
    image's and the carried packages importable and ``src/`` on the path; its return code.
    ``wheels``: the carried packages are left out too, for the command to install them from
    ``.carry/wheels`` as ``gpu_device.sh`` does on the machine."""
    carried = {normalise(n) for n in CARRY}
    keep = (IMAGE - carried) if wheels else (IMAGE | carried)
    with tempfile.TemporaryDirectory(prefix="gpu-image-") as tmp:
        python = image_env(Path(tmp) / "venv", keep)
        env = dict(os.environ)
        env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO / "src"), str(REPO), env.get("PYTHONPATH")) if p
        )
        env.pop("VIRTUAL_ENV", None)
        return subprocess.run(command, env=env, cwd=REPO).returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=CARRY_DIR, help="default: .carry/")
    ap.add_argument("--python-version", default="3.12", help="the GPU image's Python")
    ap.add_argument(
        "--lengths",
        type=Path,
        default=REPO.parent / "shared" / "gpu" / "lengths.json",
        help="a real token-length mix for bench_gpu.py --lengths (copied when present)",
    )
    ap.add_argument("--check", action="store_true", help="-- COMMAND: run it cut to the image")
    ap.add_argument(
        "--wheels",
        action="store_true",
        help="with --check: without the carried packages (the command installs .carry/wheels)",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.check:
        if not command:
            ap.error("--check needs a command after --")
        return check(command, wheels=args.wheels)
    wheels = download(args.out / "wheels", args.python_version)
    if args.lengths.is_file():
        dest = args.out / "lengths.json"
        dest.unlink(missing_ok=True)
        shutil.copyfile(args.lengths, dest)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    total = size + checkout_bytes()
    print(
        f"[gpu-carry] {len(wheels)} wheels, {size / 2**20:.1f} MiB in {args.out}; "
        f"{total / 2**20:.1f} MiB with the checkout"
    )
    if total > LIMIT_BYTES:
        print(f"[gpu-carry] over the device tool's {LIMIT_BYTES / 2**20:.0f} MiB: carry less")
        return 1
    return 0


LIMIT_BYTES = 64 * 2**20  # what the device tool sends: the checkout and the carried paths


def checkout_bytes() -> int:
    """Size of what travels besides ``.carry``: tracked and untracked-not-ignored files."""
    done = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        cwd=REPO,
    )
    if done.returncode != 0:
        return 0
    names = [n for n in done.stdout.decode().split("\0") if n]
    return sum((REPO / n).stat().st_size for n in names if (REPO / n).is_file())


if __name__ == "__main__":
    raise SystemExit(main())
