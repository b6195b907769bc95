//go:build tools

// Blank imports keep the command packages in go.mod/go.sum under `go mod tidy`.
package tools

import (
	_ "go.etcd.io/etcd/server/v3" // etcd, at the version k8s.io/kubernetes requires
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
