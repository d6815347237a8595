#!/usr/bin/env bash
# One-step set-up and run, for newcomers and CI:
#   ./dev.sh demo [ARGS]   create .venv and install gan2flow (first time only), then run `gan2flow demo`
#   ./dev.sh lint [ARGS]   same set-up, then `ruff check .` (rules in pyproject.toml; .ci/run runs it first)
#   ./dev.sh test [ARGS]   same set-up, then run the test suite (what .ci/run runs)
#   ./dev.sh gan2flow ...  same set-up, then any gan2flow command
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
stamp=.venv/.gan2flow-installed
if [ ! -x .venv/bin/python ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "dev.sh: setting up .venv (tensorflow, keras, tensorflow-probability; a few minutes the first time)" >&2
  "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[test,data]"
  touch "$stamp"
fi
command=${1:-demo}
shift || true
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
case "$command" in
  demo) exec .venv/bin/gan2flow demo "$@" ;;
  lint) exec .venv/bin/ruff check . "$@" ;;
  test) exec .venv/bin/python -m pytest "$@" ;;
  gan2flow) exec .venv/bin/gan2flow "$@" ;;
  *) echo "usage: ./dev.sh demo|lint|test|gan2flow [ARGS]" >&2; exit 2 ;;
esac
