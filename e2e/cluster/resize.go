package main

// In-place resize (pods/resize) on hollow nodes. kubemark's stub container
// manager refuses pod-level cgroup reads and writes, and its fake CRI runtime
// accepts UpdateContainerResources but forgets it and reports no container
// resources, so the kubelet could never complete a resize. These wrappers keep
// upstream's fakes for everything else and add what a real node does:
// remember the pod-level and container resources and report them back.

import (
	"context"
	"fmt"
	"math"
	"sync"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	kubeletconfig "k8s.io/kubernetes/pkg/kubelet/apis/config"
	"k8s.io/kubernetes/pkg/kubelet/cm"

	"google.golang.org/grpc"
	kubeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	fakeremote "k8s.io/cri-client/pkg/fake"
	criutil "k8s.io/cri-client/pkg/util"
)

type resizableRuntime struct {
	*fakeremote.RemoteRuntime
}

// startRuntime serves the fake runtime, with resizing, on a unix socket.
func startRuntime(endpoint string) (*resizableRuntime, error) {
	r := &resizableRuntime{fakeremote.NewFakeRemoteRuntime()}
	listener, err := criutil.CreateListener(endpoint)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", endpoint, err)
	}
	server := grpc.NewServer()
	kubeapi.RegisterRuntimeServiceServer(server, r)
	kubeapi.RegisterImageServiceServer(server, r.RemoteRuntime)
	r.RuntimeService.FakeStatus = &kubeapi.RuntimeStatus{Conditions: []*kubeapi.RuntimeCondition{
		{Type: kubeapi.RuntimeReady, Status: true},
		{Type: kubeapi.NetworkReady, Status: true},
	}}
	go server.Serve(listener) //nolint:errcheck // ends with the process
	return r, nil
}

func (r *resizableRuntime) UpdateContainerResources(ctx context.Context, req *kubeapi.UpdateContainerResourcesRequest) (*kubeapi.UpdateContainerResourcesResponse, error) {
	if _, err := r.RemoteRuntime.UpdateContainerResources(ctx, req); err != nil {
		return nil, err
	}
	fake := r.RuntimeService
	fake.Lock()
	defer fake.Unlock()
	c, ok := fake.Containers[req.ContainerId]
	if !ok {
		return nil, fmt.Errorf("container %q not found", req.ContainerId)
	}
	if req.Linux != nil {
		c.LinuxResources = req.Linux
	}
	return &kubeapi.UpdateContainerResourcesResponse{}, nil
}

func (r *resizableRuntime) ContainerStatus(ctx context.Context, req *kubeapi.ContainerStatusRequest) (*kubeapi.ContainerStatusResponse, error) {
	resp, err := r.RemoteRuntime.ContainerStatus(ctx, req)
	if err != nil {
		return nil, err
	}
	fake := r.RuntimeService
	fake.Lock()
	defer fake.Unlock()
	if c, ok := fake.Containers[req.ContainerId]; ok && c.LinuxResources != nil {
		resp.Status.Resources = &kubeapi.ContainerResources{Linux: c.LinuxResources}
	}
	return resp, nil
}

// resizableContainerManager is the stub container manager with pod-level
// cgroup settings kept in memory.
type resizableContainerManager struct {
	cm.ContainerManager
	mu      sync.Mutex
	configs map[types.UID]map[v1.ResourceName]*cm.ResourceConfig
}

func newResizableContainerManager() *resizableContainerManager {
	return &resizableContainerManager{
		ContainerManager: cm.NewStubContainerManager(),
		configs:          map[types.UID]map[v1.ResourceName]*cm.ResourceConfig{},
	}
}

func (m *resizableContainerManager) NewPodContainerManager() cm.PodContainerManager {
	return &podCgroups{PodContainerManager: m.ContainerManager.NewPodContainerManager(), owner: m}
}

type podCgroups struct {
	cm.PodContainerManager
	owner *resizableContainerManager
}

// Exists is false until EnsureExists ran, so the kubelet "creates" it.
func (p *podCgroups) Exists(pod *v1.Pod) bool {
	p.owner.mu.Lock()
	defer p.owner.mu.Unlock()
	_, ok := p.owner.configs[pod.UID]
	return ok
}

// EnsureExists "creates" the pod cgroup with the values the kubelet's real
// pod container manager would write at pod start.
func (p *podCgroups) EnsureExists(logger klog.Logger, pod *v1.Pod) error {
	p.owner.mu.Lock()
	_, exists := p.owner.configs[pod.UID]
	p.owner.mu.Unlock()
	if !exists {
		config := cm.ResourceConfigForPod(pod, true, 100000, false, kubeletconfig.NoneMemoryReservationPolicy)
		if err := p.SetPodCgroupConfig(logger, pod, config); err != nil {
			return err
		}
	}
	return p.PodContainerManager.EnsureExists(logger, pod)
}

func (p *podCgroups) GetPodCgroupConfig(pod *v1.Pod, resource v1.ResourceName) (*cm.ResourceConfig, error) {
	p.owner.mu.Lock()
	defer p.owner.mu.Unlock()
	stored, ok := p.owner.configs[pod.UID][resource]
	if !ok {
		return nil, fmt.Errorf("pod %s has no %s cgroup settings", pod.UID, resource)
	}
	// Unset means what a cgroup reads back when nothing was written:
	// memory.max "max", cpu.max "max 100000", the minimum cpu weight.
	config := *stored
	unlimited, noQuota, period, minShares := int64(math.MaxInt64), int64(-1), uint64(100000), uint64(2)
	switch resource {
	case v1.ResourceMemory:
		if config.Memory == nil {
			config.Memory = &unlimited
		}
	case v1.ResourceCPU:
		if config.CPUQuota == nil {
			config.CPUQuota = &noQuota
		}
		if config.CPUPeriod == nil {
			config.CPUPeriod = &period
		}
		if config.CPUShares == nil {
			config.CPUShares = &minShares
		}
	}
	return &config, nil
}

func (p *podCgroups) SetPodCgroupConfig(_ klog.Logger, pod *v1.Pod, config *cm.ResourceConfig) error {
	p.owner.mu.Lock()
	defer p.owner.mu.Unlock()
	byResource := p.owner.configs[pod.UID]
	if byResource == nil {
		byResource = map[v1.ResourceName]*cm.ResourceConfig{}
		p.owner.configs[pod.UID] = byResource
	}
	// Merge: the kubelet sets memory and cpu separately.
	memory, cpu := byResource[v1.ResourceMemory], byResource[v1.ResourceCPU]
	if memory == nil {
		memory = &cm.ResourceConfig{}
	}
	if cpu == nil {
		cpu = &cm.ResourceConfig{}
	}
	if config.Memory != nil {
		memory.Memory = config.Memory
	}
	if config.CPUShares != nil {
		cpu.CPUShares = config.CPUShares
	}
	if config.CPUQuota != nil {
		cpu.CPUQuota = config.CPUQuota
	}
	if config.CPUPeriod != nil {
		cpu.CPUPeriod = config.CPUPeriod
	}
	byResource[v1.ResourceMemory], byResource[v1.ResourceCPU] = memory, cpu
	return nil
}
