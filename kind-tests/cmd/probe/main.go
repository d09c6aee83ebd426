// Command probe is the drills' traffic client. Run inside a node's network
// namespace and cgroup, it connects to a target (a service ClusterIP:port,
// rewritten by the mesh's cgroup connect4 program) again and again and
// prints one line per attempt on standard output:
//
//	ok   <unix-nanos> <latency-µs> <reply>
//	fail <unix-nanos> <latency-µs> <error>
//
// For TCP an attempt is connect, read the echo server's one-line reply (the
// pod name), close; for UDP it is send one datagram, read the reply. It runs
// until killed or, with -count, for that many attempts.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/clustermesh/clustermesh/internal/version"
)

func main() {
	if version.Requested(os.Args[1:]) {
		fmt.Println("probe", version.Get())
		return
	}
	target := flag.String("target", "", "address:port to connect to")
	proto := flag.String("proto", "tcp", "tcp or udp")
	interval := flag.Duration("interval", 10*time.Millisecond, "pause between attempts")
	timeout := flag.Duration("timeout", 500*time.Millisecond, "deadline of one attempt")
	count := flag.Int("count", 0, "attempts before exiting; 0 runs until killed")
	flag.Parse()
	if *target == "" || (*proto != "tcp" && *proto != "udp") {
		fmt.Fprintln(os.Stderr, "probe: need -target addr:port and -proto tcp|udp")
		os.Exit(2)
	}
	out := bufio.NewWriter(os.Stdout)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	for i := 0; *count == 0 || i < *count; i++ {
		start := time.Now()
		reply, err := attempt(*proto, *target, *timeout)
		lat := time.Since(start).Microseconds()
		if err != nil {
			fmt.Fprintf(out, "fail %d %d %s\n", start.UnixNano(), lat, oneLine(err.Error()))
		} else {
			fmt.Fprintf(out, "ok %d %d %s\n", start.UnixNano(), lat, oneLine(reply))
		}
		// One line per attempt reaches the reader at once: the harness
		// times failovers from these lines.
		if err := out.Flush(); err != nil {
			os.Exit(1)
		}
		select {
		case <-stop:
			return
		case <-time.After(*interval):
		}
	}
}

func attempt(proto, target string, timeout time.Duration) (string, error) {
	c, err := net.DialTimeout(proto, target, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if proto == "udp" {
		if _, err := c.Write([]byte("hello\n")); err != nil {
			return "", err
		}
	}
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	reply := strings.TrimSpace(string(buf[:n]))
	if reply == "" {
		return "", fmt.Errorf("empty reply")
	}
	return reply, nil
}

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	s = strings.ReplaceAll(s, "\n", " ")
	if s == "" {
		return "-"
	}
	return s
}
