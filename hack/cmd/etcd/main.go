// Command etcd is the etcd server built from go.etcd.io/etcd/server/v3 (its
// etcdmain package is what upstream's etcd binary runs), so the tests get a
// real etcd without a separate download.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
