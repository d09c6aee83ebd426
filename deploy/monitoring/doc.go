// Package monitoring holds what operators load into their monitoring stack:
// prometheusrule.yaml (alerts, for the Prometheus Operator) and
// dashboard.json (Grafana). Its test checks that every metric and label the
// queries name is one the binaries define, so that a renamed metric cannot
// leave an alert silently empty.
package monitoring
