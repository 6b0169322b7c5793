// Command berth-k8s is one binary holding the upstream Kubernetes components
// the local test cluster runs, picked by the first argument (like the old
// hyperkube): linking once instead of six times keeps the cold build short.
// Nothing here is berth code; it only calls each component's own entry point.
package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	etcdmain "go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
	hollownode "k8s.io/kubernetes/cmd/kubemark/app"

	_ "k8s.io/client-go/plugin/pkg/client/auth"
)

var commands = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"hollow-node":             hollownode.NewHollowNodeCommand,
	// The real node of `cluster.sh real-node`, on a real containerd.
	"kubelet": func() *cobra.Command { return kubelet.NewKubeletCommand(context.Background()) },
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	name := os.Args[1]
	switch name {
	case "etcd":
		// etcdmain parses os.Args itself, skipping the program name.
		etcdmain.Main(append([]string{"etcd"}, os.Args[2:]...))
		return
	case "hollow-fleet":
		os.Exit(runFleet(os.Args[2:]))
	case "kubectl":
		os.Args = append([]string{"kubectl"}, os.Args[2:]...)
		logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) // nolint:errcheck
		if err := cli.RunNoErrOutput(kubectlcmd.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
		return
	}
	newCommand, ok := commands[name]
	if !ok {
		usage()
	}
	os.Args = append([]string{name}, os.Args[2:]...)
	os.Exit(cli.Run(newCommand()))
}

func usage() {
	names := []string{"etcd", "hollow-fleet", "kubectl"}
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintf(os.Stderr, "usage: berth-k8s COMPONENT [flags]\ncomponents: %s\n", strings.Join(names, ", "))
	os.Exit(2)
}
