// Command etcd is the etcd server, built from the go.etcd.io/etcd/server/v3 module at the
// version k8s.io/kubernetes itself depends on, so the local control plane needs no etcd package.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
