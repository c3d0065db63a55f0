#!/usr/bin/env bash
# The cathrepo demo: edit the embedded model, gate, commit, verify, revert — with the real command line.
set -euo pipefail
exec python "$(dirname "$0")/demo.py" "$@"
