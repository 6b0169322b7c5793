#!/usr/bin/env bash
# image.sh OUT.tar NAME app|pause [VARIANT]: an OCI image-layout tarball built
# from the local /bin/busybox (Debian's busybox-static), for `ctr images import`.
# No registry, no download; the same busybox gives the same bytes. VARIANT
# (default 1) goes into the config's Env, so variants are distinct images
# (their own IDs) sharing one layer: an image change a kubelet really makes.
#
#   app    Entrypoint /bin/sh, Cmd: sleep until stopped (the test gives its own command)
#   pause  the sandbox ("pause") process: sleeps, exits at once on SIGTERM/SIGINT
set -euo pipefail

out="$1" name="$2" kind="$3" variant="${4:-1}"
busybox=/bin/busybox
[[ -x $busybox ]] || { echo "image.sh: $busybox missing (Debian package busybox-static)" >&2; exit 1; }
case "$kind" in
  app) entrypoint='["/bin/sh","-c"]' cmd='["trap \"exit 0\" TERM INT; while :; do sleep 3600 & wait $!; done"]' ;;
  pause) entrypoint='["/bin/sh","-c","trap \"exit 0\" TERM INT; while :; do sleep 3600 & wait $!; done"]' cmd='null' ;;
  *) echo "image.sh: kind must be app or pause" >&2; exit 2 ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs" layout="$work/layout"
mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev" "$layout/blobs/sha256"
cp "$busybox" "$rootfs/bin/busybox"
# One symlink per applet the tests and the images use.
for applet in sh sleep cat head dd ls mkdir rm echo true test env id ps grep; do
  ln -s busybox "$rootfs/bin/$applet"
done
chmod 1777 "$rootfs/tmp"
printf 'root:x:0:0:root:/:/bin/sh\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\n' >"$rootfs/etc/group"

# blob FILE MEDIATYPE: store FILE as a blob; print its descriptor.
blob() {
  local digest size
  digest="$(sha256sum "$1" | cut -d' ' -f1)"; size="$(stat -c %s "$1")"
  cp "$1" "$layout/blobs/sha256/$digest"
  printf '{"mediaType":"%s","digest":"sha256:%s","size":%s}' "$2" "$digest" "$size"
}

# Uncompressed layer, deterministic (sorted names, fixed times and owners).
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" -cf "$work/layer.tar" .
layer="$(blob "$work/layer.tar" application/vnd.oci.image.layer.v1.tar)"
diff_id="$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"

printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin","BERTH_IMAGE_VARIANT=%s"],"Entrypoint":%s,"Cmd":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"berth e2e/containerd/image.sh %s from %s"}]}' \
  "$variant" "$entrypoint" "$cmd" "$diff_id" "$kind" "$busybox" >"$work/config.json"
config="$(blob "$work/config.json" application/vnd.oci.image.config.v1+json)"

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s]}' \
  "$config" "$layer" >"$work/manifest.json"
manifest="$(blob "$work/manifest.json" application/vnd.oci.image.manifest.v1+json)"

# ctr import names the image from io.containerd.image.name.
printf '{"schemaVersion":2,"manifests":[%s]}' \
  "${manifest%\}},\"platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"},\"annotations\":{\"io.containerd.image.name\":\"$name\",\"org.opencontainers.image.ref.name\":\"${name##*:}\"}}" \
  >"$layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

mkdir -p "$(dirname "$out")"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$layout" -cf "$out.tmp" oci-layout index.json blobs
mv "$out.tmp" "$out"
