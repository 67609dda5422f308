#!/bin/bash
# ipr-mq.sh VBLKD Q : instructions per request with Q queues, iothreads=Q, Q jobs
B=$1; Q=$2; VB=${VBLK_BENCH:-$(cd "$(dirname "$0")/../.." && pwd)/build/tools/vblk-bench/vblk-bench}; d=$(mktemp -d)
run() {
  n=$1; sock=$d/s$n.sock
  valgrind --tool=callgrind --callgrind-out-file=$d/cg.$n $B --export id=e0,file=null://1G,socket=$sock,poll-us=0,read-zeroes=off,num-queues=$Q,iothreads=$Q >$d/log.$n 2>&1 & pid=$!
  while [ ! -S $sock ]; do sleep 0.1; done; sleep 0.3
  $VB --socket $sock --rw=randread --bs=4096 --iodepth=32 --wait --numjobs=$Q --ios=$n >/dev/null 2>&1
  kill -TERM $pid; wait $pid
  cat $d/cg.$n* | grep -h "^summary:" | awk '{s+=$2} END {print s}'
}
a=$(run 8000); b=$(run 48000)
echo "$a $b" | awk -v q=$Q '{printf "queues %d: instructions/request %.1f\n", q, ($2-$1)/40000}'
rm -rf $d
