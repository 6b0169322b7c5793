package main

// Several kubelets in one process share the global metrics registries, and
// each kubelet registers its own instance of a few collectors (volume stats,
// log metrics): the second kubelet would panic on a duplicate registration.
// hollow-fleet swaps in registries that keep the first instance and drop the
// duplicates. Only metrics are affected; the fleet serves none.

import (
	"errors"
	_ "unsafe" // go:linkname

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/component-base/metrics"
)

//go:linkname legacyDefaultRegistry k8s.io/component-base/metrics/legacyregistry.defaultRegistry
var legacyDefaultRegistry metrics.KubeRegistry

type dedupKubeRegistry struct{ metrics.KubeRegistry }

func (r dedupKubeRegistry) CustomMustRegister(cs ...metrics.StableCollector) {
	for _, c := range cs {
		if err := r.KubeRegistry.CustomRegister(c); err != nil && !isAlreadyRegistered(err) {
			panic(err)
		}
	}
}

type dedupRegisterer struct{ prometheus.Registerer }

func (r dedupRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Registerer.Register(c); err != nil && !isAlreadyRegistered(err) {
			panic(err)
		}
	}
}

func isAlreadyRegistered(err error) bool {
	var are prometheus.AlreadyRegisteredError
	return errors.As(err, &are) || err.Error() == "duplicate metrics collector registration attempted"
}

// shareMetricsRegistries must run before the first kubelet starts.
func shareMetricsRegistries() {
	legacyDefaultRegistry = dedupKubeRegistry{legacyDefaultRegistry}
	prometheus.DefaultRegisterer = dedupRegisterer{prometheus.DefaultRegisterer}
}
