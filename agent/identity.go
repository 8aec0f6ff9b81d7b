package agent

import (
	"errors"
	"fmt"
)

// errSameName: the peer runs under this host's own name.
var errSameName = errors.New("a primary and its backup must run under different host names")

// checkPeerName refuses a peer whose host name is empty or this host's own. Epoch
// claims are owned by host names, and a claim held by one's own name counts as one's
// own earlier retry (disk.decideClaim): with one name on both sides both copies win
// the same epoch in a partition, and the backup takes the primary's `unprotect` claim
// for a planned failover and goes live beside it. role is what the peer is ("primary"
// or "backup"), for the message.
func checkPeerName(own, peer, role string) error {
	switch peer {
	case "":
		return fmt.Errorf("the %s gave no host name", role)
	case own:
		return fmt.Errorf("%w: the %s calls itself %q, this host's own name (start each agent with its own --host)", errSameName, role, peer)
	}
	return nil
}
