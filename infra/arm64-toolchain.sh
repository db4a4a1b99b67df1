#!/usr/bin/env bash
# Installs what `make package` needs to build arm64 on an x86_64 Debian
# machine whose rustup cannot download the aarch64 target: Debian's Rust
# (rustc-web, with an arm64 standard library) linked as rustup toolchain
# `deb`, and qemu-user to run the result. Idempotent; needs root (apt).
set -euo pipefail

packages=(rustc-web cargo-web libstd-rust-web-dev:arm64 qemu-user-static)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "arm64-toolchain: installing ${missing[*]}" >&2
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
rustup toolchain list | grep -q '^deb' || rustup toolchain link deb /usr
