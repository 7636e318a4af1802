#!/usr/bin/env python3
"""A CRI and containerd-API client on Python grpcio, whose HTTP/2 stack (gRPC core, C) shares
nothing with taskd's, over grpcio's DEFAULT unix-socket channel: no authority override, so
it sends what grpcio sends for unix:///path (the socket path as :authority), like kubelet's
and crictl's older grpc-go does.

The CRI stubs are generated at run time with grpcio-tools from the repo's vendored
proto/protos/cri-api/api.proto (into --stubs DIR, or a temp dir). The containerd Version
call uses grpcio's generic unary_unary with an empty request and decodes the two string
fields of VersionResponse by hand.

    cri_grpc.py [--stubs DIR] SOCKET flow --image REF --pod JSON --container JSON
        Version, PullImage, RunPodSandbox, CreateContainer, StartContainer, ExecSync, Exec,
        containerd Version, StopContainer, Exec again (its answer recorded), RemoveContainer,
        StopPodSandbox, RemovePodSandbox, ListPodSandbox: one JSON report.
    cri_grpc.py [--stubs DIR] SOCKET call SERVICE/METHOD JSON
        One CRI call (SERVICE is RuntimeService or ImageService), request and answer in
        proto3 JSON (field names as in api.proto).
    cri_grpc.py [--stubs DIR] SOCKET authority [FORM ...]
        CRI Version, containerd Version and the server-streaming StreamPodSandboxes (or
        ListPodSandbox where the server lacks it) on the default channel and on one channel
        per explicit grpc.default_authority (default forms: the socket path, its
        percent-encoding, localhost, an arbitrary string).

The last line on stdout is always one JSON object. Exit status: 0 when every call behaved
(for `call`, when the RPC got an answer, OK or not), 1 otherwise, 2 for bad usage.
"""

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import urllib.parse

try:
    import grpc
    from google.protobuf import json_format
    from grpc_tools import protoc
except ImportError as e:  # the tests fail with this message, never skip
    print(json.dumps({"error": f"missing Python module ({e}): pip install grpcio grpcio-tools"}))
    sys.exit(1)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CRI_PROTO_DIR = os.path.join(REPO, "proto", "protos", "cri-api")
TIMEOUT = 120


def stubs(dest):
    """Generates api_pb2 / api_pb2_grpc into dest (once) and imports them."""
    if not os.path.exists(os.path.join(dest, "api_pb2_grpc.py")):
        tmp = tempfile.mkdtemp(dir=dest)
        rc = protoc.main([
            "grpc_tools.protoc",
            f"-I{CRI_PROTO_DIR}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            os.path.join(CRI_PROTO_DIR, "api.proto"),
        ])
        if rc != 0:
            raise SystemExit(f"grpc_tools.protoc failed ({rc}) on {CRI_PROTO_DIR}/api.proto")
        # Renamed into place last, so concurrent runs sharing dest see whole files only.
        for f in ("api_pb2.py", "api_pb2_grpc.py"):
            os.replace(os.path.join(tmp, f), os.path.join(dest, f))
        shutil.rmtree(tmp, ignore_errors=True)
    sys.path.insert(0, dest)
    return importlib.import_module("api_pb2"), importlib.import_module("api_pb2_grpc")


def channel(socket, authority=None):
    """grpcio's unix-socket channel; with `authority`, an explicit grpc.default_authority."""
    opts = [] if authority is None else [("grpc.default_authority", authority)]
    return grpc.insecure_channel("unix://" + socket, options=opts)


def rpc_error(e):
    return {"code": e.code().name, "details": e.details()}


def read_varint(b, i):
    n = shift = 0
    while True:
        byte = b[i]
        i += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, i


def decode_strings(b):
    """The length-delimited fields of a protobuf message: {field number: str}."""
    out, i = {}, 0
    while i < len(b):
        key, i = read_varint(b, i)
        field, wire = key >> 3, key & 7
        if wire == 2:
            n, i = read_varint(b, i)
            out[field] = b[i:i + n].decode("utf-8", "replace")
            i += n
        elif wire == 0:
            _, i = read_varint(b, i)
        else:
            raise ValueError(f"unexpected wire type {wire} in field {field}")
    return out


def containerd_version(ch):
    """containerd.services.version.v1.Version/Version: empty request, {version, revision}."""
    call = ch.unary_unary(
        "/containerd.services.version.v1.Version/Version",
        request_serializer=lambda _: b"",
        response_deserializer=lambda b: b,
    )
    fields = decode_strings(call(None, timeout=TIMEOUT))
    return {"version": fields.get(1, ""), "revision": fields.get(2, "")}


