#!/usr/bin/env bash
# Build the documentation with every notebook executed; any warning fails the build.
# Usage: bash docs/build.sh [OUTPUT_DIR]   (default docs/_build/html)
# Run it inside the environment the package is installed in; it adds the docs extra.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install ".[docs]"
start=$(date +%s)
python -m sphinx -W --keep-going -b html docs "${1:-docs/_build/html}"
echo "docs built in $(( $(date +%s) - start )) s"
