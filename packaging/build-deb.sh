#!/usr/bin/env bash
# Build the Debian package: ramboot, its static stage-one agent, man pages and
# shell completions generated from the CLI, the image recipes and example
# profiles, the systemd unit and the default configuration.
# Usage: packaging/build-deb.sh   → target/debian/ramboot_<version>_amd64.deb
# Needs cargo-deb (cargo install cargo-deb --locked).
# RAMBOOT_DEB_PROFILE=dev packages the debug build instead of the release one:
# tests/package.rs does, to reuse the test run's build (the packaging is the same).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${RAMBOOT_DEB_PROFILE:-release}
case $profile in
    dev) bin_dir=target/debug ;;
    *) bin_dir=target/$profile ;;
esac
out=target/packaging
rm -rf "$out"
mkdir -p "$out/man" "$out/completions"
echo "==> ramboot ($profile)"
cargo build --profile "$profile" --locked -p ramboot --bin ramboot
echo "==> ramboot-agent (static, for stage one)"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked -p ramboot-agent \
    --target x86_64-unknown-linux-gnu --target-dir target/agent
cp target/agent/x86_64-unknown-linux-gnu/release/ramboot-agent "$out/ramboot-agent"
echo "==> man pages and completions"
"$bin_dir/ramboot" man "$out/man" 2>/dev/null
gzip -9n "$out"/man/*.1
"$bin_dir/ramboot" completions bash >"$out/completions/ramboot"
"$bin_dir/ramboot" completions zsh >"$out/completions/_ramboot"
"$bin_dir/ramboot" completions fish >"$out/completions/ramboot.fish"
echo "==> package"
# cargo-deb reads the binary from the profile's directory (assets name target/release).
cargo deb --no-build --locked -p ramboot --profile "$profile" "$@"
