#!/usr/bin/env python3
"""The client side of kubelet's WebSocket streaming protocols, on the PyPI websocket-client
library (nothing shared with taskd's server), written from the protocol.

Exec / attach (remotecommand over WebSocket): subprotocols v5.channel.k8s.io and
v4.channel.k8s.io; every binary message starts with its channel byte (0 stdin, 1 stdout,
2 stderr, 3 error, 4 resize). v5 adds the close signal [255, channel]: [255, 0] closes
stdin. The error channel carries a JSON Status (ExitCode cause for a non-zero exit).

Port-forward (kubelet's WebSocket framing): the ports go in the query (`port=P`, repeated);
port i uses channel 2i for data and 2i+1 for errors, and the first message the server sends
on each of them is the port, 2 bytes little-endian.

    ws_client.py exec|attach URL [--protocols P,P] [--stdin-data S] [--no-stdin-close]
                 [--stdin-delay SEC] [--resize WxH ...] [--timeout SEC]
    ws_client.py portforward URL --port P [--port P ...] [--payload S ...] [--protocols P,P]
                 [--idle SEC] [--timeout SEC]

The last line on stdout is one JSON report. Exit status: 0 when the session ran to its end
(whatever the remote exit code), 1 when it failed on the client side ("error" says why),
2 for bad usage.
"""

import argparse
import json
import ssl
import sys
import threading
import time
import urllib.parse

try:
    import websocket
except ImportError as e:  # the tests fail with this message, never skip
    print(json.dumps({"error": f"missing Python module ({e}): pip install websocket-client"}))
    sys.exit(1)

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255


def connect(url, protocols, timeout):
    """Opens the WebSocket; returns (ws, None) or (None, report fields of the refusal)."""
    try:
        # wss: taskd's self-signed pair when enable_tls_streaming has no cert: not verified.
        ws = websocket.create_connection(
            url, subprotocols=protocols, timeout=timeout, sslopt={"cert_reqs": ssl.CERT_NONE}
        )
        return ws, None
    except websocket.WebSocketBadStatusException as e:
        body = e.resp_body.decode("utf-8", "replace") if isinstance(e.resp_body, bytes) else str(e.resp_body or "")
        return None, {"http_status": e.status_code, "http_body": body[:4096], "error": f"upgrade refused: {e}"}
    except (OSError, websocket.WebSocketException) as e:
        return None, {"http_status": 0, "error": f"connect: {e}"}


def recv_all(ws, on_message, deadline, idle=None):
    """Reads binary messages until the server closes (True), or idle/deadline (False)."""
    last = time.monotonic()
    while True:
        now = time.monotonic()
        if now > deadline or (idle is not None and now - last > idle):
            return False
        ws.settimeout(min(deadline - now, idle if idle is not None else deadline - now) or 0.1)
        try:
            opcode, data = ws.recv_data(control_frame=False)
        except websocket.WebSocketTimeoutException:
            continue
        except websocket.WebSocketConnectionClosedException:
            return True
        except OSError:
            return True
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return True
        last = time.monotonic()
        if data:
            on_message(data)


def exit_code(status):
    if status.get("status") == "Success":
        return 0
    if status.get("reason") == "NonZeroExitCode":
        for c in (status.get("details") or {}).get("causes") or []:
            if c.get("reason") == "ExitCode":
                try:
                    return int(c.get("message"))
                except (TypeError, ValueError):
                    pass
    return -1


