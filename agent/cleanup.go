package agent

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
)

// cleanupStack undoes a VM's start steps in reverse order, once. Steps push as they
// succeed; stop or a failed start runs the stack.
type cleanupStack struct {
	mu  sync.Mutex
	fns []func() error
}

func (c *cleanupStack) push(fn func() error) {
	c.mu.Lock()
	c.fns = append(c.fns, fn)
	c.mu.Unlock()
}

// run calls every pushed function, newest first, and logs failures.
func (c *cleanupStack) run(log *slog.Logger) {
	c.mu.Lock()
	fns := c.fns
	c.fns = nil
	c.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		if err := fns[i](); err != nil {
			log.Warn("cleanup", "err", err)
		}
	}
}

// waitStopped waits for a VM's teardown to close finished, or for ctx to end: then
// it returns an error and the teardown goes on in its own goroutine (a stop path
// never hangs its caller, whatever the teardown waits for).
func waitStopped(ctx context.Context, finished <-chan struct{}, log *slog.Logger, vm string) error {
	select {
	case <-finished:
		return nil
	case <-ctx.Done():
		log.Error("vm did not stop in time; its teardown goes on", "err", ctx.Err())
		return fmt.Errorf("vm %s did not stop in time: %w", vm, ctx.Err())
	}
}
