// grpcgo: one unary gRPC call over a unix socket with Debian's grpc-go (1.33), dialled the
// way kubelet's remote runtime client and crictl up to 1.26 dial: the socket path as the
// target, a unix dialer, and grpc-go's default authority handling, which puts that path in
// the HTTP/2 :authority.
//
//	GOPATH=/usr/share/gocode GO111MODULE=off go build -o grpcgo ./tests/clients/grpcgo
//	grpcgo -socket /run/taskd/taskd.sock [-method /runtime.v1.RuntimeService/Version]
//
// The request is empty (every field at its default); the answer's length-delimited fields
// are printed as strings. The last line on stdout is one JSON report; exit status 0 when
// the call succeeded, 1 otherwise.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// raw passes the message bytes through unchanged, so no generated code is needed.
type raw struct{}

func (raw) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (raw) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (raw) Name() string { return "proto" }

type report struct {
	Target string            `json:"target"`
	Method string            `json:"method"`
	OK     bool              `json:"ok"`
	Code   string            `json:"code,omitempty"`
	Error  string            `json:"error,omitempty"`
	Fields map[string]string `json:"fields,omitempty"`
}

func main() {
	socket := flag.String("socket", "", "unix socket path")
	method := flag.String("method", "/runtime.v1.RuntimeService/Version", "full method name")
	timeout := flag.Duration("timeout", 30*time.Second, "bound on dial + call")
	flag.Parse()
	if *socket == "" {
		fmt.Fprintln(os.Stderr, "usage: grpcgo -socket PATH [-method /pkg.Service/Method]")
		os.Exit(2)
	}
	r := report{Target: *socket, Method: *method}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	dialer := func(ctx context.Context, addr string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", addr)
	}
	conn, err := grpc.DialContext(ctx, *socket, grpc.WithInsecure(), grpc.WithBlock(), grpc.WithContextDialer(dialer))
	if err != nil {
		r.Error = "dial: " + err.Error()
		finish(r)
	}
	defer conn.Close()
	req, resp := []byte{}, []byte{}
	if err := conn.Invoke(ctx, *method, &req, &resp, grpc.ForceCodec(raw{})); err != nil {
		st, _ := status.FromError(err)
		r.Code, r.Error = st.Code().String(), st.Message()
		finish(r)
	}
	r.OK = true
	r.Fields = stringFields(resp)
	finish(r)
}

func finish(r report) {
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
	if !r.OK {
		os.Exit(1)
	}
	os.Exit(0)
}

// stringFields decodes the length-delimited fields of a protobuf message: {"N": text}.
func stringFields(b []byte) map[string]string {
	out := map[string]string{}
	for i := 0; i < len(b); {
		key, n := varint(b[i:])
		if n == 0 {
			break
		}
		i += n
		switch key & 7 {
		case 0:
			_, n = varint(b[i:])
			i += n
		case 2:
			l, n := varint(b[i:])
			i += n
			if i+int(l) > len(b) {
				return out
			}
			out[fmt.Sprint(key>>3)] = string(b[i : i+int(l)])
			i += int(l)
		default:
			return out
		}
	}
	return out
}

func varint(b []byte) (uint64, int) {
	var v uint64
	for i := 0; i < len(b) && i < 10; i++ {
		v |= uint64(b[i]&0x7f) << (7 * uint(i))
		if b[i] < 0x80 {
			return v, i + 1
		}
	}
	return 0, 0
}
