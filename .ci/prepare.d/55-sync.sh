# shellcheck shell=bash
# The workspace's virtual environment, exactly as locked. Scripts after this one may use
# `uv run`.
echo "--- syncing the workspace (locked)"
# With bytecode compiled once here, the suite's thousands of subprocesses never compile
# their imports again, even where PYTHONDONTWRITEBYTECODE is set.
uv sync --locked --compile-bytecode
