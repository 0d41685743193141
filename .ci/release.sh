#!/usr/bin/env bash
# Release artifacts: target/dist/weft-<version>-<target>.tar.gz for every
# supported target, each with its SHA-256 beside it (<file>.sha256, as
# `sha256sum -c` reads it).
#
#   .ci/release.sh              x86-64, arm64 and armv7
#   .ci/release.sh TARGET...    only these
#
# Each holds the daemon built as deploy/Dockerfile builds it (release, with
# etcd, without `weft demo` and its test bench), stripped, with README.md,
# docs/ and deploy/. The host's target builds with this machine's cargo; the
# others through .ci/cross.sh (Debian's cross compilers, the standard
# library built from source). The archives are reproducible: sorted, owned
# by root, dated at the last commit, gzip without a timestamp.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
host=$(rustc -vV | sed -n 's/^host: //p')
[ $# -gt 0 ] || set -- x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
build=(build --release -p weft --no-default-features --features etcd)
mkdir -p target/dist
for t in "$@"; do
    case "$t" in
    "$host")
        cargo "${build[@]}"
        bin=target/release/weft strip=strip
        ;;
    aarch64-unknown-linux-gnu | armv7-unknown-linux-gnueabihf | s390x-unknown-linux-gnu)
        .ci/cross.sh "$t" cargo "${build[@]}"
        bin=target/cross/$t/release/weft
        case "$t" in
        aarch64*) strip=aarch64-linux-gnu-strip ;;
        armv7*) strip=arm-linux-gnueabihf-strip ;;
        s390x*) strip=s390x-linux-gnu-strip ;;
        esac
        ;;
    *)
        echo "release.sh: unsupported target $t" >&2
        exit 2
        ;;
    esac
    name=weft-$version-$t
    stage=$(mktemp -d)
    mkdir "$stage/$name"
    "$strip" -o "$stage/$name/weft" "$bin"
    cp README.md "$stage/$name/"
    cp -r deploy docs "$stage/$name/"
    tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner \
        --mtime="@$(git log -1 --format=%ct 2>/dev/null || echo 0)" -cf - "$name" |
        gzip -n -9 >"target/dist/$name.tar.gz"
    (cd target/dist && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
    rm -rf "$stage"
    echo "target/dist/$name.tar.gz ($(du -h "target/dist/$name.tar.gz" | cut -f1))"
done
