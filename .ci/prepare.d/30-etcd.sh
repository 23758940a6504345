# shellcheck shell=bash
# The datastore benchmark's harness is tested against a real etcd 3.4 cluster.
if ! command -v etcd >/dev/null 2>&1 && [ ! -x /usr/bin/etcd ]; then
  echo "--- installing etcd-server"
  apt_install etcd-server
fi
