#!/usr/bin/env bash
# Set up the environment (with test deps) and run the test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
export PATH="$(cd "${VENV:-.venv}" && pwd)/bin:$PATH" DVC_NO_ANALYTICS=1
exec python -m pytest "$@"
