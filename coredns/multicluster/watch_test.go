package multicluster

import (
	"fmt"
	"strings"
	"testing"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/cache"
)

type testLog struct{ lines []string }

func (l *testLog) Warningf(format string, v ...any) {
	l.lines = append(l.lines, fmt.Sprintf(format, v...))
}

func importObj(ns, name string, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
	u.SetNamespace(ns)
	u.SetName(name)
	return u
}

func sliceObj(ns, name, svc, cluster string, addrs ...string) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
		Labels: map[string]string{labelServiceName: svc, labelSourceCluster: cluster}}}
	for _, a := range addrs {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}})
	}
	return es
}

func hosts(eps []endpoint) string {
	var out []string
	for _, ep := range eps {
		out = append(out, ep.hostname+"."+ep.cluster)
	}
	return strings.Join(out, ",")
}

// TestWatcherEvents: the cache the informers' events fill: a bad update
// removes the import (and is logged with the field), namespaces are
// counted, a slice moved to another service leaves the first, deletions
// (also as DeletedFinalStateUnknown) remove.
func TestWatcherEvents(t *testing.T) {
	log := &testLog{}
	w := newCache(log, false)
	w.importChanged(importObj("ns", "web", map[string]any{"ips": []any{"10.0.0.1"}}))
	w.importChanged(importObj("ns", "db", map[string]any{"type": "Headless"}))
	if _, ok := w.service("ns", "web"); !ok || !w.hasNamespace("ns") {
		t.Fatal("web not cached")
	}
	w.importChanged(importObj("ns", "web", map[string]any{"type": "Bogus"}))
	if _, ok := w.service("ns", "web"); ok {
		t.Error("web kept after an invalid update")
	}
	if len(log.lines) != 1 || !strings.Contains(log.lines[0], "ns/web") || !strings.Contains(log.lines[0], "spec.type") {
		t.Errorf("log %q, want one line naming ns/web and spec.type", log.lines)
	}
	w.importDeleted(cache.DeletedFinalStateUnknown{Obj: importObj("ns", "db", nil)})
	if w.hasNamespace("ns") {
		t.Error("namespace still counted with no import left")
	}

	w.sliceChanged(sliceObj("ns", "s1", "db", "c1", "10.1.0.1"))
	w.sliceChanged(sliceObj("ns", "s2", "db", "c2", "10.2.0.1"))
	if got := hosts(w.endpoints("ns", "db")); got != "10-1-0-1.c1,10-2-0-1.c2" && got != "10-2-0-1.c2,10-1-0-1.c1" {
		t.Errorf("db endpoints %s", got)
	}
	w.sliceChanged(sliceObj("ns", "s2", "other", "c2", "10.2.0.1"))
	if got := hosts(w.endpoints("ns", "db")); got != "10-1-0-1.c1" {
		t.Errorf("db endpoints after s2 moved %s, want c1's only", got)
	}
	if got := hosts(w.endpoints("ns", "other")); got != "10-2-0-1.c2" {
		t.Errorf("other endpoints %s", got)
	}
	w.sliceDeleted(sliceObj("ns", "s1", "db", "c1"))
	w.sliceDeleted(cache.DeletedFinalStateUnknown{Obj: sliceObj("ns", "s2", "other", "c2")})
	if len(w.slices) != 0 || len(w.sliceOf) != 0 {
		t.Errorf("slices left after deletions: %v %v", w.slices, w.sliceOf)
	}
}
