#!/bin/sh
# Write the seed corpus of fuzz_qcow2 (tests/fuzz/corpus/qcow2/): small images of each kind
# qemu-img makes, each behind a mode byte (see fuzz_qcow2.c).  Needs qemu-img and qemu-io.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$here/corpus/qcow2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
n=0
seed() { # options, qemu-io commands, mode byte
    qemu-img create -q -f qcow2 $1 "$tmp/i.qcow2" 1M
    [ -z "$2" ] || qemu-io -f qcow2 -c "$2" "$tmp/i.qcow2" >/dev/null
    n=$((n + 1))
    { printf "\\$(printf %o "$3")"; cat "$tmp/i.qcow2"; } >"$out/seed-$n"
}
seed "-o cluster_size=512" "write -P 1 0 4k" 15
seed "-o cluster_size=4k,refcount_bits=1" "write -P 2 4k 8k" 7
seed "-o compat=0.10,cluster_size=1k" "write -P 3 0 2k" 15
seed "-o extended_l2=on,cluster_size=16k" "write -P 4 2k 1k" 15
seed "-o lazy_refcounts=on,cluster_size=2k" "write -z 0 4k" 3
seed "-o cluster_size=1k,compression_type=zstd" "" 9
truncate -s 1M "$tmp/r.raw"
qemu-io -f raw -c 'write -P 5 0 64k' "$tmp/r.raw" >/dev/null
qemu-img convert -c -O qcow2 -o cluster_size=4k "$tmp/r.raw" "$tmp/c.qcow2"
{ printf '\003'; cat "$tmp/c.qcow2"; } >"$out/seed-compressed"
ls "$out" | wc -l
