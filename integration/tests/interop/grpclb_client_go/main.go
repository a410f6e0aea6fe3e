// A grpc-go client using grpc-go's own grpclb policy.
//
// Usage: grpclb_client_go BALANCER NAME BACKENDS CALLS
//
// BALANCER is the host:port of a grpc.lb.v1 balancer (waypost serve) and
// NAME the service name the client asks it for. The channel's resolver
// returns only the balancer's address, marked as a grpclb balancer, so a
// call can only reach a backend through the balancer's server list. Calls
// movies.v1.MoviesService/GetMovie (MovieId{mid: 1}, encoded by hand so no
// generated code is needed) with wait-for-ready: first until the replies
// (Movie.served_by) have named BACKENDS distinct backends — the policy has
// them all READY — printing "warm NAME" for each, then CALLS more, printing
// "ok NAME" or the status code and message for each. Then it prints "done"
// and keeps the channel open until standard input ends, so its grpclb
// policy goes on sending ClientStats reports to the balancer.
//
// Built by the interop test in GOPATH mode against Debian's
// golang-google-grpc-dev (grpc-go 1.33).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"google.golang.org/grpc"
	_ "google.golang.org/grpc/balancer/grpclb"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
)

const warmUpLimit = 1000

// rawCodec sends and receives messages as the bytes they already are.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

func varint(data []byte, i int) (uint64, int, error) {
	var value uint64
	for shift := uint(0); shift < 64; shift += 7 {
		if i >= len(data) {
			return 0, i, errors.New("truncated varint")
		}
		b := data[i]
		i++
		value |= uint64(b&0x7f) << shift
		if b < 0x80 {
			return value, i, nil
		}
	}
	return 0, i, errors.New("varint too long")
}

// servedBy is field 5 (served_by) of a movies.v1.Movie.
func servedBy(movie []byte) (string, error) {
	for i := 0; i < len(movie); {
		key, next, err := varint(movie, i)
		if err != nil {
			return "", err
		}
		i = next
		switch field, wire := key>>3, key&7; wire {
		case 0:
			if _, i, err = varint(movie, i); err != nil {
				return "", err
			}
		case 1:
			i += 8
		case 5:
			i += 4
		case 2:
			length, next, err := varint(movie, i)
			if err != nil || next+int(length) > len(movie) {
				return "", errors.New("truncated field")
			}
			if field == 5 {
				return string(movie[next : next+int(length)]), nil
			}
			i = next + int(length)
		default:
			return "", fmt.Errorf("wire type %d", wire)
		}
	}
	return "", nil
}

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: grpclb_client_go BALANCER NAME BACKENDS CALLS")
		os.Exit(2)
	}
	balancerAddr, name := os.Args[1], os.Args[2]
	backends, err1 := strconv.Atoi(os.Args[3])
	calls, err2 := strconv.Atoi(os.Args[4])
	if err1 != nil || err2 != nil {
		fmt.Fprintln(os.Stderr, "BACKENDS and CALLS are numbers")
		os.Exit(2)
	}

	r := manual.NewBuilderWithScheme("interop")
	r.InitialState(resolver.State{Addresses: []resolver.Address{{
		Addr:       balancerAddr,
		Type:       resolver.GRPCLB,
		ServerName: "balancer",
	}}})
	config := `{"loadBalancingConfig":[{"grpclb":{"childPolicy":[{"round_robin":{}}]}}]}`
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, "interop:///"+name,
		grpc.WithInsecure(),
		grpc.WithResolvers(r),
		grpc.WithDefaultServiceConfig(config),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(1)
	}
	defer conn.Close()

	request := []byte{0x08, 0x01}
	call := func() (string, error) {
		callCtx, callCancel := context.WithTimeout(ctx, 10*time.Second)
		defer callCancel()
		var reply []byte
		err := conn.Invoke(callCtx, "/movies.v1.MoviesService/GetMovie", &request, &reply,
			grpc.ForceCodec(rawCodec{}), grpc.WaitForReady(true))
		if err != nil {
			return "", err
		}
		return servedBy(reply)
	}

	seen := map[string]bool{}
	for i := 0; i < warmUpLimit && len(seen) < backends; i++ {
		served, err := call()
		if err != nil {
			fmt.Fprintln(os.Stderr, "warm-up call:", err)
			os.Exit(1)
		}
		fmt.Println("warm", served)
		seen[served] = true
	}
	for i := 0; i < calls; i++ {
		if served, err := call(); err != nil {
			s := status.Convert(err)
			fmt.Println(s.Code().String(), s.Message())
		} else {
			fmt.Println("ok", served)
		}
	}
	fmt.Println("done")
	io.Copy(io.Discard, os.Stdin)
}
