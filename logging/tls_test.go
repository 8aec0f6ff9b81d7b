package logging

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestInitCAAndIssue(t *testing.T) {
	k := makeKeys(t, "test CA")
	if err := InitCA(k.ca, "again"); !errors.Is(err, ErrExists) {
		t.Fatalf("second InitCA: %v, want ErrExists", err)
	}
	for _, p := range []string{filepath.Join(k.ca, CAKeyFile), filepath.Join(k.server, HostKeyFile)} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %v, want 0600", p, fi.Mode().Perm())
		}
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(k.server, HostCertFile), filepath.Join(k.server, HostKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	c := pair.Leaf
	if c == nil {
		t.Fatal("no leaf")
	}
	pub, ok := c.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Fatalf("key %T, want ECDSA P-256", c.PublicKey)
	}
	if len(c.DNSNames) != 1 || c.DNSNames[0] != "backup.test" || len(c.IPAddresses) != 1 || !c.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) {
		t.Fatalf("SANs %v %v", c.DNSNames, c.IPAddresses)
	}
	eku := map[x509.ExtKeyUsage]bool{}
	for _, u := range c.ExtKeyUsage {
		eku[u] = true
	}
	if !eku[x509.ExtKeyUsageServerAuth] || !eku[x509.ExtKeyUsageClientAuth] {
		t.Fatalf("ExtKeyUsage %v", c.ExtKeyUsage)
	}
}

func TestMutualTLS(t *testing.T) {
	k := makeKeys(t, "good CA")
	other := makeKeys(t, "other CA")

	t.Run("ok", func(t *testing.T) {
		srv, cli, serr, cerr := tlsDial(t, serverCfg(t, k.server), clientCfg(t, k.client))
		if serr != nil || cerr != nil {
			t.Fatalf("server %v, client %v", serr, cerr)
		}
		defer srv.Close()
		defer cli.Close()
		for _, c := range []net.Conn{srv, cli} {
			st := c.(*tls.Conn).ConnectionState()
			if st.Version != tls.VersionTLS13 || len(st.PeerCertificates) == 0 {
				t.Fatalf("state: version %x, %d peer certs", st.Version, len(st.PeerCertificates))
			}
		}
		// Handshake messages flow.
		type hello struct{ VM string }
		go WriteHello(cli, hello{"vm1"})
		var h hello
		if err := ReadHello(srv, &h); err != nil || h.VM != "vm1" {
			t.Fatalf("ReadHello: %+v %v", h, err)
		}
	})
	t.Run("client-from-other-CA", func(t *testing.T) {
		srv, cli, serr, cerr := tlsDial(t, serverCfg(t, k.server), clientCfg(t, other.client))
		if serr == nil {
			srv.Close()
			t.Fatal("server accepted a client certificate from another CA")
		}
		t.Logf("server refused: %v", serr)
		if cerr == nil {
			// TLS 1.3: the client learns on its first read.
			defer cli.Close()
			cli.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := cli.Read(make([]byte, 1)); err == nil {
				t.Fatal("client read succeeded")
			}
		}
	})
	t.Run("server-from-other-CA", func(t *testing.T) {
		srv, cli, serr, cerr := tlsDial(t, serverCfg(t, other.server), clientCfg(t, k.client))
		if cerr == nil {
			cli.Close()
			t.Fatal("client accepted a server certificate from another CA")
		}
		t.Logf("client refused: %v", cerr)
		if serr == nil {
			srv.Close()
		}
	})
	t.Run("tls12-client", func(t *testing.T) {
		c := clientCfg(t, k.client)
		c.MinVersion, c.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
		srv, cli, serr, cerr := tlsDial(t, serverCfg(t, k.server), c)
		if serr == nil || cerr == nil {
			if srv != nil {
				srv.Close()
			}
			if cli != nil {
				cli.Close()
			}
			t.Fatalf("TLS 1.2 client accepted: server %v client %v", serr, cerr)
		}
		t.Logf("refused: %v", serr)
	})
	t.Run("tls12-server", func(t *testing.T) {
		s := serverCfg(t, k.server)
		s.MinVersion, s.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
		srv, cli, serr, cerr := tlsDial(t, s, clientCfg(t, k.client))
		if cerr == nil {
			cli.Close()
			t.Fatal("client accepted a TLS 1.2 server")
		}
		if srv != nil {
			srv.Close()
		}
		t.Logf("refused: client %v, server %v", cerr, serr)
	})
	t.Run("plain-tcp-client", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				return
			}
			defer c.Close()
			WriteHello(c, map[string]string{"vm": "x"})
			c.Read(make([]byte, 1))
		}()
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if tc, err := ServerHandshake(ctx, c, serverCfg(t, k.server)); err == nil {
			tc.Close()
			t.Fatal("server accepted a plain TCP peer")
		} else {
			t.Logf("refused: %v", err)
		}
	})
	t.Run("plain-tcp-server", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			WriteHello(c, map[string]string{"vm": "x"})
			c.Read(make([]byte, 1))
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if c, err := Dial(ctx, ln.Addr().String(), clientCfg(t, k.client), 0); err == nil {
			c.Close()
			t.Fatal("client accepted a plain TCP server")
		} else {
			t.Logf("refused: %v", err)
		}
	})
}

func TestHello(t *testing.T) {
	type spec struct {
		VM   string
		Size int
	}
	t.Run("roundtrip", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		go func() {
			WriteHello(a, spec{"vm1", 512})
			var r spec
			ReadHelloReply(a, &r)
		}()
		var s spec
		if err := ReadHello(b, &s); err != nil || s != (spec{"vm1", 512}) {
			t.Fatalf("ReadHello %+v %v", s, err)
		}
		if err := WriteHelloReply(b, spec{"ok", 1}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("refused", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		go WriteRefusal(b, "unknown VM")
		var r spec
		if err := ReadHelloReply(a, &r); !errors.Is(err, ErrPeerRefused) {
			t.Fatalf("ReadHelloReply: %v, want ErrPeerRefused", err)
		}
	})
	t.Run("wrong-type", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		go WriteHelloReply(b, spec{})
		var r spec
		if err := ReadHello(a, &r); !errors.Is(err, ErrProtocol) {
			t.Fatalf("ReadHello: %v, want ErrProtocol", err)
		}
	})
	t.Run("too-large", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		if err := WriteHello(a, string(make([]byte, MaxHelloSize))); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("WriteHello: %v, want ErrTooLarge", err)
		}
		go b.Write([]byte{byte(MsgHello), 0, 1, 0, 1})
		var r spec
		if err := ReadHello(a, &r); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("ReadHello: %v, want ErrTooLarge", err)
		}
	})
	t.Run("bad-json", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		go b.Write(AppendMessage(nil, MsgHello, []byte("{nope")))
		var r spec
		if err := ReadHello(a, &r); !errors.Is(err, ErrProtocol) {
			t.Fatalf("ReadHello: %v, want ErrProtocol", err)
		}
	})
}
