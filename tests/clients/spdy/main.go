// spdyclient: the client side of kubelet's streaming protocols over SPDY/3.1, written from
// the protocol with github.com/moby/spdystream (the SPDY library Kubernetes clients use), so
// taskd's streaming server is tested by an implementation that shares none of its code.
//
// Built during test set-up, from Debian packages only (golang-go,
// golang-github-moby-spdystream-dev):
//
//	GOPATH=/usr/share/gocode GO111MODULE=off go build -o spdyclient ./tests/clients/spdy
//
// Usage:
//
//	spdyclient exec|attach [flags] URL
//	spdyclient portforward [flags] -conn PORT[:PAYLOAD] [-conn ...] URL
//
// Whatever happens, the last line on stdout is one JSON report (see Report and PortReport);
// the remote stdout/stderr are in it (and also written to -stdout-file/-stderr-file). The exit
// status is 0 when the session ran to its end (whatever the remote exit code), 2 for bad
// usage, 1 when the session failed on the client side (the report's "error" says why).
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/spdystream"
)

const allRemotecommand = "v4.channel.k8s.io,v3.channel.k8s.io,v2.channel.k8s.io,channel.k8s.io"

// Report is what an exec or attach session printed (the last line on stdout).
type Report struct {
	// HTTP status of the upgrade answer (101 when upgraded).
	HTTPStatus int `json:"http_status"`
	// Body of a refused upgrade (first 4 KiB).
	HTTPBody string `json:"http_body,omitempty"`
	// X-Stream-Protocol-Version the server chose.
	Protocol string `json:"protocol"`
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	// Everything the server wrote on the error stream.
	ErrorStream string `json:"error_stream"`
	// The error stream decoded as a v4 Status (v4.channel.k8s.io only).
	Status *Status `json:"status,omitempty"`
	// The remote exit code: from the v4 Status (0 on Success, ExitCode cause otherwise);
	// for older protocols 0 when the error stream is empty, else -1.
	ExitCode int `json:"exit_code"`
	// A client-side failure (upgrade refused, stream not accepted, timeout).
	Error string `json:"error,omitempty"`
	// Milliseconds from the upgrade request to the end of the session.
	Millis int64 `json:"millis"`
}

