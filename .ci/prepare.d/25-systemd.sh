# shellcheck shell=bash
# The bare-metal roles' systemd units are checked with systemd-analyze verify.
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "--- installing systemd (for systemd-analyze)"
  apt_install systemd
fi
