#!/usr/bin/env bash
# Build the Debian package: ramboot, its static stage-one agent, man pages and
# shell completions generated from the CLI, the image recipes and example
# profiles, the systemd unit and the default configuration.
# Usage: packaging/build-deb.sh   → target/debian/ramboot_<version>_amd64.deb
# Needs cargo-deb (cargo install cargo-deb --locked).
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/packaging
rm -rf "$out"
mkdir -p "$out/man" "$out/completions"
echo "==> ramboot (release)"
cargo build --release --locked -p ramboot --bin ramboot
echo "==> ramboot-agent (static, for stage one)"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked -p ramboot-agent \
    --target x86_64-unknown-linux-gnu --target-dir target/agent
cp target/agent/x86_64-unknown-linux-gnu/release/ramboot-agent "$out/ramboot-agent"
echo "==> man pages and completions"
target/release/ramboot man "$out/man" 2>/dev/null
gzip -9n "$out"/man/*.1
target/release/ramboot completions bash >"$out/completions/ramboot"
target/release/ramboot completions zsh >"$out/completions/_ramboot"
target/release/ramboot completions fish >"$out/completions/ramboot.fish"
echo "==> package"
cargo deb --no-build --locked -p ramboot "$@"
