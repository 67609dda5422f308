#!/usr/bin/env python3
"""cmp.py ROUNDS SECS MODE CONFIG... ; CONFIG = name|binary|ENV=V;ENV=V|export-extra ; name 'fio' runs fio"""
import os, subprocess, sys, time, json, statistics, tempfile
rounds, secs, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
cfgs = [c.split("|") for c in sys.argv[4:]]
VB = "/work/main/build/tools/vblk-bench/vblk-bench"; TCK = os.sysconf("SC_CLK_TCK")
res = {c[0]: [] for c in cfgs}; tmp = tempfile.mkdtemp()
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) / TCK, int(f[12]) / TCK
for r in range(rounds):
    for c in cfgs:
        name = c[0]
        if name.startswith("fio"):
            o = subprocess.run(["taskset", "-c", "1", "fio", "--name=b", "--filename=/var/tmp/vbench/img", "--ioengine=io_uring", "--direct=1", "--rw=randread", "--bs=4k", "--iodepth=32", f"--runtime={secs}", "--time_based=1", "--norandommap=1", "--randrepeat=0", "--size=1G", "--output-format=json"], capture_output=True, text=True)
            res[name].append((json.loads(o.stdout)["jobs"][0]["read"]["iops"], 0, 0)); print(r, name, int(res[name][-1][0]), flush=True); continue
        b, envs, extra = c[1], c[2], c[3]
        env = dict(os.environ)
        for kv in filter(None, envs.split(";")):
            k, v = kv.split("="); env[k] = v
        sock = f"{tmp}/s{r}-{name}.sock"
        ex = f"id=e0,file=/var/tmp/vbench/img,socket={sock},num-queues=1,aio=io_uring,cache=none" + ("," + extra if extra else "")
        p = subprocess.Popen(["taskset", "-c", "0", b, "--export", ex], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        while not os.path.exists(sock): time.sleep(0.02)
        time.sleep(0.1)
        u0, s0 = cpu(p.pid)
        o = subprocess.run(["taskset", "-c", "1", VB, "--socket", sock, "--rw=randread", "--bs=4096", "--iodepth=32", f"--{mode}", "--json", f"--runtime={secs}"], capture_output=True, text=True)
        u1, s1 = cpu(p.pid)
        p.terminate(); p.wait()
        d = json.loads(o.stdout); n = d["ios"]
        res[name].append((d["iops"], (u1 - u0) * 1e6 / n, (s1 - s0) * 1e6 / n))
        print(r, name, f"{d['iops']:.0f} IOPS user {res[name][-1][1]:.2f} sys {res[name][-1][2]:.2f} us/IO", flush=True)
print("--- medians")
for c in cfgs:
    x = res[c[0]]
    print(f"{c[0]:12s} IOPS {statistics.median(a[0] for a in x):9.0f}  CPU/IO {statistics.median(a[1]+a[2] for a in x):.2f} us (user {statistics.median(a[1] for a in x):.2f})")
