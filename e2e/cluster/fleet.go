package main

// hollow-fleet runs many kubemark hollow kubelets in one process: the real
// kubelet code (pod workers, status manager, node lease, in-place container
// restart on an image change) over the fake CRI runtime kubemark uses (plus resizing, see resize.go). One
// process instead of one per node keeps hundreds of nodes within this
// machine's memory. Each node gets its own client certificate
// (system:node:NAME), so the apiserver's Node authorizer and NodeRestriction
// admission treat it as a real node.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	cadvisorapi "github.com/google/cadvisor/lib/model"
	"k8s.io/apimachinery/pkg/api/resource"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	clientset "k8s.io/client-go/kubernetes"
	restclient "k8s.io/client-go/rest"
	remote "k8s.io/cri-client/pkg"
	"k8s.io/klog/v2"
	cadvisortest "k8s.io/kubernetes/pkg/kubelet/cadvisor/testing"
	"k8s.io/kubernetes/pkg/kubemark"
)

// sizedCadvisor reports a machine of a chosen size (kubemark's fake is fixed
// at 1 core): resize and scheduling tests need room on a node.
type sizedCadvisor struct {
	cadvisortest.Fake
	cores  int
	memory uint64
}

func (c *sizedCadvisor) MachineInfo(logger klog.Logger) (*cadvisorapi.MachineInfo, error) {
	info, err := c.Fake.MachineInfo(logger)
	if err != nil {
		return nil, err
	}
	info.NumCores = c.cores
	info.MemoryCapacity = c.memory
	return info, nil
}

type fleetConfig struct {
	count, firstIndex, firstPort, cores, maxPods int
	prefix, server, caCert, caKey, stateDir      string
	memory                                       string
	qps                                          float64
}

