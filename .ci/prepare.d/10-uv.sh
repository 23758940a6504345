# shellcheck shell=bash
# uv runs everything else: the sync, the linters and the tests.
if ! command -v uv >/dev/null 2>&1; then
  echo "--- installing uv"
  python3 -m pip install --quiet uv
fi