// Status is the subset of metav1.Status that remotecommand v4 sends on the error stream.
type Status struct {
	Status  string `json:"status"`
	Message string `json:"message,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Details *struct {
		Causes []struct {
			Reason  string `json:"reason"`
			Message string `json:"message"`
		} `json:"causes,omitempty"`
	} `json:"details,omitempty"`
}

// PortReport is what a port-forward session printed (the last line on stdout).
type PortReport struct {
	HTTPStatus int        `json:"http_status"`
	HTTPBody   string     `json:"http_body,omitempty"`
	Protocol   string     `json:"protocol"`
	Conns      []ConnInfo `json:"conns"`
	Error      string     `json:"error,omitempty"`
	Millis     int64      `json:"millis"`
}

// ConnInfo is one forwarded connection: what came back on its data and error streams.
type ConnInfo struct {
	Port        int    `json:"port"`
	RequestID   int    `json:"request_id"`
	Data        string `json:"data"`
	ErrorStream string `json:"error_stream"`
	Error       string `json:"error,omitempty"`
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, " ") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	protocols := fs.String("protocols", "", "comma-separated X-Stream-Protocol-Version list, preferred first")
	method := fs.String("method", "POST", "HTTP method of the upgrade request")
	timeout := fs.Duration("timeout", 60*time.Second, "bound on the whole session")
	stdin := fs.Bool("stdin", false, "create the stdin stream and copy our stdin to it")
	stdinData := fs.String("stdin-data", "", "send these bytes on the stdin stream instead of our stdin (implies -stdin)")
	stdinDelay := fs.Duration("stdin-delay", 0, "wait this long after the streams are up before sending stdin")
	stdinHold := fs.Duration("stdin-hold", 0, "wait this long after sending stdin before half-closing it")
	noStdinClose := fs.Bool("no-stdin-close", false, "never half-close the stdin stream")
	stdout := fs.Bool("stdout", true, "create the stdout stream")
	stderr := fs.Bool("stderr", true, "create the stderr stream (ignored with -tty)")
	tty := fs.Bool("tty", false, "a terminal session: no stderr stream; a resize stream with v3+")
	var resizes listFlag
	fs.Var(&resizes, "resize", "WIDTHxHEIGHT to send on the resize stream (repeatable; implies the resize stream)")
	resizeDelay := fs.Duration("resize-delay", 300*time.Millisecond, "pause between two -resize messages")
	stdoutFile := fs.String("stdout-file", "", "also write the remote stdout here")
	stderrFile := fs.String("stderr-file", "", "also write the remote stderr here")
	var dupStream listFlag
	fs.Var(&dupStream, "dup-stream", "create a second stream of this type right after the first (bad input for the server)")
	var conns listFlag
	fs.Var(&conns, "conn", "portforward: PORT[:PAYLOAD], one connection each (repeatable, run concurrently)")
	halfClose := fs.Bool("half-close", false, "portforward: half-close each data stream after its payload")
	idle := fs.Duration("read-idle", 0, "portforward: stop reading a data stream after this long without data (0: read to EOF)")
	_ = fs.Parse(os.Args[2:])
	if fs.NArg() != 1 {
		usage()
	}
	target := fs.Arg(0)

	switch mode {
	case "exec", "attach":
		if *protocols == "" {
			*protocols = allRemotecommand
		}
		o := remoteOpts{
			stdin: *stdin || *stdinData != "", stdinData: *stdinData, hasStdinData: *stdinData != "",
			stdinDelay: *stdinDelay, stdinHold: *stdinHold, closeStdin: !*noStdinClose,
			stdout: *stdout, stderr: *stderr && !*tty, tty: *tty,
			resizes: resizes, resizeDelay: *resizeDelay, dup: dupStream,
			stdoutFile: *stdoutFile, stderrFile: *stderrFile,
		}
		r := remote(target, *method, strings.Split(*protocols, ","), *timeout, o)
		finish(r, r.Error)
	case "portforward":
		if *protocols == "" {
			*protocols = "portforward.k8s.io"
		}
		if len(conns) == 0 {
			usage()
		}
		r := portforward(target, *method, strings.Split(*protocols, ","), *timeout, conns, *halfClose, *idle)
		finish(r, r.Error)
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: spdyclient exec|attach [flags] URL\n       spdyclient portforward [flags] -conn PORT[:PAYLOAD] ... URL")
	os.Exit(2)
}

func finish(report interface{}, err string) {
	b, _ := json.Marshal(report)
	fmt.Println(string(b))
	if err != "" {
		os.Exit(1)
	}
}

// upgrade sends the SPDY/3.1 upgrade request and returns the SPDY connection, the HTTP
// status and the chosen protocol (or the refusal's body).
func upgrade(target, method string, protocols []string) (*spdystream.Connection, int, string, string, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, 0, "", "", err
	}
	var conn net.Conn
	switch u.Scheme {
	case "http":
		conn, err = net.DialTimeout("tcp", u.Host, 10*time.Second)
	case "https":
		// taskd's self-signed pair when enable_tls_streaming has no cert: not verified here.
		conn, err = tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", u.Host, &tls.Config{InsecureSkipVerify: true})
	default:
		err = fmt.Errorf("unsupported scheme %q", u.Scheme)
	}
	if err != nil {
		return nil, 0, "", "", err
	}
	req, err := http.NewRequest(method, target, nil)
	if err != nil {
		conn.Close()
		return nil, 0, "", "", err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "SPDY/3.1")
	for _, p := range protocols {
		req.Header.Add("X-Stream-Protocol-Version", p)
	}
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, 0, "", "", err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		return nil, 0, "", "", fmt.Errorf("reading the upgrade answer: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		conn.Close()
		return nil, resp.StatusCode, "", string(body), fmt.Errorf("upgrade refused: %s", resp.Status)
	}
	if !strings.EqualFold(resp.Header.Get("Upgrade"), "SPDY/3.1") {
		conn.Close()
		return nil, resp.StatusCode, "", "", fmt.Errorf("upgraded to %q, not SPDY/3.1", resp.Header.Get("Upgrade"))
	}
	proto := resp.Header.Get("X-Stream-Protocol-Version")
	// Bytes the server sent right after its answer are in br: read through it.
	sc, err := spdystream.NewConnection(&bufferedConn{Conn: conn, r: br}, false)
	if err != nil {
		conn.Close()
		return nil, resp.StatusCode, proto, "", err
	}
	// The server opens no streams of its own; answer any it does and move on.
	go sc.Serve(spdystream.NoOpStreamHandler)
	return sc, resp.StatusCode, proto, "", nil
}

type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// stream creates a stream with these headers and waits for the server's reply.
func stream(sc *spdystream.Connection, h http.Header) (*spdystream.Stream, error) {
	s, err := sc.CreateStream(h, nil, false)
	if err != nil {
		return nil, fmt.Errorf("create %s stream: %w", h.Get("streamType"), err)
	}
	// The reply, a reset, or the end of the connection (which spdystream does not pass on
	// to a stream still waiting for its reply).
	replied := make(chan error, 1)
	go func() { replied <- s.WaitTimeout(30 * time.Second) }()
	select {
	case err := <-replied:
		if err != nil {
			return nil, fmt.Errorf("%s stream not accepted: %w", h.Get("streamType"), err)
		}
	case <-sc.CloseChan():
		return nil, fmt.Errorf("%s stream not accepted: the server closed the connection", h.Get("streamType"))
	}
	return s, nil
}

type remoteOpts struct {
	stdin, hasStdinData, closeStdin, stdout, stderr, tty bool
	stdinData                                            string
	stdinDelay, stdinHold, resizeDelay                   time.Duration
	resizes, dup                                         []string
	stdoutFile, stderrFile                               string
}

func remote(target, method string, protocols []string, timeout time.Duration, o remoteOpts) (r Report) {
	start := time.Now()
	r.ExitCode = -1
	defer func() { r.Millis = time.Since(start).Milliseconds() }()
	type result struct{ err error }
	done := make(chan result, 1)
	var mu sync.Mutex // guards r while the session runs
	var sc *spdystream.Connection
	go func() {
		var err error
		var status int
		var proto, body string
		sc, status, proto, body, err = upgrade(target, method, protocols)
		mu.Lock()
		r.HTTPStatus, r.Protocol, r.HTTPBody = status, proto, body
		mu.Unlock()
		if err != nil {
			done <- result{err}
			return
		}
		done <- result{session(sc, proto, o, &r, &mu)}
	}()
	select {
	case res := <-done:
		if res.err != nil {
			r.Error = res.err.Error()
		}
	case <-time.After(timeout):
		mu.Lock()
		r.Error = fmt.Sprintf("session did not end within %s", timeout)
		mu.Unlock()
	}
	mu.Lock()
	defer mu.Unlock()
	if sc != nil {
		sc.Close()
	}
	return r
}

func session(sc *spdystream.Connection, proto string, o remoteOpts, r *Report, mu *sync.Mutex) error {
	mk := func(kind string) (*spdystream.Stream, error) {
		h := http.Header{}
		h.Set("streamType", kind)
		s, err := stream(sc, h)
		if err != nil {
			return nil, err
		}
		// -dup-stream: the same type again right away, before the set is complete.
		for _, d := range o.dup {
			if d == kind {
				if _, err := stream(sc, h); err != nil {
					return nil, fmt.Errorf("duplicate stream: %w", err)
				}
			}
		}
		return s, nil
	}
	// The error stream first (remotecommand v2+), then the others.
	errS, err := mk("error")
	if err != nil {
		return err
	}
	// Nothing is ever written to the error stream by the client.
	_ = errS.Close()
	var stdinS, stdoutS, stderrS, resizeS *spdystream.Stream
	if o.stdin {
		if stdinS, err = mk("stdin"); err != nil {
			return err
		}
	}
	if o.stdout {
		if stdoutS, err = mk("stdout"); err != nil {
			return err
		}
	}
	if o.stderr {
		if stderrS, err = mk("stderr"); err != nil {
			return err
		}
	}
	if (o.tty && (proto == "v4.channel.k8s.io" || proto == "v3.channel.k8s.io")) || len(o.resizes) > 0 {
		if resizeS, err = mk("resize"); err != nil {
			return err
		}
	}

	var wg sync.WaitGroup
	var outBuf, errBuf, errStreamBuf bytes.Buffer
	readAll := func(s *spdystream.Stream, buf *bytes.Buffer, file string) {
		defer wg.Done()
		var w io.Writer = buf
		if file != "" {
			if f, err := os.Create(file); err == nil {
				defer f.Close()
				w = io.MultiWriter(buf, f)
			}
		}
		_, _ = io.Copy(w, s)
	}
	if stdoutS != nil {
		wg.Add(1)
		go readAll(stdoutS, &outBuf, o.stdoutFile)
	}
	if stderrS != nil {
		wg.Add(1)
		go readAll(stderrS, &errBuf, o.stderrFile)
	}
	errDone := make(chan struct{})
	go func() {
		_, _ = io.Copy(&errStreamBuf, errS)
		close(errDone)
	}()
	if resizeS != nil {
		go func() {
			for i, sz := range o.resizes {
				if i > 0 {
					time.Sleep(o.resizeDelay)
				}
				var w, h uint16
				if _, err := fmt.Sscanf(sz, "%dx%d", &w, &h); err != nil {
					continue
				}
				b, _ := json.Marshal(map[string]uint16{"Width": w, "Height": h})
				_, _ = resizeS.Write(b)
			}
		}()
	}
	if stdinS != nil {
		go func() {
			time.Sleep(o.stdinDelay)
			if o.hasStdinData {
				_, _ = stdinS.Write([]byte(o.stdinData))
			} else {
				_, _ = io.Copy(stdinS, os.Stdin)
			}
			time.Sleep(o.stdinHold)
			if o.closeStdin {
				_ = stdinS.Close()
			}
		}()
	}
	wg.Wait()
	<-errDone

	mu.Lock()
	defer mu.Unlock()
	r.Stdout, r.Stderr, r.ErrorStream = outBuf.String(), errBuf.String(), errStreamBuf.String()
	r.ExitCode = exitCode(proto, r)
	return nil
}

// exitCode decodes the remote exit code from the error stream (Status in v4).
func exitCode(proto string, r *Report) int {
	if proto != "v4.channel.k8s.io" {
		if strings.TrimSpace(r.ErrorStream) == "" {
			return 0
		}
		return -1
	}
	if strings.TrimSpace(r.ErrorStream) == "" {
		return -1
	}
	var st Status
	if err := json.Unmarshal([]byte(r.ErrorStream), &st); err != nil {
		return -1
	}
	r.Status = &st
	if st.Status == "Success" {
		return 0
	}
	if st.Reason == "NonZeroExitCode" && st.Details != nil {
		for _, c := range st.Details.Causes {
			if c.Reason == "ExitCode" {
				if n, err := strconv.Atoi(c.Message); err == nil {
					return n
				}
			}
		}
	}
	return -1
}

func portforward(target, method string, protocols []string, timeout time.Duration, conns []string, halfClose bool, idle time.Duration) (r PortReport) {
	start := time.Now()
	defer func() { r.Millis = time.Since(start).Milliseconds() }()
	sc, status, proto, body, err := upgrade(target, method, protocols)
	r.HTTPStatus, r.Protocol, r.HTTPBody = status, proto, body
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer sc.Close()
	r.Conns = make([]ConnInfo, len(conns))
	var wg sync.WaitGroup
	deadline := time.Now().Add(timeout)
	for i, spec := range conns {
		port, payload := spec, ""
		if k := strings.IndexByte(spec, ':'); k >= 0 {
			port, payload = spec[:k], spec[k+1:]
		}
		n, err := strconv.Atoi(port)
		if err != nil {
			r.Error = fmt.Sprintf("bad -conn %q", spec)
			return r
		}
		r.Conns[i] = ConnInfo{Port: n, RequestID: i}
		wg.Add(1)
		go func(c *ConnInfo, port, payload string) {
			defer wg.Done()
			if err := forward(sc, c, port, payload, halfClose, idle, deadline); err != nil {
				c.Error = err.Error()
			}
		}(&r.Conns[i], port, payload)
	}
	wg.Wait()
	if time.Now().After(deadline) {
		r.Error = fmt.Sprintf("session did not end within %s", timeout)
	}
	return r
}

// forward runs one port-forward connection: error stream (closed for writing at once),
// data stream, payload out, everything back until EOF (or idle / the deadline).
func forward(sc *spdystream.Connection, c *ConnInfo, port, payload string, halfClose bool, idle time.Duration, deadline time.Time) error {
	h := http.Header{}
	h.Set("streamType", "error")
	h.Set("port", port)
	h.Set("requestID", strconv.Itoa(c.RequestID))
	errS, err := stream(sc, h)
	if err != nil {
		return err
	}
	_ = errS.Close()
	h = h.Clone()
	h.Set("streamType", "data")
	dataS, err := stream(sc, h)
	if err != nil {
		return err
	}
	var errBuf syncBuffer
	errDone := make(chan struct{})
	go func() {
		_, _ = io.Copy(&errBuf, errS)
		close(errDone)
	}()
	if payload != "" {
		if _, err := dataS.Write([]byte(payload)); err != nil {
			return fmt.Errorf("write payload: %w", err)
		}
	}
	if halfClose {
		_ = dataS.Close()
	}
	var data bytes.Buffer
	chunks := make(chan []byte)
	go func() {
		defer close(chunks)
		for {
			b, err := dataS.ReadData()
			if err != nil {
				return
			}
			chunks <- b
		}
	}()
	var timeoutErr error
loop:
	for {
		var idleC <-chan time.Time
		if idle > 0 {
			idleC = time.After(idle)
		}
		select {
		case b, ok := <-chunks:
			if !ok {
				break loop
			}
			data.Write(b)
		case <-idleC:
			break loop
		case <-time.After(time.Until(deadline)):
			timeoutErr = errors.New("no EOF on the data stream before the deadline")
			break loop
		}
	}
	// The error stream ends with the connection: give it a moment after the data.
	select {
	case <-errDone:
	case <-time.After(2 * time.Second):
	}
	_ = dataS.Reset()
	c.Data = data.String()
	c.ErrorStream = errBuf.String()
	return timeoutErr
}

// syncBuffer is a bytes.Buffer that a reader goroutine may still write while it is read.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
