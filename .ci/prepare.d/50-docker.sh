# shellcheck shell=bash
# Docker for the container tests (tests/integration) and the image builds: the daemon
# bound to loopback, and the settings testcontainers needs on a machine that can pull
# nothing. In CI a missing daemon or image fails those tests instead of skipping them.
#
# dockerd is left running when the run ends: stopping it would leave its bridge, its
# iptables chains and ip_forward behind (../shared/ENVIRONMENT.md), and a second run
# finds it answering and starts nothing.
_docker_missing=()
{ command -v docker && command -v dockerd; } >/dev/null 2>&1 || _docker_missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] \
  || _docker_missing+=(debootstrap)
command -v docker-compose >/dev/null 2>&1 || _docker_missing+=(docker-compose)
if [ "${#_docker_missing[@]}" -gt 0 ]; then
  echo "--- installing ${_docker_missing[*]}"
  apt_install "${_docker_missing[@]}"
fi
unset _docker_missing

if ! docker info >/dev/null 2>&1; then
  _dockerd_log="$CI_LOG_DIR/dockerd.log"
  if pgrep -x dockerd >/dev/null 2>&1; then
    echo "--- waiting for the running dockerd to answer"
  else
    echo "--- starting dockerd bound to 127.0.0.1 (log: $_dockerd_log)"
    # Its own session: it outlives this run and no signal to the run's group reaches it.
    setsid dockerd --ip 127.0.0.1 >"$_dockerd_log" 2>&1 </dev/null &
  fi
  _docker_deadline=$((SECONDS + 60))
  until docker info >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$_docker_deadline" ]; then
      echo "dockerd did not answer \`docker info\` within 60 s; the end of $_dockerd_log:" >&2
      tail -n 30 "$_dockerd_log" >&2 || true
      return 1
    fi
    sleep 1
  done
  unset _dockerd_log _docker_deadline
fi
echo "--- docker: server $(docker version --format '{{.Server.Version}}')"

export YARDARM_REQUIRE_DOCKER=1
# No registry: the ryuk reaper image cannot be pulled (every test fixture removes its
# own containers). Containers are reached on their ports published on 127.0.0.1.
export TESTCONTAINERS_RYUK_DISABLED=true
export TESTCONTAINERS_CONNECTION_MODE=docker_host
export TC_HOST=127.0.0.1
