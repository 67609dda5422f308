#!/usr/bin/env python3
"""vblkctl_mock.py - a stand-in for vblkd's control socket, for testing vblkctl.

JSON-RPC 2.0, one object per line each way, as vblkd --rpc: version, export-add/-del/-list/
-resize/-set, stats and shutdown over canned exports (d1: qcow2, connected, 2 queues; d2: raw,
listening, 1 queue).  Every request received is appended to the log as one JSON line
({"request": <what arrived, parsed or as a string>, "valid": bool}), so tests can assert exactly
what vblkctl sent.  Stats counters advance by a fixed amount per stats call (uptime by 1.0 s), so
watch-mode rates are exact: d1 reads 1000/s and writes 500/s of 4 KiB.

The mode file (re-read for every request) makes the server misbehave:
  normal, garbage, wrong-id, id-string, no-jsonrpc, bad-jsonrpc, both, neither, array, huge
  (a 16 MiB + 1 line), huge-ok (exactly 16 MiB), close, partial, silent, bad-error, null-id-error,
  trailing, bad-utf8, nul, ctrl-msg, weird-types, result-null, two-responses.

usage:
  vblkctl_mock.py serve SOCKET LOG MODEFILE      serve until killed
  vblkctl_mock.py stuck SOCKET                   listen (backlog full), never accept
  vblkctl_mock.py check LOG EXPECTED             exit 0 if the logged requests are EXPECTED:
        a JSON array of {"method": M, "params": P} ("params" left out: none may be sent), or
        {"repeat": {...}, "min": N}: N or more of one request; also checks that each is a valid
        JSON-RPC 2.0 request and that integer ids increase by one within a connection.
"""
import json
import os
import socket
import socketserver
import sys
import threading
import time

MAX_REQUEST = 64 * 1024
MAX_LINE = 16 * 1024 * 1024

EXPORT_KEYS = {
    "id", "file", "socket", "readonly", "aio", "cache", "num-queues", "queue-size", "discard",
    "serial", "logical-block-size", "read-zeroes", "poll-us", "iothreads", "format",
    "l2-cache-size", "refcount-cache-size", "rerror", "werror", "locking", "throttle-group",
    "fixed-buffers",
}
THROTTLE = [a + b for a in ("iops-total", "iops-read", "iops-write", "bps-total", "bps-read",
                            "bps-write") for b in ("", "-max", "-max-length")]
EXPORT_KEYS.update(THROTTLE)
LIVE_KEYS = set(THROTTLE) | {"throttle-group", "poll-us", "readonly"}


class RpcError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def parse_size(v):
    if isinstance(v, bool):
        raise ValueError
    if isinstance(v, int):
        if v < 0:
            raise ValueError
        return v
    if not isinstance(v, str) or not v:
        raise ValueError
    mult = 1
    if v[-1].lower() in "kmgt":
        mult = 1024 ** ("kmgt".index(v[-1].lower()) + 1)
        v = v[:-1]
    if not v.isdigit():
        raise ValueError
    return int(v) * mult


