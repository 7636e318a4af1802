#!/usr/bin/env python3
"""An OTLP/gRPC trace collector stand-in on Python grpcio, whose HTTP/2 stack (gRPC core, C)
shares nothing with taskd's (tonic, h2). It serves
opentelemetry.proto.collector.trace.v1.TraceService/Export with the stubs of PyPI's
opentelemetry-proto, on 127.0.0.1 at a free port, and appends every span it receives to OUT
as one JSON object per line:

    {"trace_id", "span_id", "parent_span_id" (hex, "" for a root), "name", "kind"
     ("server", "client", "internal", ...), "status" (0 unset, 1 ok, 2 error),
     "attributes" {key: value}, "service_name", "start", "end" (unix ns)}

    otlp_collector.py OUT [--seconds N]

The first stdout line is {"port": N} once it serves. It stops by itself after N seconds
(default 600), or on SIGTERM / SIGINT.
"""

import argparse
import json
import signal
import sys
import threading
from concurrent import futures

try:
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
except ImportError as e:  # the test fails with this message, never skips
    print(json.dumps({"error": f"missing Python module ({e}): pip install grpcio opentelemetry-proto"}))
    sys.exit(1)

KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def value(v):
    """An OTLP AnyValue as JSON (arrays, maps and bytes as their text)."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    x = getattr(v, which)
    if which in ("array_value", "kvlist_value", "bytes_value"):
        return str(x)
    return x


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out):
        self.out = out
        self.lock = threading.Lock()

    def Export(self, request, context):
        lines = []
        for rs in request.resource_spans:
            resource = {kv.key: value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    lines.append(json.dumps({
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "name": s.name,
                        "kind": KINDS.get(s.kind, str(s.kind)),
                        "status": s.status.code,
                        "attributes": {kv.key: value(kv.value) for kv in s.attributes},
                        "service_name": resource.get("service.name"),
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                    }))
        with self.lock, open(self.out, "a", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--seconds", type=float, default=600)
    args = p.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(args.out), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(json.dumps({"port": port}), flush=True)
    stop.wait(args.seconds)
    server.stop(1).wait()


if __name__ == "__main__":
    main()