def remote(args):
    start = time.monotonic()
    deadline = start + args.timeout
    protocols = args.protocols.split(",")
    ws, refused = connect(args.url, protocols, args.timeout)
    if refused:
        return refused, False
    proto = ws.getsubprotocol() or ""
    out = {STDOUT: bytearray(), STDERR: bytearray(), ERROR: bytearray()}
    other = []

    def on_message(data):
        ch, payload = data[0], data[1:]
        if ch in out:
            out[ch] += payload
        else:
            other.append(ch)

    def writer():
        try:
            for i, sz in enumerate(args.resize):
                if i:
                    time.sleep(args.resize_delay)
                w, h = (int(x) for x in sz.split("x"))
                ws.send_binary(bytes([RESIZE]) + json.dumps({"Width": w, "Height": h}).encode())
            if args.stdin_data is not None:
                time.sleep(args.stdin_delay)
                ws.send_binary(bytes([STDIN]) + args.stdin_data.encode())
                if not args.no_stdin_close:
                    ws.send_binary(bytes([CLOSE, STDIN]))
        except (OSError, websocket.WebSocketException):
            pass  # the server may end the session first

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    closed = recv_all(ws, on_message, deadline)
    t.join(timeout=1)
    ws.close()
    err = out[ERROR].decode("utf-8", "replace")
    report = {
        "http_status": 101,
        "protocol": proto,
        "stdout": out[STDOUT].decode("utf-8", "replace"),
        "stderr": out[STDERR].decode("utf-8", "replace"),
        "error_stream": err,
        "exit_code": -1,
        "unknown_channels": sorted(set(other)),
        "millis": int((time.monotonic() - start) * 1000),
    }
    if err.strip():
        try:
            report["status"] = json.loads(err)
            report["exit_code"] = exit_code(report["status"])
        except ValueError:
            pass
    if not closed:
        report["error"] = f"the server did not close the session within {args.timeout}s"
    return report, closed


def portforward(args):
    start = time.monotonic()
    deadline = start + args.timeout
    u = urllib.parse.urlsplit(args.url)
    query = urllib.parse.parse_qsl(u.query) + [("port", str(p)) for p in args.port]
    url = urllib.parse.urlunsplit(u._replace(query=urllib.parse.urlencode(query)))
    ws, refused = connect(url, args.protocols.split(",") if args.protocols else None, args.timeout)
    if refused:
        return refused, False
    n = len(args.port)
    payloads = (args.payload or []) + [""] * n
    chans = [{"first": None, "data": bytearray()} for _ in range(2 * n)]
    sent = [False] * n
    unknown = []

    def on_message(data):
        ch, payload = data[0], data[1:]
        if ch >= len(chans):
            unknown.append(ch)
            return
        c = chans[ch]
        if c["first"] is None:
            # The first message on each channel is its port (2 bytes LE).
            c["first"] = int.from_bytes(payload[:2], "little") if len(payload) >= 2 else -1
            i = ch // 2
            if not sent[i] and chans[2 * i]["first"] is not None and chans[2 * i + 1]["first"] is not None:
                sent[i] = True
                if payloads[i]:
                    ws.send_binary(bytes([2 * i]) + payloads[i].encode())
        else:
            c["data"] += payload

    closed = recv_all(ws, on_message, deadline, idle=args.idle)
    ws.close()
    conns = []
    for i, p in enumerate(args.port):
        d, e = chans[2 * i], chans[2 * i + 1]
        conns.append({
            "port": p,
            "data_port_prefix": d["first"],
            "error_port_prefix": e["first"],
            "data": d["data"].decode("utf-8", "replace"),
            "error_stream": e["data"].decode("utf-8", "replace"),
        })
    report = {
        "http_status": 101,
        "protocol": ws.getsubprotocol() or "",
        "conns": conns,
        "closed_by_server": closed,
        "unknown_channels": sorted(set(unknown)),
        "millis": int((time.monotonic() - start) * 1000),
    }
    ok = closed or args.idle is not None
    if not ok:
        report["error"] = f"the server did not close the session within {args.timeout}s"
    return report, ok


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["exec", "attach", "portforward"])
    p.add_argument("url")
    p.add_argument("--protocols", help="comma-separated subprotocols, preferred first")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--stdin-data")
    p.add_argument("--stdin-delay", type=float, default=0)
    p.add_argument("--no-stdin-close", action="store_true")
    p.add_argument("--resize", action="append", default=[], help="WIDTHxHEIGHT (repeatable)")
    p.add_argument("--resize-delay", type=float, default=0.3)
    p.add_argument("--port", action="append", type=int, default=[])
    p.add_argument("--payload", action="append", help="data for the port of the same rank")
    p.add_argument("--idle", type=float, help="portforward: stop after this long without data")
    args = p.parse_args()
    if args.mode == "portforward":
        if not args.port:
            p.error("portforward needs --port")
        report, ok = portforward(args)
    else:
        if args.protocols is None:
            args.protocols = "v5.channel.k8s.io,v4.channel.k8s.io"
        report, ok = remote(args)
    print(json.dumps(report))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
