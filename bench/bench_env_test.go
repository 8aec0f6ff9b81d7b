package bench

import "testing"

func TestAgentQEMU(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"ftvmd", "bench", "net"}, ""},
		{[]string{"ftvmd", "bench", "net", "--agent-arg=--qemu=/usr/bin/qemu-system-x86_64"}, "/usr/bin/qemu-system-x86_64"},
		{[]string{"ftvmd", "bench", "net", "--agent-arg", "--qemu=/x"}, "/x"},
		{[]string{"ftvmd", "bench", "net", "--agent-arg=--cpus=1"}, ""},
	} {
		if got := agentQEMU(tc.args); got != tc.want {
			t.Errorf("agentQEMU(%q) = %q, want %q", tc.args, got, tc.want)
		}
	}
}
