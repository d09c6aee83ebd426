package monitoring

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// defined maps every metric name the module's code defines to the files that
// define it, and each file to its string literals (label names among them).
type defined struct {
	metrics  map[string][]string
	literals map[string]map[string]bool
}

// scan reads the string literals of every non-test Go file of the module.
// Metric names are literals starting with clustermesh_; a literal ending in
// "_" is a prefix, joined with the file's other literals (bpf's gauges).
func scan(t *testing.T, root string) defined {
	t.Helper()
	d := defined{metrics: map[string][]string{}, literals: map[string]map[string]bool{}}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() && (e.Name() == "hack" || e.Name() == "bin" || strings.HasPrefix(e.Name(), ".")) && path != root {
			return filepath.SkipDir
		}
		if e.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		lits := map[string]bool{}
		ast.Inspect(f, func(n ast.Node) bool {
			if bl, ok := n.(*ast.BasicLit); ok && bl.Kind == token.STRING {
				if s, err := strconv.Unquote(bl.Value); err == nil {
					lits[s] = true
				}
			}
			return true
		})
		d.literals[path] = lits
		for s := range lits {
			if !strings.HasPrefix(s, "clustermesh_") {
				continue
			}
			if strings.HasSuffix(s, "_") {
				for other := range lits {
					if regexp.MustCompile(`^[a-z][a-z0-9_]*$`).MatchString(other) {
						d.metrics[s+other] = append(d.metrics[s+other], path)
					}
				}
				continue
			}
			d.metrics[s] = append(d.metrics[s], path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

var (
	metricRE = regexp.MustCompile(`\bclustermesh_[a-z0-9_]+`)
	byRE     = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	matchRE  = regexp.MustCompile(`\{([^}]*)\}`)
	labelRE  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
)

// targetLabels are added by Prometheus or belong to histograms, not to the
// code's metrics.
var targetLabels = map[string]bool{"instance": true, "job": true, "le": true, "namespace": true, "pod": true, "node": true}

// check reports every metric of expr the code does not define, and every
// label it groups or matches by that no defining file spells.
func (d defined) check(t *testing.T, where, expr string) {
	t.Helper()
	var files []string
	for _, m := range metricRE.FindAllString(expr, -1) {
		name := m
		if _, ok := d.metrics[name]; !ok {
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if base := strings.TrimSuffix(name, suf); base != name {
					if _, ok := d.metrics[base]; ok {
						name = base
					}
				}
			}
		}
		fs, ok := d.metrics[name]
		if !ok {
			t.Errorf("%s: metric %s is defined nowhere in the code (expr %q)", where, m, expr)
			continue
		}
		files = append(files, fs...)
	}
	var labels []string
	for _, g := range byRE.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(g[1], ",") {
			if l = strings.TrimSpace(l); l != "" {
				labels = append(labels, l)
			}
		}
	}
	for _, g := range matchRE.FindAllStringSubmatch(expr, -1) {
		for _, l := range labelRE.FindAllStringSubmatch(g[1], -1) {
			labels = append(labels, l[1])
		}
	}
	for _, l := range labels {
		if targetLabels[l] {
			continue
		}
		if !slices.ContainsFunc(files, func(f string) bool { return d.literals[f][l] }) {
			t.Errorf("%s: label %q is not a label of %v (expr %q)", where, l, metricRE.FindAllString(expr, -1), expr)
		}
	}
}

func TestAlerts(t *testing.T) {
	d := scan(t, "../..")
	if len(d.metrics) < 20 {
		t.Fatalf("found only %d metrics in the code: the scan is broken", len(d.metrics))
	}
	raw, err := os.ReadFile("prometheusrule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var pr struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string            `json:"name"`
			Namespace string            `json:"namespace"`
			Labels    map[string]string `json:"labels"`
		} `json:"metadata"`
		Spec struct {
			Groups []struct {
				Name  string `json:"name"`
				Rules []struct {
					Alert       string            `json:"alert"`
					Expr        string            `json:"expr"`
					For         string            `json:"for"`
					Labels      map[string]string `json:"labels"`
					Annotations map[string]string `json:"annotations"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"spec"`
	}
	if err := yaml.UnmarshalStrict(raw, &pr); err != nil {
		t.Fatal(err)
	}
	if pr.Kind != "PrometheusRule" {
		t.Fatalf("kind %q", pr.Kind)
	}
	seen := map[string]bool{}
	n := 0
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			n++
			where := g.Name + "/" + r.Alert
			if r.Alert == "" || seen[r.Alert] {
				t.Errorf("%s: alert name empty or repeated", where)
			}
			seen[r.Alert] = true
			switch r.Labels["severity"] {
			case "info", "warning", "critical":
			default:
				t.Errorf("%s: severity %q", where, r.Labels["severity"])
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: summary and description are needed", where)
			}
			d.check(t, where, r.Expr)
		}
	}
	if n == 0 {
		t.Fatal("no alert rules")
	}
}

func TestDashboard(t *testing.T) {
	d := scan(t, "../..")
	raw, err := os.ReadFile("dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			ID      int    `json:"id"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	if dash.UID == "" || len(dash.Panels) == 0 {
		t.Fatalf("dashboard without uid or panels")
	}
	ids := map[int]bool{}
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d repeated", p.ID)
		}
		ids[p.ID] = true
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			d.check(t, "panel "+p.Title, tg.Expr)
		}
	}
}
