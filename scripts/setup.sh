#!/usr/bin/env bash
# Create .venv and install pathstrat into it. Idempotent: a second run only checks.
#   bash scripts/setup.sh          # the package and its runtime dependencies (demo)
#   bash scripts/setup.sh --test   # plus test tools: [dev] extra, Debian chromium, slurm-wlm, munge
# PYTHON picks the interpreter (default python3, must be 3.11+).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
# torch/torchvision: the versions served from this machine's disk; pip picks them up through
# the default constraints here, and the newest release elsewhere.
if [[ $want_test == 1 ]]; then
  .venv/bin/python -m pip install -q -e ".[dev]"
else
  .venv/bin/python -m pip install -q -e .
fi

if [[ $want_test == 1 ]]; then
  # System packages for the browser test of the report and the Slurm executor test.
  need=()
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v slurmctld >/dev/null 2>&1 || need+=(slurm-wlm)
  command -v munged >/dev/null 2>&1 || need+=(munge)
  if ((${#need[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
      echo "setup: installing Debian packages: ${need[*]}" >&2
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq >/dev/null
      apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
      echo "setup: optional system packages missing (${need[*]}); their tests will skip" >&2
    fi
  fi
fi
echo "setup: ready ($(.venv/bin/python -c 'import pathstrat,sys; print("pathstrat", pathstrat.__version__, "python", sys.version.split()[0])'))" >&2
