#!/usr/bin/env bash
# Installs NVIDIA's aiperf (pinned) and the GGUF tokenizer exporter's deps (transformers, gguf)
# into a virtual environment OUTSIDE the repository. Idempotent: when the venv already has the
# pinned versions it only prints its path.
#
# Usage: bench/aiperf/setup.sh
# Env:   TANDEM_HOME     default ~/.cache/tandem
#        AIPERF_VENV     default $TANDEM_HOME/aiperf-venv
#        AIPERF_VERSION  default 0.13.0
#        GGUF_VERSION    default 0.19.0 (the `gguf` package transformers reads GGUF files with)
#        PYTHON          default python3 (aiperf needs 3.11..3.13)
# Prints, last:  AIPERF_VENV=<path>  and  AIPERF=<path to the aiperf executable>
set -euo pipefail

TANDEM_HOME="${TANDEM_HOME:-$HOME/.cache/tandem}"
VENV="${AIPERF_VENV:-$TANDEM_HOME/aiperf-venv}"
AIPERF_VERSION="${AIPERF_VERSION:-0.13.0}"
GGUF_VERSION="${GGUF_VERSION:-0.19.0}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.tandem-aiperf"
CONFIG_ID="aiperf==$AIPERF_VERSION gguf==$GGUF_VERSION"

print_paths() {
  echo "AIPERF_VENV=$VENV"
  echo "AIPERF=$VENV/bin/aiperf"
}

if [[ -f "$STAMP" && -x "$VENV/bin/aiperf" && "$(head -1 "$STAMP")" == "$CONFIG_ID" ]]; then
  echo "aiperf already installed ($CONFIG_ID) in $VENV" >&2
  print_paths
  exit 0
fi

"$PYTHON" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 14) else 1)' || {
  echo "setup.sh: aiperf $AIPERF_VERSION needs Python 3.11-3.13; set PYTHON=" >&2; exit 1; }

if [[ ! -x "$VENV/bin/python" ]]; then
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV" || {
    echo "setup.sh: 'python3 -m venv' failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
# transformers comes in as an aiperf dependency (its tokenizer loading); gguf lets
# transformers read the tokenizer out of a GGUF file (export_tokenizer.py). No torch needed.
"$VENV/bin/python" -m pip install --quiet "aiperf==$AIPERF_VERSION" "gguf==$GGUF_VERSION" >&2

"$VENV/bin/aiperf" --version >/dev/null 2>&1 || "$VENV/bin/aiperf" --help >/dev/null || {
  echo "setup.sh: aiperf installed but does not run" >&2; exit 1; }

printf '%s\ninstalled %s\n' "$CONFIG_ID" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$STAMP"
print_paths
