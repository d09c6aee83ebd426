// Command echo is the drills' backend for real clusters (kind): it answers
// on TCP and UDP with its pod name ($POD_NAME, else the host name), the same
// protocol the harness's in-process echo pods speak (see kind-tests/cmd/probe).
// TCP: writes the name and a newline, then closes; UDP: answers every
// datagram with the name.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"

	"github.com/clustermesh/clustermesh/internal/version"
)

func main() {
	if version.Requested(os.Args[1:]) {
		fmt.Println("echo", version.Get())
		return
	}
	addr := flag.String("listen", ":8080", "TCP and UDP address to listen on")
	flag.Parse()
	name := os.Getenv("POD_NAME")
	if name == "" {
		name, _ = os.Hostname()
	}
	reply := []byte(name + "\n")
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
	pc, err := net.ListenPacket("udp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				os.Exit(1)
			}
			_, _ = pc.WriteTo(reply, from)
		}
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "echo:", err)
			os.Exit(1)
		}
		_, _ = c.Write(reply)
		c.Close()
	}
}