func runFleet(args []string) int {
	var cfg fleetConfig
	fs := flag.NewFlagSet("hollow-fleet", flag.ExitOnError)
	fs.IntVar(&cfg.count, "count", 3, "number of hollow nodes")
	fs.IntVar(&cfg.firstIndex, "first-index", 0, "index of the first node (names are PREFIX-INDEX)")
	fs.StringVar(&cfg.prefix, "prefix", "hollow-node", "node name prefix")
	fs.IntVar(&cfg.firstPort, "first-port", 20250, "kubelet port of the first node; node i uses first-port+i")
	fs.IntVar(&cfg.cores, "cores", 8, "CPU cores each node reports")
	fs.StringVar(&cfg.memory, "memory", "32Gi", "memory each node reports")
	fs.IntVar(&cfg.maxPods, "max-pods", 110, "pods each node accepts")
	fs.Float64Var(&cfg.qps, "kube-api-qps", 10, "client QPS of each node")
	fs.StringVar(&cfg.server, "server", "", "apiserver URL, e.g. https://127.0.0.1:6443")
	fs.StringVar(&cfg.caCert, "ca-cert", "", "cluster CA certificate (trusts the apiserver, signs node client certs)")
	fs.StringVar(&cfg.caKey, "ca-key", "", "cluster CA private key")
	fs.StringVar(&cfg.stateDir, "state-dir", "", "directory for the nodes' root dirs")
	klog.InitFlags(fs)
	_ = fs.Parse(args)
	if cfg.server == "" || cfg.caCert == "" || cfg.caKey == "" || cfg.stateDir == "" {
		fmt.Fprintln(os.Stderr, "hollow-fleet: --server, --ca-cert, --ca-key and --state-dir are required")
		return 2
	}
	memory, err := resource.ParseQuantity(cfg.memory)
	if err != nil {
		fmt.Fprintf(os.Stderr, "hollow-fleet: --memory %q: %v\n", cfg.memory, err)
		return 2
	}
	shareMetricsRegistries()
	// Hollow nodes have no use for projected pod certificates, whose manager
	// would run one more informer per node.
	if err := utilfeature.DefaultMutableFeatureGate.Set("PodCertificateRequest=false"); err != nil {
		fmt.Fprintf(os.Stderr, "hollow-fleet: %v\n", err)
		return 1
	}
	signer, err := loadSigner(cfg.caCert, cfg.caKey)
	if err != nil {
		fmt.Fprintf(os.Stderr, "hollow-fleet: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	for i := 0; i < cfg.count; i++ {
		name := fmt.Sprintf("%s-%d", cfg.prefix, cfg.firstIndex+i)
		if err := startNode(ctx, &cfg, signer, name, cfg.firstPort+i, uint64(memory.Value())); err != nil {
			fmt.Fprintf(os.Stderr, "hollow-fleet: node %s: %v\n", name, err)
			return 1
		}
	}
	klog.Infof("hollow-fleet: %d nodes started", cfg.count)
	<-ctx.Done()
	return 0
}

func startNode(ctx context.Context, cfg *fleetConfig, signer *caSigner, name string, port int, memory uint64) error {
	certPEM, keyPEM, err := signer.nodeClientCert(name)
	if err != nil {
		return err
	}
	restCfg := &restclient.Config{
		Host:            cfg.server,
		TLSClientConfig: restclient.TLSClientConfig{CAData: signer.caPEM, CertData: certPEM, KeyData: keyPEM},
		ContentConfig:   restclient.ContentConfig{ContentType: "application/vnd.kubernetes.protobuf"},
		QPS:             float32(cfg.qps),
		Burst:           int(cfg.qps * 2),
		UserAgent:       "hollow-kubelet/" + name,
	}
	client, err := clientset.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	flags, kc := kubemark.GetHollowKubeletConfig(&kubemark.HollowKubeletOptions{
		NodeName:            name,
		KubeletPort:         port,
		KubeletReadOnlyPort: 0,
		MaxPods:             cfg.maxPods,
		NodeLabels:          map[string]string{"berth.dev/hollow-node": "true"},
	})
	// kubemark sets the kubelet's open-files limit to 1024, and each hollow
	// kubelet applies it to the whole fleet process (~20 descriptors a node):
	// keep the limit the process was given instead.
	var nofile syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &nofile); err == nil && nofile.Max > uint64(kc.MaxOpenFiles) {
		kc.MaxOpenFiles = int64(nofile.Max)
	}
	// kubemark makes temp dirs under /tmp; keep everything under the state dir.
	_ = os.RemoveAll(flags.RootDirectory)
	root := filepath.Join(cfg.stateDir, name)
	for _, d := range []string{"static-pods", "pod-logs"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	flags.RootDirectory = root
	kc.StaticPodPath = filepath.Join(root, "static-pods")
	kc.PodLogsDir = filepath.Join(root, "pod-logs")
	kc.Address = "127.0.0.1"
	// As on a real node: the kubelet manages a pod-level cgroup (in memory,
	// see resize.go), which an in-place resize reads and writes.
	kc.CgroupsPerQOS = true
	kc.CgroupRoot = "/"

	heartbeatCfg := *restCfg
	heartbeatCfg.Timeout = kc.NodeStatusUpdateFrequency.Duration
	if lease := time.Duration(kc.NodeLeaseDurationSeconds) * time.Second; heartbeatCfg.Timeout > lease {
		heartbeatCfg.Timeout = lease
	}
	heartbeatCfg.QPS = -1
	heartbeatClient, err := clientset.NewForConfig(&heartbeatCfg)
	if err != nil {
		return err
	}

	endpoint := "unix://" + filepath.Join(root, "cri.sock")
	fakeRuntime, err := startRuntime(endpoint)
	if err != nil {
		return fmt.Errorf("fake runtime: %w", err)
	}
	runtimeService, err := remote.NewRemoteRuntimeServiceBuilder().
		WithEndpoint(endpoint).WithConnectionTimeout(15 * time.Second).Build(ctx)
	if err != nil {
		return fmt.Errorf("runtime client: %w", err)
	}
	kubelet := kubemark.NewHollowKubelet(flags, kc, client, heartbeatClient,
		&sizedCadvisor{Fake: cadvisortest.Fake{NodeName: name}, cores: cfg.cores, memory: memory},
		fakeRuntime.ImageService, runtimeService, newResizableContainerManager())
	go kubelet.Run(ctx)
	return nil
}

type caSigner struct {
	caPEM []byte
	cert  *x509.Certificate
	key   any
}

func loadSigner(certPath, keyPath string) (*caSigner, error) {
	caPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(caPEM)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM certificate", certPath)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certPath, err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, err
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, fmt.Errorf("%s: no PEM key", keyPath)
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		if k, err2 := x509.ParseECPrivateKey(kb.Bytes); err2 == nil {
			key = k
		} else if k, err3 := x509.ParsePKCS1PrivateKey(kb.Bytes); err3 == nil {
			key = k
		} else {
			return nil, fmt.Errorf("%s: %w", keyPath, err)
		}
	}
	return &caSigner{caPEM: caPEM, cert: cert, key: key}, nil
}

// nodeClientCert issues the certificate a kubelet's TLS bootstrap would get.
func (s *caSigner) nodeClientCert(node string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "system:node:" + node, Organization: []string{"system:nodes"}},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.cert, &key.PublicKey, s.key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), nil
}
