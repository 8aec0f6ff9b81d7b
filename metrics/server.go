package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Path is where the metrics are served.
const Path = "/metrics"

// NewRegistry is a registry (no global state) holding src's collector and the Go
// runtime's and the process's collectors.
func NewRegistry(src Source) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{
		NewCollector(src),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	return reg, nil
}

// Handler serves reg's metrics on Path.
func Handler(reg *prometheus.Registry, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(Path, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            slogLogger{log},
		ErrorHandling:       promhttp.ContinueOnError, // a bad metric must not hide the others
		Timeout:             10 * time.Second,
		MaxRequestsInFlight: 4,
	}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, "ftvmd agent: metrics on %s\n", Path)
	})
	return mux
}

// Serve serves src's metrics on ln until ctx ends; it closes ln.
func Serve(ctx context.Context, ln net.Listener, src Source, log *slog.Logger) error {
	reg, err := NewRegistry(src)
	if err != nil {
		ln.Close()
		return err
	}
	srv := &http.Server{
		Handler:           Handler(reg, log),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	// The shutdown goroutine ends with Serve: on ctx's end it stops Serve, and
	// when Serve fails on its own, cancel wakes it.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-sctx.Done()
		tctx, tcancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer tcancel()
		_ = srv.Shutdown(tctx)
	}()
	log.Info("serving metrics", "addr", ln.Addr().String(), "path", Path)
	err = srv.Serve(ln)
	cancel()
	<-done
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics server: %w", err)
	}
	return nil
}

// slogLogger is promhttp's error logger on slog.
type slogLogger struct{ log *slog.Logger }

func (l slogLogger) Println(v ...any) { l.log.Warn("metrics", "err", fmt.Sprint(v...)) }
