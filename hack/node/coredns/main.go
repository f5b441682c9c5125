// CoreDNS for the local node, with only the plugins a cluster DNS without upstream needs: no `forward`, so pods
// resolve cluster names (KubeRay workers reach the head by its Service FQDN) and nothing else leaves the node.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The plugins above, in CoreDNS's own order (core/dnsserver/zdirectives.go): a Corefile may use no other.
func init() {
	dnsserver.Directives = []string{"bind", "ready", "health", "errors", "cache", "kubernetes"}
}

func main() { coremain.Run() }