def str_value(v):
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, (int, float)) or isinstance(v, str):
        return str(v)
    raise ValueError


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.stats_calls = 0
        self.exports = {}
        self.add({"id": "d1", "file": "/var/lib/vblk/d1.qcow2", "socket": "/run/vblk/d1.sock",
                  "num-queues": "2", "format": "qcow2"},
                 state="connected", size=10 << 30, driver="qcow2")
        self.add({"id": "d2", "file": "/var/lib/vblk/d2.img", "socket": "/run/vblk/d2.sock"},
                 state="listening", size=64 << 20, driver="raw")

    def add(self, config, state="listening", size=1 << 30, driver="raw"):
        nq = int(config.get("num-queues", "1"))
        self.exports[config["id"]] = {
            "id": config["id"], "config": dict(config), "state": state,
            "connected": state == "connected", "size": size, "driver": driver,
            "socket": config["socket"],
            "queues": [{"index": i, "thread": "vblk-%s" % config["id"], "started": state == "connected"}
                       for i in range(nq)],
        }
        return self.exports[config["id"]]

    def get(self, params, required=True):
        eid = params.get("id")
        if eid is None and not required:
            return None
        if not isinstance(eid, str):
            raise RpcError(-32602, "id: want a string")
        if eid not in self.exports:
            raise RpcError(-32602, "unknown export '%s'" % eid)
        return self.exports[eid]

    def stats_of(self, e, n):
        def ops(scale, rops, wops):
            return {
                "read": {"ops": rops * scale, "bytes": rops * scale * 4096, "errors": 2 * scale},
                "write": {"ops": wops * scale, "bytes": wops * scale * 4096, "errors": scale},
                "flush": {"ops": 10, "bytes": 0, "errors": 0},
                "discard": {"ops": 4, "bytes": 1 << 20, "errors": 0},
                "write-zeroes": {"ops": 0, "bytes": 0, "errors": 0},
                "other": {"ops": 1, "bytes": 0, "errors": 0},
            }

        lat = {"p50": 45.5, "p90": 80.0, "p99": 120.25, "p99.9": 300.0, "max": 1500.0}
        big = e["id"] == "d1"
        rops = (50000 + 1000 * n) if big else 0  # since start: 51000 reads in 101 s
        wops = (20000 + 500 * n) if big else 0
        nq = len(e["queues"])
        s = {
            "id": e["id"], "uptime_s": 100.0 + n, "inflight": 3 if big else 0,
            "throttled_ns": 123456, "throttled": 7 if big else 0,
            "ops": ops(1, rops, wops), "unsupported": 0, "held": 0, "ignored": 0,
            "latency_us": lat,
            "queues": [{"index": q["index"], "inflight": 1 if big else 0,
                        "ops": ops(1, rops // nq, wops // nq), "latency_us": lat}
                       for q in e["queues"]],
        }
        return s


def method_call(st, method, params):
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RpcError(-32602, "params: want an object")
    with st.lock:
        if method == "version":
            return {"version": "0.1.0"}
        if method == "export-add":
            config = {}
            for k, v in params.items():
                if k not in EXPORT_KEYS:
                    raise RpcError(-32602, "unknown key '%s'" % k)
                try:
                    config[k] = str_value(v)
                except ValueError:
                    raise RpcError(-32602, "%s: bad value" % k)
            for k in ("id", "file", "socket"):
                if k not in config:
                    raise RpcError(-32602, "missing %s=" % k)
            if config["id"] in st.exports:
                raise RpcError(-32602, "export '%s' already exists" % config["id"])
            return st.add(config)
        if method == "export-del":
            e = st.get(params)
            force = params.get("force", False)
            if not isinstance(force, bool):
                raise RpcError(-32602, "force: want a boolean")
            if e["connected"] and not force:
                raise RpcError(-32000, "export %s: a front-end is connected (force to remove)" % e["id"])
            del st.exports[e["id"]]
            return {}
        if method == "export-list":
            e = st.get(params, required=False)
            return {"exports": [e] if e else list(st.exports.values())}
        if method == "export-resize":
            e = st.get(params)
            try:
                size = parse_size(params.get("size"))
            except ValueError:
                raise RpcError(-32602, "size: want bytes or a size like 2G")
            if not isinstance(params.get("truncate", False), bool):
                raise RpcError(-32602, "truncate: want a boolean")
            e["size"] = size
            return {"size": size}
        if method == "export-set":
            e = st.get(params)
            for k, v in params.items():
                if k == "id":
                    continue
                if k not in LIVE_KEYS:
                    raise RpcError(-32602, "%s: not a live setting" % k)
                e["config"][k] = str_value(v)
            return {"config": e["config"]}
        if method == "stats":
            e = st.get(params, required=False)
            st.stats_calls += 1
            n = st.stats_calls
            return {"exports": [st.stats_of(x, n) for x in ([e] if e else st.exports.values())]}
        if method == "shutdown":
            return {}
    raise RpcError(-32601, "method not found: %s" % method)


def line(obj):
    return (json.dumps(obj) + "\n").encode()


def padded_version(rid, total):
    """A valid version response whose line is `total` bytes without the newline."""
    head = '{"jsonrpc":"2.0","id":%d,"result":{"version":"0.1.0","pad":"' % rid
    tail = '"}}'
    return (head + "x" * (total - len(head) - len(tail)) + tail + "\n").encode()


def misbehave(mode, rid, good):
    """Bytes to send instead of `good` (a response object), None to close, "" to stay silent."""
    if mode == "garbage":
        return b"this is not json\n"
    if mode == "wrong-id":
        return line(dict(good, id=rid + 1000))
    if mode == "id-string":
        return line(dict(good, id=str(rid)))
    if mode == "no-jsonrpc":
        return line({k: v for k, v in good.items() if k != "jsonrpc"})
    if mode == "bad-jsonrpc":
        return line(dict(good, jsonrpc="1.0"))
    if mode == "both":
        return line(dict(good, result={}, error={"code": -32000, "message": "x"}))
    if mode == "neither":
        return line({"jsonrpc": "2.0", "id": rid})
    if mode == "array":
        return line([good])
    if mode == "huge":
        return padded_version(rid, MAX_LINE + 1)
    if mode == "huge-ok":
        return padded_version(rid, MAX_LINE)
    if mode == "close":
        return None
    if mode == "partial":
        return line(good)[:20]
    if mode == "silent":
        return ""
    if mode == "bad-error":
        return line({"jsonrpc": "2.0", "id": rid, "error": {"code": "x"}})
    if mode == "null-id-error":
        return line({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}})
    if mode == "trailing":
        return line(good)[:-1] + b' {"x":1}\n'
    if mode == "bad-utf8":
        return b'{"jsonrpc":"2.0","id":%d,"result":{"version":"\xff\xfe"}}\n' % rid
    if mode == "nul":
        return b'{"jsonrpc":"2.0","id":%d,"result":{"version":"0.1\x00"}}\n' % rid
    if mode == "ctrl-msg":
        return line({"jsonrpc": "2.0", "id": rid,
                     "error": {"code": -32000, "message": "bad \x1b[31mthing\x07 here"}})
    if mode == "weird-types":
        return line({"jsonrpc": "2.0", "id": rid, "result": {"version": 5, "exports": [
            {"id": 5, "state": None, "size": "big", "queues": {}, "ops": [], "latency_us": "x"},
            "not an object", 17, None,
            {"id": "w", "size": -1, "ops": {"read": {"ops": "1"}, "write": 3}, "queues": [1, {"ops": None}, {}]},
        ], "config": {"a": 1, "b": None, "c": [1]}, "size": "x"}})
    if mode == "result-null":
        return line({"jsonrpc": "2.0", "id": rid, "result": None})
    if mode == "two-responses":
        return line(good) + line(good)
    return line(good)


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        srv = self.server
        with srv.log_lock:
            srv.conns += 1
            conn = srv.conns
        while True:
            raw = self.rfile.readline(MAX_REQUEST + 2)
            if not raw:
                return
            if len(raw) > MAX_REQUEST or not raw.endswith(b"\n"):
                return  # as vblkd: requests over 64 KiB close the connection
            try:
                req = json.loads(raw)
            except ValueError:
                req = raw.decode(errors="replace")
            valid = (isinstance(req, dict) and req.get("jsonrpc") == "2.0" and
                     isinstance(req.get("method"), str) and
                     ("id" not in req or (isinstance(req["id"], int) and not isinstance(req["id"], bool))) and
                     ("params" not in req or isinstance(req["params"], dict)))
            with srv.log_lock:
                with open(srv.log, "a") as f:
                    f.write(json.dumps({"request": req, "valid": valid, "conn": conn}) + "\n")
            if not isinstance(req, dict):
                self.send(line({"jsonrpc": "2.0", "id": None,
                                "error": {"code": -32700, "message": "parse error"}}))
                continue
            if "id" not in req:
                continue  # a notification
            rid = req["id"]
            try:
                if not valid and not isinstance(req.get("params", {}), dict):
                    raise RpcError(-32602, "params: want an object")
                if not valid:
                    raise RpcError(-32600, "invalid request")
                good = {"jsonrpc": "2.0", "id": rid,
                        "result": method_call(srv.state, req["method"], req.get("params"))}
            except RpcError as e:
                good = {"jsonrpc": "2.0", "id": rid, "error": {"code": e.code, "message": e.message}}
            try:
                with open(srv.modefile) as f:
                    mode = f.read().strip() or "normal"
            except OSError:
                mode = "normal"
            out = misbehave(mode, rid if isinstance(rid, int) else 0, good)
            if out is None:
                return
            if out == "":
                while self.rfile.read(1):  # until the client gives up
                    pass
                return
            if not self.send(out) or mode == "partial":
                return

    def send(self, data):
        try:
            self.wfile.write(data)
            self.wfile.flush()
            return True
        except OSError:
            return False


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve(path, log, modefile):
    if os.path.exists(path):
        os.unlink(path)
    srv = Server(path, Handler)
    srv.state = State()
    srv.log = log
    srv.log_lock = threading.Lock()
    srv.conns = 0
    srv.modefile = modefile
    srv.serve_forever()


def stuck(path):
    """A listener whose backlog is full: connect() blocks until the client's timeout."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(0)
    fillers = []
    for _ in range(64):  # fill the backlog (listen(0) still takes one or two)
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.setblocking(False)
        try:
            c.connect(path)
        except BlockingIOError:
            c.close()
            break
        fillers.append(c)
    while True:
        time.sleep(60)


def check(log, expected_text):
    expected = json.loads(expected_text)
    repeat = None
    if isinstance(expected, dict):  # {"repeat": REQUEST, "min": N}: N or more of the same
        repeat, at_least = expected["repeat"], expected["min"]
    try:
        with open(log) as f:
            got = [json.loads(l) for l in f if l.strip()]
    except OSError:
        got = []
    problems = []
    last_id = {}
    for i, g in enumerate(got):
        r = g["request"]
        if not g["valid"]:
            problems.append("request %d is not a valid JSON-RPC 2.0 request: %r" % (i, r))
            continue
        if "id" not in r:
            problems.append("request %d has no id" % i)
        elif g["conn"] in last_id and r["id"] != last_id[g["conn"]] + 1:
            problems.append("request %d: id %r does not follow %r" % (i, r["id"], last_id[g["conn"]]))
        if "id" in r:
            last_id[g["conn"]] = r["id"]
    simple = [{k: v for k, v in g["request"].items() if k in ("method", "params")}
              if isinstance(g["request"], dict) else g["request"] for g in got]
    if repeat is not None:
        if len(simple) < at_least or any(x != repeat for x in simple):
            problems.append("requests %s, expected %d or more of %s" % (json.dumps(simple), at_least,
                                                                        json.dumps(repeat)))
    elif simple != expected:
        problems.append("requests %s, expected %s" % (json.dumps(simple), json.dumps(expected)))
    if problems:
        print("; ".join(problems))
        return 1
    return 0


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "serve":
        serve(*sys.argv[2:])
    elif len(sys.argv) == 3 and sys.argv[1] == "stuck":
        stuck(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "check":
        sys.exit(check(sys.argv[2], sys.argv[3]))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
