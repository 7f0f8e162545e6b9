#!/usr/bin/env bash
# The single entry for people and CI: set up this machine (idempotent), then run the demo or the tests.
#   bash scripts/dev.sh demo    set up, then show what virtkit can do here
#   bash scripts/dev.sh test    set up, then ruff, mypy and the whole pytest suite
#   bash scripts/dev.sh setup   set up only
#   bash scripts/dev.sh bench   set up, add what the benchmarks compare against (podman), run them
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
    python3 python3-venv python3-dev gcc
    qemu-system-x86 qemu-system-arm qemu-utils ovmf
    runc crun conmon
    busybox-static debootstrap cpio zstd xz-utils
    iproute2 nftables dnsmasq-base
    skopeo umoci
    procps util-linux kmod e2fsprogs openssl openssh-client
    xorriso
    fdisk extlinux syslinux-common isolinux dosfstools mtools systemd-boot-efi  # firmware boot media (tests)
)
BENCH_PACKAGES=(podman)  # only what benchmarks/ measures virtkit against
VENV=.venv

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "virtkit set-up must run as root (it installs Debian packages and uses KVM, netns, cgroups)" >&2
        exit 2
    fi
}

install_debian_packages() {
    local missing=()
    for p in "${DEBIAN_PACKAGES[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "==> installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

make_venv() {
    # Debian's own python3: what a fresh Debian 12 machine has.
    if [ ! -x "$VENV/bin/python" ]; then
        echo "==> creating $VENV"
        /usr/bin/python3 -m venv "$VENV"
    fi
    local stamp="$VENV/.installed-compat"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "==> installing virtkit and its dev tools into $VENV"
        "$VENV/bin/pip" install -q --upgrade pip
        # compat: a plain path in a .pth file. The default editable finder imports pathlib and
        # friends at every interpreter start (~20 ms), which `virtkit run` cannot afford.
        "$VENV/bin/pip" install -q -e '.[dev]' --config-settings editable_mode=compat
        touch "$stamp"
    fi
}

make_qemu_user() {
    # QEMU runs as this unprivileged system user (in group kvm for /dev/kvm), as Debian's libvirt
    # runs it as libvirt-qemu; virtkit/drivers/qemu/runas.py has the same command as a hint.
    getent group kvm >/dev/null || groupadd --system kvm
    if ! getent passwd virtkit-qemu >/dev/null; then
        echo "==> creating the system user virtkit-qemu"
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
            --groups kvm virtkit-qemu
    fi
    # Members of this group may use the API's Unix socket (`virtkit serve`), as incus-admin does.
    getent group virtkit >/dev/null || groupadd --system virtkit
}

setup() {
    need_root
    install_debian_packages
    make_qemu_user
    make_venv
}

demo() {
    setup
    exec bash scripts/demo.sh
}

bench() {
    setup
    install_debian_packages "${BENCH_PACKAGES[@]}"
    local failed=0
    for script in benchmarks/*.py; do
        echo "==> $script"
        "$VENV/bin/python" "$script" || failed=1
    done
    return "$failed"
}

run_tests() {
    setup
    echo "==> ruff"
    "$VENV/bin/ruff" check virtkit tests benchmarks examples
    echo "==> mypy --strict"
    "$VENV/bin/mypy"
    echo "==> pytest"
    # three workers on two cores, whole files each (fixtures are per module): the workers spend much
    # of their time waiting on guests (TCG boots, agents), and on 2026-12-07 a clean clone took
    # 19m53 with two workers and 17m40 with three; a short basetemp keeps unix socket paths under
    # their 107-byte limit (xdist puts each worker in basetemp/popen-gwN); the slowest tests are
    # listed at the end, so a run that nears the 25-minute budget says where its time went
    "$VENV/bin/pytest" -q -n 3 --dist loadfile --basetemp=/tmp/virtkit-tests --durations=25 "$@"
}

case "${1:-}" in
    setup) setup ;;
    demo) demo ;;
    test) shift; run_tests "$@" ;;
    bench) bench ;;
    *) echo "usage: bash scripts/dev.sh demo|test|setup|bench" >&2; exit 2 ;;
esac
