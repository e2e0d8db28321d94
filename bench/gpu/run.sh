#!/usr/bin/env bash
# Everything issue 7 measures on one GPU, in parts. Run from the repo root on the GPU machine,
# with .whl/ carried (bench/gpu/fetch_wheels.sh). Each part's runs have their own time limits,
# which add up to what the comment says, so each call stays inside the device's 10 minutes:
#
#   bash bench/gpu/run.sh tests packing  # versions, GPU, tests/gpu; bench/packing.py (≤ 8.5 min)
#   bash bench/gpu/run.sh main           # 0.5B × 128: fast vs TRL, hf engine, packed rows (≤ 8 min)
#   bash bench/gpu/run.sh scale          # 0.5B × 512, 1.5B and 3B, each vs TRL         (≤ 9 min)
#   bash bench/gpu/run.sh smoke          # the scripts on tiny shapes, on any machine    (≤ 7 min)
#   bash bench/gpu/run.sh episodes       # tool-calling episodes, hf vs fast             (≤ 5 min)
#   bash bench/gpu/run.sh vllm           # vLLM's GPU test; the quickstart's steps on hf,
#                                        # fast and vllm (≤ 6 min). Needs vLLM on the machine:
#                                        # the GPU image lacks it, and its CUDA wheel is far
#                                        # larger than a device call carries
#
# Each grpo_step run adds its entry to bench/results/grpo_step_<gpu>.json (bench/results travels
# with the tree, so entries from an earlier call are kept once committed); the log and the result
# files are copied to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
if [ $# -eq 0 ]; then
    echo "usage: bash bench/gpu/run.sh PART... (tests, packing, main, scale, smoke, episodes, vllm)"
    exit 2
fi
out="${OUT:-/tmp/reasonrl-gpu}"
mkdir -p "$out"

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=python3

preflight() {
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
    $py - <<'PY'
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for name in ["transformers", "trl", "datasets", "peft", "accelerate", "huggingface-hub",
             "tokenizers", "safetensors", "pydantic", "pyarrow", "fsspec", "numpy"]:
    try:
        print(f"{name:16} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name:16} MISSING")
import reasonrl.rollout.fast, reasonrl.train.rl  # noqa: F401  (fails here, not mid-bench)
print("reasonrl imports: ok")
PY
}

# run SECONDS CMD...: one step of a part, stopped at its own limit so later steps still run.
run() {
    local limit="$1"; shift
    echo; echo "=== $* (limit ${limit}s) ==="
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    echo "=== rc=$? after $((SECONDS - t0))s ==="
}

step=($py bench/grpo_step.py)
for part in "$@"; do
    case "$part" in
    tests)
        preflight
        run 240 $py -m pytest -q -rs -p no:cacheprovider tests/gpu
        ;;
    packing)
        run 90 $py bench/packing.py --device cuda --shape 0.5b --attn sdpa --completions 32 \
            --prompt-tokens 64 --new-tokens 256 --pack 512 1024 4096
        run 150 $py bench/packing.py --device cuda --shape 0.5b --attn flex_attention \
            --completions 32 --prompt-tokens 64 --new-tokens 256 --pack 4096 16384
        ;;
    main)
        run 240 "${step[@]}" --shape 0.5b --completions 128 --engine fast --peer trl
        run 120 "${step[@]}" --shape 0.5b --completions 128 --engine hf --peer none
        run 120 "${step[@]}" --shape 0.5b --completions 128 --engine fast --peer none \
            --pack-tokens 1024
        ;;
    scale)
        run 200 "${step[@]}" --shape 0.5b --completions 512 --engine fast --peer trl --steps 2
        run 150 "${step[@]}" --shape 1.5b --completions 128 --engine fast --peer trl --steps 2
        run 180 "${step[@]}" --shape 3b --completions 128 --engine fast --peer trl --steps 2
        ;;
    smoke)
        preflight
        run 300 "${step[@]}" --tiny --engine fast --peer trl --out "$out/grpo_step_smoke.json"
        run 120 $py bench/packing.py --shape tiny --completions 8 --prompt-tokens 16 --new-tokens 16 \
            --pack 64 256 --repeats 2 \
            --out "$out/packing_smoke.json"
        ;;
    episodes)
        run 120 $py bench/episodes.py --device cuda --group 8
        run 180 $py bench/episodes.py --device cuda --group 64
        ;;
    vllm)
        run 120 $py -m pytest -q -rs -p no:cacheprovider tests/gpu/test_vllm_gpu.py
        run 240 $py bench/engines.py --steps 20 --no-eval
        ;;
    *)
        echo "unknown part: $part (tests, packing, main, scale, smoke, episodes, vllm)"; exit 2
        ;;
    esac
done 2>&1 | tee -a "$out/gpu_$(IFS=_; echo "$*").log"
cp bench/results/*.json "$out"/ 2>/dev/null
exit 0
