// Package deploy holds the Kubernetes manifests `clustermesh enable` installs
// and renders them for one cluster.
//
// The manifests are plain YAML files in this directory, embedded in the
// binary and templated (text/template) with a Values struct, so a reader can
// review exactly what is installed.
// Rendering is pure: it has no side effects and is safe for concurrent use.
package deploy
