#!/usr/bin/env bash
# Builds the release archive for FTP-only shared hosting: static x86-64 executables
# (musl, no shared libraries, symbols stripped, so they run whatever the host's glibc),
# already named as the shipped .htaccess expects, with the .htaccess files, the example
# site, the var/ skeleton with the example config, the FTP deploy script and the docs.
# Writes
#   dist/formwarden-<version>-x86_64-linux-musl-redis.tar.gz  and its .sha256
#     (the same with the Redis store compiled in, for several web nodes)
#   dist/formwarden-<version>-x86_64-linux-musl.tar.gz  and its .sha256
#     (the default, printed last)
# Installs the Rust target and musl-tools (ring's C code needs x86_64-linux-musl-gcc) when
# they are missing. For aarch64 hosts see docs/OPERATIONS.md ("Building").
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
if ! command -v x86_64-linux-musl-gcc >/dev/null; then
  apt-get update -qq && apt-get install -y -qq musl-tools >/dev/null
fi
# archive FEATURES SUFFIX: builds and packs one variant.
archive() {
  local features=$1 suffix=$2
  # Symbols are stripped, and the whole program is optimized at once (fat LTO, one codegen
  # unit, optimized for size), for the archive only: smaller uploads, same code paths.
  CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_PROFILE_RELEASE_LTO=fat \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 CARGO_PROFILE_RELEASE_OPT_LEVEL=s \
    cargo build --release --locked --target "$target" --bins --target-dir "target/musl$suffix" \
    ${features:+--features "$features"}
  bin="target/musl$suffix/$target/release"
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
  name="formwarden-$version-x86_64-linux-musl$suffix"
  stage="dist/$name"
  rm -rf "$stage" "dist/$name.tar.gz" "dist/$name.tar.gz.sha256"
  mkdir -p "$stage/public_html/cgi-bin" "$stage/bin" "$stage/docs"
  for p in captcha contact tokens; do
    install -m 755 "$bin/$p" "$stage/public_html/cgi-bin/$p.cgi"
  done
  # The operator's command lines (cron: spool retry; tokens rotate …), outside the web root.
  install -m 755 "$bin/spool" "$stage/bin/spool"
  install -m 755 "$bin/tokens" "$stage/bin/tokens"
  # Their guard where bin/ has to live inside the web root (deploy.sh --web-root .).
  install -m 644 deploy/apache/bin.htaccess "$stage/bin/.htaccess"
  install -m 644 deploy/apache/.htaccess "$stage/public_html/cgi-bin/.htaccess"
  cp -R deploy/site/. "$stage/public_html/"
  # The example pages call the executables by the .cgi names the .htaccess runs.
  find "$stage/public_html" -name '*.html' -exec \
    sed -i -E 's#/cgi-bin/(contact|captcha|tokens)([?"])#/cgi-bin/\1.cgi\2#g' {} +
  # The runtime tree: skeleton, example config, and the guard for a var/ inside a web root.
  for d in config lock tmp/captcha tmp/ratelimit state/tokens spool/new spool/failed spool/sent spool/quarantine; do
    mkdir -p "$stage/var/$d"
  done
  install -m 644 var/config/config.example.toml "$stage/var/config/config.example.toml"
  install -m 644 deploy/apache/var.htaccess "$stage/var/.htaccess"
  install -m 644 README.md "$stage/README.md"
  # The FTP/FTPS upload, run from the unpacked folder (docs/INSTALL.md).
  install -m 755 deploy/ftp/deploy.sh "$stage/deploy.sh"
  install -m 644 docs/*.md "$stage/docs/"
  tar -czf "dist/$name.tar.gz" -C dist "$name"
  (cd dist && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")
}
archive redis -redis >/dev/null
name=""
archive "" ""
echo "dist/$name.tar.gz"
