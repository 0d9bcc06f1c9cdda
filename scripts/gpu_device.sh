#!/usr/bin/env bash
# One command for a GPU machine that reaches no package index (e.g. the device tool's H200): run
# from the checkout's root with the image's python3, the project from src/, and the wheels that
# `make gpu-carry` put in .carry/ (scripts/gpu_carry.py says what and why).
#
#   bash scripts/gpu_device.sh [PARTS]      PARTS: comma list of bench,flex,levers,test (default: all)
#
# Parts, each under its own time limit (seconds; environment overrides):
#   preflight  always: versions, the GPU, the attention Gemma-2 gets -> env.json; stops without CUDA
#   bench      BENCH_S=260   scripts/bench_gpu.py --profile, the default grid -> gpu.json
#   flex       FLEX_S=90     scripts/bench_flex_shapes.py: compiles per shape? -> flex_shapes.json
#   levers     LEVERS_S=120  scripts/bench_gpu.py --preset levers --profile  -> levers.json
#   test       TEST_S=90     pytest -m gpu                                   -> test_gpu.log
# Results in $OUT (the device tool's folder; default bench/device): the files above, the point
# logs as logs.tgz, and this script's own output as device.log. The default parts fit in
# ~9.5 minutes: call it with a 600 s limit. BENCH_GPU_ARGS adds options to both bench parts;
# DRY_RUN=1 runs the same on a CPU at tiny shapes (its test: tests/test_gpu_device.py).
set -u -o pipefail
OUT=${OUT:-bench/device}
PARTS=",${1:-bench,flex,levers,test},"
BENCH_S=${BENCH_S:-260}
FLEX_S=${FLEX_S:-90}
LEVERS_S=${LEVERS_S:-120}
TEST_S=${TEST_S:-90}
BENCH_GPU_ARGS=${BENCH_GPU_ARGS:-}
DRY_RUN=${DRY_RUN:-0}
[ "$DRY_RUN" = 1 ] && BENCH_GPU_ARGS="--dry-run $BENCH_GPU_ARGS"
export DRY_RUN
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu-device.XXXXXX)
log() { echo "[gpu-device] $(date -u +%H:%M:%S) $*"; }

main() {
    if compgen -G ".carry/wheels/*.whl" > /dev/null; then
        log "installing $(ls .carry/wheels/*.whl | wc -l) carried wheels"
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$WORK/site" .carry/wheels/*.whl || { log "wheel install failed"; exit 2; }
        export PYTHONPATH="$WORK/site"
    else
        log "no .carry/wheels (make gpu-carry): using what the image has"
    fi
    export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
    LENGTHS=()
    [ -f .carry/lengths.json ] && LENGTHS=(--lengths .carry/lengths.json)

    log "preflight"
    timeout 120 python3 - "$OUT/env.json" <<'EOF' || { log "preflight failed: no CUDA or a missing package"; exit 3; }
import json, os, sys
from importlib import metadata

import torch

from arena_distill.benchmark import machine_info
from arena_distill.models.factory import default_attention, installed_kernels

names = ["torch", "transformers", "peft", "accelerate", "hydra-core", "omegaconf", "triton",
         "liger-kernel", "flash-attn", "bitsandbytes", "gptqmodel", "optimum"]
versions = {}
for name in names:
    try:
        versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        versions[name] = None
cuda = torch.cuda.is_available()
doc = {
    "python": sys.version.split()[0],
    "versions": versions,
    "cuda": cuda,
    "machine": machine_info("cuda" if cuda else "cpu"),
    "installed_kernels": sorted(installed_kernels()),
    "gemma2_attention": default_attention("gemma2", "cuda" if cuda else "cpu"),
}
if cuda:
    free, total = torch.cuda.mem_get_info()
    doc.update(free_gb=round(free / 2**30, 1), total_gb=round(total / 2**30, 1))
open(sys.argv[1], "w").write(json.dumps(doc, indent=2, default=str) + "\n")
print(json.dumps(doc, default=str))
sys.exit(0 if cuda or os.environ.get("DRY_RUN") == "1" else 1)
EOF

    status=0
    if [[ $PARTS == *,bench,* ]]; then
        log "bench: the default grid, budget ${BENCH_S} s"
        timeout $((BENCH_S + 60)) python3 scripts/bench_gpu.py --budget-s "$BENCH_S" --profile \
            --out "$WORK/gpu.json" "${LENGTHS[@]}" $BENCH_GPU_ARGS || status=1
        cp "$WORK/gpu.json" "$OUT/" 2> /dev/null
    fi
    if [[ $PARTS == *,flex,* ]]; then
        log "flex: does flex_attention compile per batch shape? limit ${FLEX_S} s"
        device=cuda
        [ "$DRY_RUN" = 1 ] && device=cpu
        timeout "$FLEX_S" python3 scripts/bench_flex_shapes.py --device "$device" \
            --out "$OUT/flex_shapes.json" | tail -n 1 || status=1
    fi
    if [[ $PARTS == *,levers,* ]]; then
        log "levers: Gemma-2-9B training with each speed flag, budget ${LEVERS_S} s"
        timeout $((LEVERS_S + 60)) python3 scripts/bench_gpu.py --preset levers --profile \
            --budget-s "$LEVERS_S" --out "$WORK/levers.json" $BENCH_GPU_ARGS || status=1
        cp "$WORK/levers.json" "$OUT/" 2> /dev/null
    fi
    if [[ $PARTS == *,test,* ]]; then
        log "test: pytest -m gpu, limit ${TEST_S} s"
        timeout "$TEST_S" python3 -m pytest -m gpu -q -p no:cacheprovider > "$OUT/test_gpu.log" 2>&1 || status=1
        tail -n 15 "$OUT/test_gpu.log"
    fi
    results=()
    for f in gpu.json levers.json; do [ -f "$OUT/$f" ] && results+=("$OUT/$f"); done
    if [ ${#results[@]} -gt 0 ]; then
        python3 scripts/bench_gpu.py --table "${results[@]}" || status=1
    fi
    if compgen -G "$WORK/*_logs" > /dev/null; then
        tar czf "$OUT/logs.tgz" -C "$WORK" $(cd "$WORK" && ls -d ./*_logs)
    fi
    log "done (status $status): $(cd "$OUT" && ls | tr '\n' ' ')"
    exit $status
}

# the whole output also in device.log, complete when this script returns
main 2>&1 | tee "$OUT/device.log"
exit "${PIPESTATUS[0]}"
