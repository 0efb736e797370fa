#!/usr/bin/env bash
# Stages what bench/gpu-check.sh needs on a GPU machine that has no Node, no npm and no network
# into DEST/.gpu (and the Vulkan loader's packages into DEST/.gl), from this checkout:
#   .gpu/bench/gpu-check.sh   the check itself
#   .gpu/node.tar.xz          this machine's Node (x86-64, stripped), node/bin/node
#   .gpu/app.tar.xz           app/: bin, src, recipes, bench, package.json and tsconfig.json as
#                             committed at HEAD (PACK_WORKTREE=1: as in the working tree), and this
#                             checkout's production node_modules, pruned to Linux x86-64 and to what
#                             runs (no source maps, type declarations or browser bundles)
#   .gpu/commit               the commit measured
#   .gl/*.deb                 libvulkan1 and the GL loaders, unpacked over / on the GPU machine
# and prints the size of everything that travels (DEST's tracked and unignored files, .gpu, .gl):
# the device tool's limit is 64 MiB.
#
#   bash bench/gpu/pack.sh [DEST]        # DEST: default /work/main (the checkout the device tool sends)
#
# The device command is then (carry [".gpu", ".gl"]):
#   for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; bash .gpu/bench/gpu-check.sh
# and `bash DEST/.gpu/bench/gpu-check.sh --cpu-test` checks the staged folder here first (llvmpipe).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
DEST=$(cd "${1:-/work/main}" && pwd)
NODE_BIN=${NODE_BIN:-$(command -v node)}
LIMIT_BYTES=$((64 * 1024 * 1024))
# The GL and Vulkan loaders the device tool's README names; Dawn needs libvulkan1 (its Vulkan
# backend dlopens libvulkan.so.1, which finds the driver's ICD).
GL_PACKAGES=(libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)

if [ -d "$DEST/.git" ]; then
  for folder in .gpu .gl; do
    git -C "$DEST" check-ignore -q "$folder/x" || { echo "pack: $DEST/$folder is not git-ignored there; add /$folder/ to $DEST/.git/info/exclude first" >&2; exit 1; }
  done
