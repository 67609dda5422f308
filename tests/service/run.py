#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""run.py [BUILDDIR] - vblkd as a systemd Type=notify service, without systemd.

A unix datagram socket stands in for systemd's $NOTIFY_SOCKET; vblkd runs under it:
  ready-after-listen   READY=1 arrives once, with a STATUS, and only when every export's
                       socket exists and accepts a connection
  stopping-on-sigterm  SIGTERM sends STOPPING=1 and vblkd exits 0 with its sockets removed
  abstract-socket      NOTIFY_SOCKET=@name (abstract namespace, as systemd may use) works
  no-ready-on-failure  an export that cannot open: no READY=1, exit status 1
  dead-notify-socket   a NOTIFY_SOCKET nobody listens on does not stop vblkd
  no-notify-socket     without NOTIFY_SOCKET vblkd serves as before
  unit-verify          `systemd-analyze verify` of contrib/systemd/vblkd.service and
                       vblkd@.service (ExecStart pointed at the built vblkd); skipped when
                       systemd-analyze is missing
  build-has-libsystemd vblkd links libsystemd (else every notification is a no-op and the
                       first tests could not pass)
Prints PASS/FAIL/SKIP lines and "N passed, N failed".  Processes are stopped by PID.
"""
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BUILD = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(REPO, "build")
VBLKD = os.environ.get("VBLKD", os.path.join(BUILD, "src", "vblkd"))

passed = failed = 0
tmp = tempfile.mkdtemp(prefix="vblk-service.")
procs = []


def report(name, ok, why=""):
    global passed, failed
    if ok:
        print(f"PASS {name}", flush=True)
        passed += 1
    else:
        print(f"FAIL {name}: {why}", flush=True)
        failed += 1


class Listener:
    """A stand-in for systemd's notify socket."""

    def __init__(self, name, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        if abstract:
            addr = f"\0vblk-test-{os.getpid()}-{name}"
            self.env = "@" + addr[1:]
        else:
            addr = os.path.join(tmp, name + ".notify")
            self.env = addr
        self.sock.bind(addr)
        self.msgs = []

    def recv(self, timeout):
        """Next datagram as a dict of its KEY=VALUE lines, or None on timeout."""
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            return None
        data = self.sock.recv(4096).decode(errors="replace")
        fields = dict(line.split("=", 1) for line in data.split("\n") if "=" in line)
        self.msgs.append(fields)
        return fields

    def close(self):
        self.sock.close()


def start(exports, notify_env, log):
    args = [VBLKD]
    for e in exports:
        args += ["--export", e]
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    if notify_env is not None:
        env["NOTIFY_SOCKET"] = notify_env
    p = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    procs.append(p)
    return p


def stop(p, timeout=10):
    """SIGTERM, wait; returns the exit status (None if it had to be killed)."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return None


def listening(path):
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.close()
        return True
    except OSError:
        return False


def wait_socket(path, p, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(path):
            return True
        if p.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def log_tail(path):
    try:
        with open(path) as f:
            return " | ".join(f.read().splitlines()[-5:])
    except OSError:
        return ""


def test_ready_and_stopping():
    ln = Listener("main")
    socks = [os.path.join(tmp, f"d{i}.sock") for i in range(3)]
    exports = [f"id=d{i},file=null://1G,socket={s}" for i, s in enumerate(socks)]
    logp = os.path.join(tmp, "main.log")
    with open(logp, "w") as log:
        p = start(exports, ln.env, log)
    msg = ln.recv(10)
    if msg is None:
        report("ready-after-listen", False, f"no notification within 10 s; log: {log_tail(logp)}")
        report("stopping-on-sigterm", False, "not run: no READY=1")
        stop(p)
        ln.close()
        return
    # every export must listen at the moment READY=1 arrives
    missing = [s for s in socks if not listening(s)]
    if msg.get("READY") != "1":
        report("ready-after-listen", False, f"first notification is {msg}, not READY=1")
    elif missing:
        report("ready-after-listen", False, f"READY=1 arrived but {missing} did not accept a connection")
    elif not msg.get("STATUS"):
        report("ready-after-listen", False, f"READY=1 came without a STATUS line: {msg}")
    else:
        extra = ln.recv(0.5)
        if extra is not None:
            report("ready-after-listen", False, f"unexpected notification while idle: {extra}")
        else:
            report("ready-after-listen", True)

    p.send_signal(signal.SIGTERM)
    msg = ln.recv(10)
    rc = stop(p)
    if msg is None or msg.get("STOPPING") != "1":
        report("stopping-on-sigterm", False, f"got {msg} instead of STOPPING=1; log: {log_tail(logp)}")
    elif rc != 0:
        report("stopping-on-sigterm", False, f"exit status {rc} after SIGTERM")
    elif any(os.path.exists(s) for s in socks):
        report("stopping-on-sigterm", False, "sockets left behind")
    elif any(m.get("READY") for m in ln.msgs[1:]):
        report("stopping-on-sigterm", False, f"READY=1 sent twice: {ln.msgs}")
    else:
        report("stopping-on-sigterm", True)
    ln.close()


def test_abstract():
    ln = Listener("abstract", abstract=True)
    sock = os.path.join(tmp, "abs.sock")
    logp = os.path.join(tmp, "abstract.log")
    with open(logp, "w") as log:
        p = start([f"id=a,file=null://64M,socket={sock}"], ln.env, log)
    msg = ln.recv(10)
    ok = msg is not None and msg.get("READY") == "1" and listening(sock)
    rc = stop(p)
    report("abstract-socket", ok and rc == 0,
           f"notification {msg}, exit status {rc}; log: {log_tail(logp)}")
    ln.close()


def test_failure():
    ln = Listener("fail")
    logp = os.path.join(tmp, "fail.log")
    with open(logp, "w") as log:
        p = start([f"id=ok,file=null://64M,socket={tmp}/ok.sock",
                   f"id=bad,file={tmp}/no-such-image.img,socket={tmp}/bad.sock"], ln.env, log)
    try:
        rc = p.wait(10)
    except subprocess.TimeoutExpired:
        rc = stop(p)
        report("no-ready-on-failure", False, "vblkd kept running with an export that cannot open")
        ln.close()
        return
    msg = ln.recv(0.2)
    if msg is not None and msg.get("READY") == "1":
        report("no-ready-on-failure", False, "READY=1 sent although an export failed")
    elif rc != 1:
        report("no-ready-on-failure", False, f"exit status {rc}, expected 1")
    else:
        report("no-ready-on-failure", True)
    ln.close()


def test_dead_socket():
    sock = os.path.join(tmp, "dead.sock")
    logp = os.path.join(tmp, "dead.log")
    with open(logp, "w") as log:
        p = start([f"id=dead,file=null://64M,socket={sock}"], os.path.join(tmp, "nobody.notify"), log)
    ok = wait_socket(sock, p) and listening(sock)
    rc = stop(p)
    report("dead-notify-socket", ok and rc == 0, f"listening={ok} exit status {rc}; log: {log_tail(logp)}")


def test_no_socket():
    sock = os.path.join(tmp, "plain.sock")
    logp = os.path.join(tmp, "plain.log")
    with open(logp, "w") as log:
        p = start([f"id=plain,file=null://64M,socket={sock}"], None, log)
    ok = wait_socket(sock, p) and listening(sock)
    rc = stop(p)
    report("no-notify-socket", ok and rc == 0, f"listening={ok} exit status {rc}; log: {log_tail(logp)}")


def test_unit_verify():
    sa = shutil.which("systemd-analyze")
    if not sa:
        print("SKIP unit-verify: systemd-analyze not installed")
        return
    d = os.path.join(tmp, "units")
    os.mkdir(d)
    units = []
    for name, inst in (("vblkd.service", "vblkd.service"), ("vblkd@.service", "vblkd@test.service")):
        with open(os.path.join(REPO, "contrib", "systemd", name)) as f:
            text = f.read().replace("/usr/local/bin/vblkd", VBLKD)
        path = os.path.join(d, inst)
        with open(path, "w") as f:
            f.write(text)
        if inst != name:  # the template itself must sit beside the instance
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        units.append(path)
    r = subprocess.run([sa, "verify"] + units, capture_output=True, text=True, timeout=60)
    out = (r.stdout + r.stderr).strip()
    # lines about our files (unknown keys, bad values, missing binaries) are failures; anything
    # else comes from the machine (no systemd as PID 1, missing system units) and is shown only
    ours = [line for line in out.splitlines() if "vblkd" in line]
    for line in out.splitlines():
        if line not in ours:
            print(f"    note (environment): {line}")
    report("unit-verify", r.returncode == 0 and not ours,
           f"systemd-analyze verify exit {r.returncode}: {' | '.join(ours) or out}")


def test_linked():
    r = subprocess.run(["ldd", VBLKD], capture_output=True, text=True)
    report("build-has-libsystemd", "libsystemd.so" in r.stdout,
           "vblkd is not linked with libsystemd (libsystemd-dev missing at meson setup?)")


def main():
    if not os.access(VBLKD, os.X_OK):
        print(f"FAIL setup: no vblkd at {VBLKD}")
        print("0 passed, 1 failed")
        return 1
    try:
        test_linked()
        test_ready_and_stopping()
        test_abstract()
        test_failure()
        test_dead_socket()
        test_no_socket()
        test_unit_verify()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if failed == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs kept in {tmp}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
