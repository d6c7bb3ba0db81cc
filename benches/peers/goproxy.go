// benches/run's Go peer: net/http/httputil.ReverseProxy, what Daytona's proxy is built on, doing the same work as
// the nginx beside it (every request to one upstream, the daemon's token added). Standard library only: Debian's
// golang-go builds it offline.
// Usage: goproxy LISTEN_ADDR UPSTREAM_ADDR TOKEN
package main

import (
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
)

func main() {
	if len(os.Args) != 4 {
		log.Fatal("usage: goproxy LISTEN_ADDR UPSTREAM_ADDR TOKEN")
	}
	upstream := &url.URL{Scheme: "http", Host: os.Args[2]}
	token := os.Args[3]
	proxy := httputil.NewSingleHostReverseProxy(upstream)
	// The default transport keeps two idle connections per host: at 64 client connections it would open and
	// close upstream connections all the time, which no tuned deployment does.
	proxy.Transport = &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024}
	director := proxy.Director
	proxy.Director = func(r *http.Request) {
		director(r)
		r.Header.Set("X-Sandbar-Daemon-Token", token)
	}
	log.Fatal(http.ListenAndServe(os.Args[1], proxy))
}
