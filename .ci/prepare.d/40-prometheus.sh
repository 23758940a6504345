# shellcheck shell=bash
# The stack's own Prometheus (yardarm up runs it when the binary is on PATH) and promtool,
# for the rule tests and the live checks of every dashboard query; required in CI.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  echo "--- installing prometheus"
  apt_install prometheus
fi
export YARDARM_REQUIRE_PROMETHEUS="${YARDARM_REQUIRE_PROMETHEUS:-1}"
