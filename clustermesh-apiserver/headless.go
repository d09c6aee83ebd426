package apiserver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/kvstore"
)

// EndpointSliceManager is the endpointslice.kubernetes.io/managed-by value
// of the EndpointSlices of headless imports: Kubernetes' own controllers
// leave them alone.
const EndpointSliceManager = "mcs.clustermesh.io"

// A headless import has no clusterset IP: clients resolve its name to the
// exporters' endpoints, and each endpoint with a hostname to
// <hostname>.<cluster>.<service>.<namespace>.svc.clusterset.local (KEP-1645
// DNS). The importer writes those endpoints into this cluster as
// EndpointSlices, one per exported slice, labelled with the imported
// service (LabelServiceName), the exporting cluster (LabelSourceCluster)
// and, as the derived Service's own slices, kubernetes.io/service-name =
// the derived Service: what CoreDNS's multicluster plugin reads.

// endpointsChanged queues the headless imports whose exporters' slices
// change; the slices themselves are read from the store when the import
// is reconciled, so nothing of them is held here.
func (im *importer) endpointsChanged(cluster, key string) {
	ref, err := api.ParseEndpointSliceKey(key)
	if err != nil {
		return
	}
	nn := types.NamespacedName{Namespace: ref.Namespace, Name: ref.Service}
	im.mu.Lock()
	_, exported := im.exporters[nn][cluster]
	headless := im.headless[nn]
	im.mu.Unlock()
	if exported && headless {
		im.queue.Add(nn)
	}
}

// sliceName is the local name of a headless import's copy of one exported
// slice: the derived Service's name, the cluster, a hash of the slice's
// name (slice names are long already).
func sliceName(nn types.NamespacedName, cluster, slice string) string {
	h := sha256.Sum256([]byte(slice))
	return derivedName(nn) + "-" + cluster + "-" + hex.EncodeToString(h[:4])
}

// syncHeadless makes the EndpointSlices of import nn match the exporters'
// slices when it is headless (none otherwise). They are owned by the
// ServiceImport owner, and go with it.
func (im *importer) syncHeadless(ctx context.Context, nn types.NamespacedName, exps []*api.Service, headless bool, owner []metav1.OwnerReference) error {
	im.mu.Lock()
	im.headless[nn] = headless
	im.mu.Unlock()
	want := map[string]*discoveryv1.EndpointSlice{}
	if headless {
		for _, e := range exps {
			kvs, err := im.local.List(ctx, api.ServiceEndpointsPrefix(e.Cluster, nn.Namespace, nn.Name), kvstore.ListOptions{})
			if err != nil {
				return fmt.Errorf("service %s: endpoints of %s: %w", nn, e.Cluster, err)
			}
			for _, kv := range kvs {
				o, err := api.Decode(kv.Key, kv.Value)
				es, ok := o.(*api.EndpointSlice)
				if err != nil || !ok || es.Cluster != e.Cluster || es.Namespace != nn.Namespace || es.Service != nn.Name {
					im.log.Warn("skipping an exported endpoint slice that cannot be read", "cluster", e.Cluster, "key", kv.Key, "error", err)
					continue
				}
				s := importedSlice(nn, es)
				s.OwnerReferences = owner
				want[s.Name] = s
			}
		}
	}
	client := im.kube.DiscoveryV1().EndpointSlices(nn.Namespace)
	have, err := client.List(ctx, metav1.ListOptions{LabelSelector: LabelServiceName + "=" + nn.Name + "," + discoveryv1.LabelManagedBy + "=" + EndpointSliceManager})
	if err != nil {
		return fmt.Errorf("service %s: EndpointSlices: %w", nn, err)
	}
	for i := range have.Items {
		h := &have.Items[i]
		w, ok := want[h.Name]
		delete(want, h.Name)
		switch {
		case !ok:
			err = client.Delete(ctx, h.Name, metav1.DeleteOptions{})
		case h.AddressType != w.AddressType:
			if err = client.Delete(ctx, h.Name, metav1.DeleteOptions{}); err == nil {
				_, err = client.Create(ctx, w, metav1.CreateOptions{})
			}
		case !sameJSON(h.Endpoints, w.Endpoints) || !sameJSON(h.Ports, w.Ports) || !sameJSON(h.Labels, w.Labels):
			h.Endpoints, h.Ports, h.Labels = w.Endpoints, w.Ports, w.Labels
			_, err = client.Update(ctx, h, metav1.UpdateOptions{})
		}
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("service %s: EndpointSlice %s: %w", nn, h.Name, err)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(want)) {
		if _, err := client.Create(ctx, want[name], metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("service %s: create EndpointSlice %s: %w", nn, name, err)
		}
	}
	return nil
}

// importedSlice is the local copy of an exported slice of a headless
// import.
func importedSlice(nn types.NamespacedName, es *api.EndpointSlice) *discoveryv1.EndpointSlice {
	out := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: sliceName(nn, es.Cluster, es.Name), Namespace: nn.Namespace,
			Labels: map[string]string{
				LabelServiceName: nn.Name, LabelSourceCluster: es.Cluster, LabelManagedBy: ManagedBy,
				discoveryv1.LabelServiceName: derivedName(nn), discoveryv1.LabelManagedBy: EndpointSliceManager,
			},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{},
		Endpoints:   []discoveryv1.Endpoint{},
	}
	v6 := false
	for _, ep := range es.Endpoints {
		if len(ep.Addresses) > 0 {
			v6 = ep.Addresses[0].Is6()
			break
		}
	}
	if v6 {
		out.AddressType = discoveryv1.AddressTypeIPv6
	}
	for _, p := range es.Ports {
		name, proto, port := p.Name, corev1.Protocol(p.Protocol), int32(p.Port)
		out.Ports = append(out.Ports, discoveryv1.EndpointPort{Name: &name, Protocol: &proto, Port: &port})
	}
	for _, ep := range es.Endpoints {
		var addrs []string
		for _, a := range ep.Addresses {
			if a.Is6() == v6 {
				addrs = append(addrs, a.String())
			}
		}
		if len(addrs) == 0 {
			continue
		}
		ready, serving, terminating := ep.Ready, ep.Serving, ep.Terminating
		e := discoveryv1.Endpoint{Addresses: addrs, Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &terminating}}
		if ep.Hostname != "" {
			h := ep.Hostname
			e.Hostname = &h
		}
		if ep.Zone != "" {
			z := ep.Zone
			e.Zone = &z
		}
		out.Endpoints = append(out.Endpoints, e)
	}
	return out
}
