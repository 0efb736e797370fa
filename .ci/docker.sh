#!/usr/bin/env bash
# A private Docker engine for the deployment tests: `.ci/docker.sh [start]` starts it, `.ci/docker.sh stop`
# removes it again. Idempotent, every wait bounded.
#
# No Docker engine runs on the CI machine and no registry is reachable, so this script
#   1. installs Debian's docker.io, docker-compose and debootstrap;
#   2. starts dockerd inside its own network namespace (vitdist-docker) joined to the root namespace by
#      a veth pair with private addresses, and NO default route in the namespace: containers and image
#      builds cannot send a packet off the machine. Clients talk to the daemon over the unix socket
#      /run/vitdist-docker.sock only (the tests never dial a container address from the root namespace);
#   3. builds the Dockerfile's base image locally (debootstrap a minimal bookworm, copy this machine's
#      Node 20 and npm in: bookworm's own nodejs is 18), `docker import`s it and tags it
#      node:20-bookworm-slim, so `docker build --pull=false` never contacts a registry. The rootfs
#      tarball is cached under /var/cache/vit-dist, so a second run skips debootstrap.
#
# When the engine cannot be had, it prints "docker unavailable: REASON", writes the same line to
# /run/vitdist-docker.status (the container tests print it as their skip reason) and exits 0.
set -uo pipefail

NS=vitdist-docker
VETH_ROOT=vdocker0            # root-namespace end
VETH_NS=vdocker1              # namespace end
ADDR_ROOT=10.213.0.1/30
ADDR_NS=10.213.0.2/30
SOCK=/run/vitdist-docker.sock
STATUS=/run/vitdist-docker.status
EXEC_ROOT=/run/vitdist-docker
DATA_ROOT=/var/lib/vitdist-docker     # kept between runs: the image layer cache
LOG=/var/log/vitdist-dockerd.log
CACHE=/var/cache/vit-dist
BASE_TAG=node:20-bookworm-slim
DOCKER=(timeout 120 /usr/bin/docker --host "unix://$SOCK")

say() { echo "docker.sh: $*"; }

unavailable() {
  echo "docker unavailable: $*" | tee "$STATUS"
  exit 0
}

engine_up() { timeout 10 /usr/bin/docker --host "unix://$SOCK" info >/dev/null 2>&1; }

dockerd_pid() {
  local pid
  pid=$(cat "$EXEC_ROOT/dockerd.pid" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

install_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 apt-get update -qq && timeout 600 apt-get install -y -qq "${missing[@]}" >/dev/null
}

make_namespace() {
  [ -e "/run/netns/$NS" ] || ip netns add "$NS" || return 1
  if ! ip link show "$VETH_ROOT" >/dev/null 2>&1; then
    ip link add "$VETH_ROOT" type veth peer name "$VETH_NS" netns "$NS" || return 1
    ip addr add "$ADDR_ROOT" dev "$VETH_ROOT" || return 1
    ip -n "$NS" addr add "$ADDR_NS" dev "$VETH_NS" || return 1
  fi
  ip link set "$VETH_ROOT" up && ip -n "$NS" link set "$VETH_NS" up && ip -n "$NS" link set lo up
}

start_dockerd() {
  mkdir -p "$EXEC_ROOT" "$DATA_ROOT"
  rm -f "$SOCK"
  # nsenter, not `ip netns exec`: the latter remounts /sys and hides the cgroup hierarchy dockerd needs.
  # --dns 127.0.0.1: containers get no resolver that could lead anywhere; container names are resolved
  # by Docker's embedded DNS on user-defined networks.
  setsid nsenter --net="/run/netns/$NS" -- dockerd \
    --host "unix://$SOCK" --exec-root "$EXEC_ROOT" --data-root "$DATA_ROOT" \
    --pidfile "$EXEC_ROOT/dockerd.pid" --dns 127.0.0.1 \
    >"$LOG" 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    engine_up && return 0
    sleep 1
  done
  return 1
}

base_image() {
  if "${DOCKER[@]}" image inspect "$BASE_TAG" >/dev/null 2>&1; then
    say "base image $BASE_TAG present"
    return 0
  fi
  local node_version tarball rootfs npm_dir
  node_version=$(node --version) || return 1
  case "$node_version" in v20.*) ;; *) say "host node is $node_version, the image needs Node 20"; return 1 ;; esac
  tarball="$CACHE/rootfs-bookworm-node-$node_version.tar"
  if [ ! -s "$tarball" ]; then
    mkdir -p "$CACHE"
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    say "debootstrap bookworm into $rootfs (a few minutes, once)"
    timeout 900 debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1 \
      || { say "debootstrap failed, see $CACHE/debootstrap.log"; rm -rf "$rootfs"; return 1; }
    # The official image's layout: node and npm under /usr/local.
    npm_dir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
    install -m 0755 "$(readlink -f "$(command -v node)")" "$rootfs/usr/local/bin/node"
    mkdir -p "$rootfs/usr/local/lib/node_modules"
    cp -a "$npm_dir" "$rootfs/usr/local/lib/node_modules/npm"
    ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/local/bin/npm"
    ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/local/bin/npx"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
    rm -rf "$rootfs"
  fi
  say "importing $tarball as $BASE_TAG"
  timeout 300 /usr/bin/docker --host "unix://$SOCK" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["node"]' "$tarball" "$BASE_TAG" >/dev/null || return 1
  "${DOCKER[@]}" run --rm --network none "$BASE_TAG" node --version
}

start() {
  rm -f "$STATUS"
  [ "$(id -u)" = 0 ] || unavailable "needs root (network namespaces, dockerd)"
  install_packages || unavailable "could not install docker.io, docker-compose, debootstrap with apt-get"
  if engine_up; then
    say "engine already running at unix://$SOCK"
  else
    [ -n "$(dockerd_pid)" ] && { say "dockerd runs but does not answer; restarting it"; stop; }
    make_namespace || unavailable "could not create network namespace $NS with a veth pair"
    start_dockerd || unavailable "dockerd did not answer on $SOCK within 60 s: $(tail -n 3 "$LOG" | tr '\n' ' ')"
    say "dockerd $(dockerd --version | cut -d' ' -f3 | tr -d ,) running in netns $NS, socket unix://$SOCK, log $LOG"
  fi
  base_image || unavailable "could not build the local base image $BASE_TAG"
  echo "ok: export DOCKER_HOST=unix://$SOCK" | tee "$STATUS"
}

stop() {
  local pid
  if engine_up; then
    # Containers first, so no shim outlives the daemon.
    "${DOCKER[@]}" ps -aq | xargs -r timeout 120 /usr/bin/docker --host "unix://$SOCK" rm -f >/dev/null
  fi
  if pid=$(dockerd_pid); then
    kill -TERM "$pid"
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    say "stopped dockerd (pid $pid)"
  fi
  ip link show "$VETH_ROOT" >/dev/null 2>&1 && ip link del "$VETH_ROOT"
  [ -e "/run/netns/$NS" ] && ip netns del "$NS"
  rm -f "$SOCK" "$STATUS"
  say "namespace $NS and veth removed"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
