package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"time"
)

// pprofListen opens the listener of --debug-pprof. ADDR is a loopback host:port
// (127.0.0.1:6060, [::1]:6060, localhost:6060) or a unix socket path; a relative
// path is under the state directory, so that agents given the same flag (the lab's
// --agent-arg) each get their own, reachable from the host's namespace (a path
// socket, unlike a port, does not belong to a network namespace). The endpoint has
// no authentication and shows the process's memory: a TCP address must be loopback.
func pprofListen(addr, stateDir string) (net.Listener, error) {
	if host, _, err := net.SplitHostPort(addr); err == nil && !filepath.IsAbs(addr) {
		if host != "localhost" {
			ip := net.ParseIP(host)
			if ip == nil || !ip.IsLoopback() {
				return nil, fmt.Errorf("--debug-pprof %q: a TCP address must be loopback (the profiles have no authentication); or give a unix socket path", addr)
			}
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("--debug-pprof: %w", err)
		}
		return ln, nil
	}
	path := addr
	if !filepath.IsAbs(path) {
		path = filepath.Join(stateDir, path)
	}
	// A socket left by an agent that died is in the way; anything else is not ours.
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("--debug-pprof: %s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("--debug-pprof: remove stale socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("--debug-pprof: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("--debug-pprof: %w", err)
	}
	return ln, nil
}

// pprofHandler serves net/http/pprof's endpoints under /debug/pprof/.
func pprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// servePprof serves the profiles on ln until ctx ends.
func servePprof(ctx context.Context, ln net.Listener, log *slog.Logger) {
	srv := &http.Server{Handler: pprofHandler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("serving CPU and heap profiles (--debug-pprof)", "addr", ln.Addr().String())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("pprof server stopped; the agent runs on", "err", err)
	}
}
