#!/bin/bash
# ipr.sh VBLKD [packed] : instructions per request (callgrind), null 4k randread QD32 --wait
B=$1; P=${2:+--packed}; VB=${VBLK_BENCH:-$(cd "$(dirname "$0")/../.." && pwd)/build/tools/vblk-bench/vblk-bench}
d=$(mktemp -d)
run() {
  n=$1; sock=$d/s$n.sock
  valgrind --tool=callgrind --callgrind-out-file=$d/cg.$n $B --export id=e0,file=null://1G,socket=$sock,poll-us=0,read-zeroes=off >$d/log.$n 2>&1 & pid=$!
  while [ ! -S $sock ]; do sleep 0.1; done; sleep 0.3
  $VB --socket $sock --rw=randread --bs=4096 --iodepth=32 --wait $P --ios=$n >/dev/null 2>&1
  kill -TERM $pid; wait $pid
  grep -h "^summary:" $d/cg.$n | awk '{print $2}'
}
a=$(run 5000); b=$(run 50000)
echo "$a $b" | awk '{printf "instructions/request %.1f\n", ($2-$1)/45000}'
[ -n "$KEEP" ] && echo "dir $d" || rm -rf $d
