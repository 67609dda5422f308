#!/bin/bash
# ceph-single-node.sh - a throw-away single-node Ceph cluster for tests (Debian 12: Ceph 16).
#
#   scripts/ceph-single-node.sh start DIR   create DIR, start the cluster, print DIR/ceph.conf
#   scripts/ceph-single-node.sh stop DIR    kill its daemons (by their recorded PIDs), remove DIR
#
# One monitor (a free port on 127.0.0.1, msgr2 only), one manager, one OSD on a file-backed
# BlueStore (a sparse DIR/osd/block, CEPH_OSD_SIZE, default 8G), a pool "rbd" of size 1 with the
# rbd application, cephx on: the admin keyring is DIR/ceph.client.admin.keyring and the [client]
# section of DIR/ceph.conf points at it, so `rbd -c DIR/ceph.conf ...` and librados with
# conf=DIR/ceph.conf just work.  Everything (data, logs, PIDs, admin sockets) lives in DIR; no
# systemd, nothing in /etc/ceph or /var/lib/ceph.  Daemons run in the foreground (-f) in the
# background; DIR/pids lists their PIDs.  start waits (CEPH_START_TIMEOUT, default 120 s) until an
# image can be created in the pool; then it prints the conf path on stdout (progress on stderr).
# Needs: ceph-mon ceph-mgr ceph-osd ceph-common (scripts/deps.txt), python3 (a free port).
set -eu

usage() {
    echo "usage: $0 start|stop DIR" >&2
    exit 2
}
[ $# -eq 2 ] || usage
cmd=$1
dir=$2
say() { echo "ceph-single-node: $*" >&2; }

stop_cluster() {
    local pid pids=() deadline
    if [ -f "$dir/pids" ]; then
        while read -r pid _; do
            [ -n "$pid" ] && pids+=("$pid")
        done <"$dir/pids"
    fi
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    deadline=$((SECONDS + 10))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
}

case "$cmd" in
stop)
    [ -d "$dir" ] || exit 0
    [ -f "$dir/ceph.conf" ] || {
        say "$dir holds no cluster (no ceph.conf): not removing it"
        exit 1
    }
    stop_cluster
    rm -rf "$dir"
    exit 0
    ;;
start) ;;
*) usage ;;
esac

for b in ceph-mon ceph-mgr ceph-osd ceph ceph-authtool monmaptool rbd python3; do
    command -v "$b" >/dev/null || {
        say "$b not found: install ceph-mon ceph-mgr ceph-osd ceph-common (scripts/deps.txt)"
        exit 1
    }
done
if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
    say "$dir exists and is not empty"
    exit 1
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
start=$SECONDS
timeout=${CEPH_START_TIMEOUT:-120}
failed() {
    say "$1; logs in $dir/log:"
    tail -n 5 "$dir"/log/*.log >&2 2>/dev/null || true
    stop_cluster
    exit 1
}
mkdir -p "$dir/log" "$dir/run" "$dir/mon" "$dir/mgr" "$dir/osd"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fsid=$(cat /proc/sys/kernel/random/uuid)
conf=$dir/ceph.conf
cat >"$conf" <<EOF
# a throw-away single-node cluster made by scripts/ceph-single-node.sh
[global]
fsid = $fsid
mon_host = v2:127.0.0.1:$port
mon_initial_members = a
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_ipv4 = true
ms_bind_ipv6 = false
ms_bind_msgr1 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
run_dir = $dir/run
log_file = $dir/log/\$cluster-\$name.log
pid_file = $dir/run/\$cluster-\$name.pid
crash_dir = $dir/crash
log_to_stderr = false
err_to_stderr = true
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_warn_on_insecure_global_id_reclaim_allowed = false
mon_data_avail_warn = 2
mon_data_avail_crit = 1
mon_max_pg_per_osd = 1000

[mon]
mon_data = $dir/mon
mon_cluster_log_file = $dir/log/\$cluster.log

[mgr]
mgr_data = $dir/mgr
keyring = $dir/mgr/keyring
mgr_initial_modules = iostat
mgr_stats_period = 1

[osd]
osd_data = $dir/osd
keyring = $dir/osd/keyring
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = ${CEPH_OSD_SIZE:-8G}
bluestore_fsck_on_mount = false
bluestore_fsck_on_mkfs = false
osd_memory_target = 536870912
osd_memory_cache_min = 67108864
osd_op_num_shards = 1
osd_op_num_threads_per_shard = 2
osd_crush_update_on_start = true

[client]
keyring = $dir/ceph.client.admin.keyring
EOF

ceph_() { ceph -c "$conf" --connect-timeout 10 "$@"; }
log() { "$@" >>"$dir/log/setup.log" 2>&1 || failed "'$*' failed"; }
pids=$dir/pids
: >"$pids"
# run NAME CMD...: a daemon in the foreground, in the background, its PID recorded
run() {
    local name=$1
    shift
    "$@" >>"$dir/log/$name.out" 2>&1 </dev/null &
    echo "$! $name" >>"$pids"
}

# the monitor: keyrings, a map with one address, its store
log ceph-authtool --create-keyring "$dir/mon.keyring" --gen-key -n mon. --cap mon 'allow *'
log ceph-authtool --create-keyring "$dir/ceph.client.admin.keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *'
log ceph-authtool "$dir/mon.keyring" --import-keyring "$dir/ceph.client.admin.keyring"
log monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port]" "$dir/monmap"
log ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/mon.keyring"
run mon.a ceph-mon -c "$conf" -f -i a

# the manager and the OSD need the monitor to register their keys
osd_uuid=$(cat /proc/sys/kernel/random/uuid)
osd_key=$(ceph-authtool --gen-print-key)
deadline=$((start + timeout))
until ceph_ mon stat >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || failed "the monitor did not answer within ${timeout}s"
    kill -0 "$(cut -d' ' -f1 "$pids")" 2>/dev/null || failed "the monitor died"
    sleep 0.3
done
log ceph_ auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' \
    -o "$dir/mgr/keyring"
run mgr.x ceph-mgr -c "$conf" -f -i x
echo "{\"cephx_secret\": \"$osd_key\"}" >"$dir/osd-new.json"
osd_id=$(ceph_ osd new "$osd_uuid" -i "$dir/osd-new.json" 2>>"$dir/log/setup.log") ||
    failed "ceph osd new failed"
rm -f "$dir/osd-new.json"
log ceph-authtool --create-keyring "$dir/osd/keyring" -n "osd.$osd_id" --add-key "$osd_key"
log ceph-osd -c "$conf" -i "$osd_id" --mkfs --osd-uuid "$osd_uuid"
run "osd.$osd_id" ceph-osd -c "$conf" -f -i "$osd_id"

# the pool
log ceph_ osd pool create rbd 8 8 replicated
log ceph_ osd pool set rbd size 1 --yes-i-really-mean-it
log ceph_ osd pool set rbd min_size 1
log ceph_ osd pool application enable rbd rbd

# usable: an image can be created (the OSD is up and its placement groups active)
probe=probe-$$
until timeout 10 rbd -c "$conf" create --size 1M "rbd/$probe" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || failed "the pool is not usable within ${timeout}s"
    for pid in $(cut -d' ' -f1 "$pids"); do
        kill -0 "$pid" 2>/dev/null || failed "$(grep "^$pid " "$pids" | cut -d' ' -f2) died"
    done
    sleep 0.3
done
timeout 10 rbd -c "$conf" rm --no-progress "rbd/$probe" >/dev/null 2>&1 || true
say "up in $((SECONDS - start))s: mon 127.0.0.1:$port, $(ceph_ health 2>/dev/null)"
echo "$conf"
