package apiserver

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/clustermesh/clustermesh/api"
)

// Service annotations. The clustermesh.io ones are the project's own; the
// Cilium ones are honoured so that services annotated for Cilium Cluster Mesh
// join the mesh without touching their manifests. When both spell the same
// setting, the clustermesh.io annotation wins.
const (
	AnnotationGlobal           = "clustermesh.io/global"
	AnnotationShared           = "clustermesh.io/shared"
	AnnotationAffinity         = "clustermesh.io/affinity"
	AnnotationMinLocalBackends = "clustermesh.io/min-local-backends"

	CiliumAnnotationGlobal   = "service.cilium.io/global"
	CiliumAnnotationShared   = "service.cilium.io/shared"
	CiliumAnnotationAffinity = "service.cilium.io/affinity"
	// CiliumLegacyAnnotationGlobal is the pre-1.12 Cilium spelling.
	CiliumLegacyAnnotationGlobal = "io.cilium/global-service"
)

// Namespace annotations: whether a namespace's identities, ipcache entries,
// services and endpoints leave the cluster ("true" or "false"; absent: the
// apiserver's --default-global-namespace). Cilium's spelling is honoured.
const (
	AnnotationGlobalNamespace       = "clustermesh.io/global-namespace"
	CiliumAnnotationGlobalNamespace = "clustermesh.cilium.io/global"
)

var globalNamespaceKeys = []string{AnnotationGlobalNamespace, CiliumAnnotationGlobalNamespace}

// NamespaceGlobal tells whether a namespace with these annotations is
// exported, given the default for namespaces without the annotation. A bad
// value is an error naming the annotation; the namespace then keeps the
// default.
func NamespaceGlobal(ann map[string]string, def bool) (bool, error) {
	key, v, ok := lookup(ann, globalNamespaceKeys)
	if !ok {
		return def, nil
	}
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	if err != nil {
		return def, fmt.Errorf("%w: %s=%q: want true or false", ErrBadAnnotation, key, v)
	}
	return b, nil
}

// ErrBadAnnotation is wrapped by the error ParseServiceAnnotations returns
// for an annotation with an unusable value.
var ErrBadAnnotation = errors.New("bad service annotation")

// ServiceSettings are a service's mesh settings read from its annotations.
type ServiceSettings struct {
	// Annotated is true when any mesh annotation is present: only such
	// services are exported (see docs/apiserver.md).
	Annotated        bool
	Global           bool
	Shared           bool
	Affinity         api.Affinity
	MinLocalBackends uint32
}

// annotation lookup order per setting: first present wins.
var (
	globalKeys   = []string{AnnotationGlobal, CiliumAnnotationGlobal, CiliumLegacyAnnotationGlobal}
	sharedKeys   = []string{AnnotationShared, CiliumAnnotationShared}
	affinityKeys = []string{AnnotationAffinity, CiliumAnnotationAffinity}
	minLocalKeys = []string{AnnotationMinLocalBackends}
)

func lookup(ann map[string]string, keys []string) (key, value string, ok bool) {
	for _, k := range keys {
		if v, ok := ann[k]; ok {
			return k, v, true
		}
	}
	return "", "", false
}

// ParseServiceAnnotations reads the mesh settings of a service. On a bad value
// it returns the settings of a non-global service (Annotated stays true, so
// the service is still exported and visible as non-global) and an error
// wrapping ErrBadAnnotation that names the annotation, the value and what is
// accepted. Every bad annotation of the service is reported, not only the
// first.
func ParseServiceAnnotations(ann map[string]string) (ServiceSettings, error) {
	s := ServiceSettings{Shared: true, Affinity: api.AffinityNone}
	var errs []error
	bad := func(key, value, want string) {
		errs = append(errs, fmt.Errorf("%w: %s=%q: %s", ErrBadAnnotation, key, value, want))
	}
	if k, v, ok := lookup(ann, globalKeys); ok {
		s.Annotated = true
		if b, err := strconv.ParseBool(strings.TrimSpace(v)); err != nil {
			bad(k, v, `want "true" or "false"`)
		} else {
			s.Global = b
		}
	}
	if k, v, ok := lookup(ann, sharedKeys); ok {
		s.Annotated = true
		if b, err := strconv.ParseBool(strings.TrimSpace(v)); err != nil {
			bad(k, v, `want "true" or "false"`)
		} else {
			s.Shared = b
		}
	}
	if k, v, ok := lookup(ann, affinityKeys); ok {
		s.Annotated = true
		switch a := api.Affinity(strings.ToLower(strings.TrimSpace(v))); a {
		case api.AffinityLocal, api.AffinityRemote, api.AffinityNone:
			s.Affinity = a
		case "":
			// Cilium treats an empty affinity as none.
		default:
			bad(k, v, `want "local", "remote" or "none"`)
		}
	}
	if k, v, ok := lookup(ann, minLocalKeys); ok {
		s.Annotated = true
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
		if err != nil {
			bad(k, v, "want a non-negative integer")
		} else {
			s.MinLocalBackends = uint32(n)
		}
	}
	if len(errs) > 0 {
		return ServiceSettings{Annotated: true, Shared: true, Affinity: api.AffinityNone}, errors.Join(errs...)
	}
	return s, nil
}
