// Package packaging holds what the Debian package installs besides the binaries:
// the agent's systemd unit (ftvmd-agent.service). mkdeb/ builds the package; the
// tests here check the files themselves.
package packaging