def to_dict(msg):
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def flow(pb, pbg, args):
    ch = channel(args.socket)
    rt = pbg.RuntimeServiceStub(ch)
    im = pbg.ImageServiceStub(ch)
    report = {}
    step = "Version"
    try:
        v = rt.Version(pb.VersionRequest(), timeout=TIMEOUT)
        report["version"] = to_dict(v)
        step = "PullImage"
        report["image_ref"] = im.PullImage(
            pb.PullImageRequest(image=pb.ImageSpec(image=args.image)), timeout=TIMEOUT
        ).image_ref
        pod_cfg = json_format.ParseDict(json.loads(args.pod), pb.PodSandboxConfig())
        step = "RunPodSandbox"
        pod = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_cfg), timeout=TIMEOUT).pod_sandbox_id
        report["pod"] = pod
        ctr_cfg = json_format.ParseDict(json.loads(args.container), pb.ContainerConfig())
        step = "CreateContainer"
        cid = rt.CreateContainer(
            pb.CreateContainerRequest(pod_sandbox_id=pod, config=ctr_cfg, sandbox_config=pod_cfg),
            timeout=TIMEOUT,
        ).container_id
        report["container"] = cid
        step = "StartContainer"
        rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=TIMEOUT)
        step = "ExecSync"
        r = rt.ExecSync(
            pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "echo exec-ok; echo err >&2; exit 3"], timeout=30),
            timeout=TIMEOUT,
        )
        report["exec_sync"] = {
            "stdout": r.stdout.decode("utf-8", "replace"),
            "stderr": r.stderr.decode("utf-8", "replace"),
            "exit_code": r.exit_code,
        }
        step = "Exec"
        report["exec_url"] = rt.Exec(
            pb.ExecRequest(container_id=cid, cmd=["echo", "hi"], stdout=True, stderr=True), timeout=TIMEOUT
        ).url
        step = "containerd Version"
        report["containerd_version"] = containerd_version(ch)
        step = "StopContainer"
        rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=TIMEOUT)
        step = "Exec after stop"
        try:
            rt.Exec(pb.ExecRequest(container_id=cid, cmd=["true"], stdout=True), timeout=TIMEOUT)
            report["exec_after_stop"] = {"code": "OK"}
        except grpc.RpcError as e:
            report["exec_after_stop"] = rpc_error(e)
        step = "RemoveContainer"
        rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=TIMEOUT)
        step = "StopPodSandbox"
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=TIMEOUT)
        step = "RemovePodSandbox"
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=TIMEOUT)
        step = "ListPodSandbox"
        report["pods_left"] = [p.id for p in rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=TIMEOUT).items]
    except grpc.RpcError as e:
        report["failed_step"] = step
        report["error"] = rpc_error(e)
        return report, False
    return report, True


def call(pb, pbg, args):
    service, _, method = args.method.partition("/")
    stub_cls = getattr(pbg, f"{service}Stub", None)
    if stub_cls is None or not method:
        raise SystemExit(f"unknown SERVICE/METHOD {args.method!r} (RuntimeService/... or ImageService/...)")
    fn = getattr(stub_cls(channel(args.socket)), method, None)
    req_cls = getattr(pb, f"{method}Request", None)
    if fn is None or req_cls is None:
        raise SystemExit(f"unknown method {args.method!r}")
    req = json_format.ParseDict(json.loads(args.request), req_cls())
    try:
        return {"response": to_dict(fn(req, timeout=TIMEOUT))}, True
    except grpc.RpcError as e:
        return {"error": rpc_error(e)}, True


def authority(pb, pbg, args):
    forms = args.forms or [
        args.socket,
        urllib.parse.quote(args.socket, safe=""),
        "localhost",
        "arbitrary-authority.example:1234",
    ]
    results, ok = [], True
    for form in [None] + forms:
        ch = channel(args.socket, form)
        rt = pbg.RuntimeServiceStub(ch)
        r = {"authority": form if form is not None else "(default)"}
        for name, fn in [
            ("cri_version", lambda: rt.Version(pb.VersionRequest(), timeout=TIMEOUT).runtime_name),
            ("containerd_version", lambda: containerd_version(ch)["version"]),
            ("stream", lambda: len(list(rt.StreamPodSandboxes(pb.StreamPodSandboxesRequest(), timeout=TIMEOUT)))),
        ]:
            try:
                r[name] = {"ok": fn()}
            except grpc.RpcError as e:
                r[name] = {"error": rpc_error(e)}
                ok = False
        ch.close()
        results.append(r)
    return {"results": results}, ok


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stubs", help="dir for the generated stubs (reused when present)")
    p.add_argument("socket")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("flow")
    f.add_argument("--image", required=True)
    f.add_argument("--pod", required=True, help="PodSandboxConfig as proto3 JSON")
    f.add_argument("--container", required=True, help="ContainerConfig as proto3 JSON")
    c = sub.add_parser("call")
    c.add_argument("method")
    c.add_argument("request")
    a = sub.add_parser("authority")
    a.add_argument("forms", nargs="*")
    args = p.parse_args()

    dest = args.stubs or tempfile.mkdtemp(prefix="cri-grpc-stubs-")
    os.makedirs(dest, exist_ok=True)
    try:
        pb, pbg = stubs(dest)
        report, ok = {"flow": flow, "call": call, "authority": authority}[args.cmd](pb, pbg, args)
    finally:
        if not args.stubs:
            shutil.rmtree(dest, ignore_errors=True)
    print(json.dumps(report))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