fi
[ -d "$REPO/node_modules/webgpu" ] || { echo "pack: $REPO/node_modules lacks webgpu: run npm ci in $REPO first" >&2; exit 1; }
[ "$(uname -m)" = x86_64 ] || { echo "pack: the GPU machine is x86-64; this Node is $(uname -m)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/vit-dist-gpu-pack.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$DEST/.gpu/bench"

# --- Node: cached between packs, since compressing 90 MB takes minutes on two cores.
node_id="$(sha256sum "$NODE_BIN" | cut -c1-16) $("$NODE_BIN" --version)"
if [ ! -f "$DEST/.gpu/node.tar.xz" ] || [ "$(cat "$DEST/.gpu/node.id" 2>/dev/null)" != "$node_id" ]; then
  echo "pack: compressing Node $("$NODE_BIN" --version) from $NODE_BIN"
  mkdir -p "$WORK/node/bin"
  cp "$NODE_BIN" "$WORK/node/bin/node"
  strip "$WORK/node/bin/node" # debug info is a tenth of the binary
  tar -C "$WORK" -cf - node | xz -T0 -6 >"$DEST/.gpu/node.tar.xz"
  echo "$node_id" >"$DEST/.gpu/node.id"
  rm -rf "$WORK/node"
fi

# --- The project's code and its production dependencies.
APP="$WORK/app"
mkdir -p "$APP"
CODE=(bin src recipes bench package.json tsconfig.json)
if [ "${PACK_WORKTREE:-0}" = 1 ]; then
  (cd "$REPO" && cp -r "${CODE[@]}" "$APP/")
  commit="$(git -C "$REPO" rev-parse HEAD) with the working tree's changes"
else
  git -C "$REPO" archive HEAD -- "${CODE[@]}" | tar -x -C "$APP"
  commit=$(git -C "$REPO" rev-parse HEAD)
fi
# npm ls exits non-zero for an extraneous package, which does no harm here; an empty list would.
# Not tfjs-node: the GPU check runs the webgpu engine, and tfjs-node carries TensorFlow's libraries
# (820 MB), far past the 64 MiB; only --backend tensorflow loads it (by name, at run time).
(cd "$REPO" && npm ls --omit=dev --all --parseable 2>/dev/null || true) | tail -n +2 | sed "s#^$REPO/##" |
  grep -v -E '^node_modules/@tensorflow/tfjs-node(/|$)' | sort -u >"$WORK/packages"
[ -s "$WORK/packages" ] || { echo "pack: npm ls listed no production dependencies in $REPO" >&2; exit 1; }
while read -r package; do
  [ -e "$APP/$package" ] && continue # nested under a package already copied (sorted: parents first)
  mkdir -p "$APP/$(dirname "$package")"
  cp -r "$REPO/$package" "$APP/$package"
done <"$WORK/packages"
NM="$APP/node_modules"
# Dawn and libvips for Linux x86-64 only; tsx's esbuild is already the linux-x64 package alone.
find "$NM/webgpu/dist" -mindepth 1 -maxdepth 1 ! -name linux-x64 -exec rm -rf {} +
rm -rf "$NM/webgpu/build" "$NM/webgpu/node_modules/@webgpu"
# tfjs: Node loads dist/tf-*.node.js (package.json "main") and deep imports load dist/**/*.js;
# the browser bundles, minified copies, source maps, tests and declarations never run here.
find "$NM/@tensorflow" \( -name '*.map' -o -name '*.d.ts' -o -name '*.min.js' -o -name '*_test.js' -o -name 'tf-*.es2017.js' -o -name 'tf-*.fesm.js' -o -regex '.*/dist/tf-[a-z-]*\.js' \) -delete
find "$NM" \( -name '*.map' -o -name '*.d.ts' -o -name '*.d.mts' -o -name '*.d.cts' -o -iname 'README*' -o -iname 'CHANGELOG*' \) -type f -delete
tar -C "$WORK" -cf - app | xz -T0 -6 >"$DEST/.gpu/app.tar.xz"
cp "$APP/bench/gpu-check.sh" "$DEST/.gpu/bench/gpu-check.sh"
echo "$commit" >"$DEST/.gpu/commit"

# --- The Vulkan and GL loaders, as amd64 Debian packages (the device tool's README's recipe).
if ! ls "$DEST/.gl/"libvulkan1_*.deb >/dev/null 2>&1; then
  mkdir -p "$DEST/.gl" /tmp/amd64/partial
  apt_amd64=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
  apt-get "${apt_amd64[@]}" update -qq
  (cd "$DEST/.gl" && apt-get "${apt_amd64[@]}" download "${GL_PACKAGES[@]}")
fi

# --- What travels: DEST's tracked and unignored files, plus the carried folders.
tree_bytes=0
if [ -d "$DEST/.git" ]; then
  tree_bytes=$(git -C "$DEST" ls-files -co --exclude-standard -z | (cd "$DEST" && du -cb --files0-from=- 2>/dev/null | tail -n 1 | cut -f1))
fi
carried_bytes=$(du -cb "$DEST/.gpu" "$DEST/.gl" | tail -n 1 | cut -f1)
total=$((tree_bytes + carried_bytes))
echo "pack: $DEST/.gpu $(du -sh "$DEST/.gpu" | cut -f1), .gl $(du -sh "$DEST/.gl" | cut -f1); with the tree ($(numfmt --to=iec "$tree_bytes")) $(awk -v b="$total" 'BEGIN { printf "%.1f", b / 1048576 }') MiB travel of the 64 MiB allowed"
[ "$total" -le "$LIMIT_BYTES" ] || { echo "pack: over the device tool's 64 MiB limit" >&2; exit 1; }
