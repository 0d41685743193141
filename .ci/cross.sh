#!/usr/bin/env bash
# Cross builds of weft for the boards its users run, on a Debian 12 x86-64
# machine without rustup's download server.
#
#   .ci/cross.sh TARGET                 install what TARGET needs
#   .ci/cross.sh TARGET cargo ARGS...   then run cargo for TARGET
#   .ci/cross.sh TARGET binfmt          then let the kernel run TARGET's
#                                       binaries through qemu-user
#
# TARGET is aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf or
# s390x-unknown-linux-gnu (big-endian, built and tested for correctness
# only). What it installs, from Debian's packages:
#
# - Debian's Rust (`rustc-web`, 1.96 on Debian 12, from bookworm-security)
#   and its standard library's source (`rust-web-src`). The standard
#   library for TARGET is built from that source (`-Zbuild-std`, allowed
#   on a stable compiler by RUSTC_BOOTSTRAP=1), rather than taken from
#   Debian's `libstd-rust-web-dev:<arch>`: the s390x one cannot be installed
#   beside the host's libraries (Debian's security suite carries no s390x,
#   so it stays at 1.85 and its dependencies' versions clash).
# - The cross C compiler (`gcc-<triple>`): the linker, ring's C and
#   assembly, and the target's C library under /usr/<triple>.
# - qemu-user-static from bookworm-backports (10.0): Debian 12's own 7.2
#   cannot translate some rtnetlink requests weft makes on a TAP node.
#
# - The target's C library as a foreign architecture (`libc6:arm64`,
#   `:armhf`, `:s390x`), where qemu-user finds the dynamic loader. With the
#   cross compiler's copy as qemu's prefix instead (`-L /usr/<triple>`),
#   every thread spawn of an aarch64 binary hangs.
#
# cargo runs with Debian's rustc and its own target directory
# (target/cross), so the host build's cache is untouched; test binaries and
# `cargo run` go through qemu-user (CARGO_TARGET_<TRIPLE>_RUNNER).
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:?usage: .ci/cross.sh TARGET [cargo ARGS...]}
shift
case "$target" in
aarch64-unknown-linux-gnu) gnu=aarch64-linux-gnu qemu=aarch64 arch=arm64 ;;
armv7-unknown-linux-gnueabihf) gnu=arm-linux-gnueabihf qemu=arm arch=armhf ;;
s390x-unknown-linux-gnu) gnu=s390x-linux-gnu qemu=s390x arch=s390x ;;
*)
    echo "cross.sh: unsupported target $target" >&2
    exit 2
    ;;
esac

# apt-get update fails when any one index does not download, e.g. while a
# mirror syncs (a Packages.xz of the wrong size), though the packages wanted
# may all be there. Try three times, then go on with the indexes that did
# download: apt-get install is what must succeed.
apt_update() {
    local try
    for try in 1 2 3; do
        apt-get update -qq && return 0
        echo "apt-get update failed (try $try of 3)" >&2
        sleep 10
    done
    echo "apt-get update: some indexes did not download; going on with those that did" >&2
}
install() {
    local need=()
    command -v "$gnu-gcc" >/dev/null || need+=("gcc-$gnu")
    [ -x /usr/bin/rustc ] || need+=(rustc-web)
    [ -d /usr/lib/rustlib/src/rust/library ] || need+=(rust-web-src)
    if ! dpkg -s "libc6:$arch" >/dev/null 2>&1; then
        dpkg --add-architecture "$arch"
        need+=("libc6:$arch")
    fi
    local backports=()
    if ! qemu-"$qemu"-static --version 2>/dev/null | grep -q 'version \([89]\|[1-9][0-9]\)\.'; then
        backports+=(qemu-user-static)
    fi
    [ ${#need[@]} -eq 0 ] && [ ${#backports[@]} -eq 0 ] && return
    export DEBIAN_FRONTEND=noninteractive
    if [ ${#backports[@]} -gt 0 ] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d; then
        cat >/etc/apt/sources.list.d/weft-backports.sources <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    apt_update
    [ ${#need[@]} -eq 0 ] || apt-get install -y -qq "${need[@]}" >/dev/null
    [ ${#backports[@]} -eq 0 ] || apt-get install -y -qq -t bookworm-backports "${backports[@]}" >/dev/null
}
install >&2

[ $# -eq 0 ] && exit 0
if [ "$1" = binfmt ]; then
    # qemu's own registration (binfmt_misc, flags OPF: the interpreter is
    # opened now, so it works inside any namespace or chroot later).
    [ -e /proc/sys/fs/binfmt_misc/register ] ||
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    [ -e "/proc/sys/fs/binfmt_misc/qemu-$qemu" ] ||
        cat "/usr/lib/binfmt.d/qemu-$qemu.conf" >/proc/sys/fs/binfmt_misc/register
    exit 0
fi
[ "$1" = cargo ] || {
    echo "cross.sh: expected 'cargo ARGS...' after the target, got $1" >&2
    exit 2
}
shift

triple=$(echo "$target" | tr 'a-z-' 'A-Z_')
export RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
export "CARGO_TARGET_${triple}_LINKER=$gnu-gcc"
export "CARGO_TARGET_${triple}_RUNNER=qemu-$qemu-static"
export "CC_${target//-/_}=$gnu-gcc" "AR_${target//-/_}=$gnu-ar"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/cross}
# The subcommand first, then what every cross build needs.
sub=$1
shift
exec cargo "$sub" -Zbuild-std=std,panic_abort,test --target "$target" "$@"
