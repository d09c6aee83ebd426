package mesh

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/agent/status"
	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/pki"
)

// StatusOptions configure status.
type StatusOptions struct {
	StoreOptions
	// Now is the time certificate expiry is judged against; zero means now.
	Now time.Time
}

// Status is the state of one cluster's mesh installation as the CLI sees it.
type Status struct {
	Context   string          `json:"context"`
	Cluster   string          `json:"cluster"`
	ID        uint32          `json:"id"`
	Endpoint  string          `json:"endpoint"`
	APIServer APIServerStatus `json:"apiserver"`
	// AgentsReporting is how many agents publish a status in the store;
	// AgentsExpected is what the DaemonSet wants scheduled (0 when the
	// agents do not run as a DaemonSet).
	AgentsReporting int `json:"agentsReporting"`
	AgentsExpected  int `json:"agentsExpected"`
	// Clusters are the clusters agents follow: the cluster itself first,
	// then every connected peer.
	Clusters []ClusterStatus `json:"clusters"`
	// Images lists the mesh's containers that cannot start because of
	// their image (not pulled, not loaded into the nodes).
	Images       []ImageWait  `json:"images,omitempty"`
	Certificates []CertStatus `json:"certificates"`
	// BGP is how the agents' BGP speakers are doing; nil when no agent
	// runs one (--routes static or none).
	BGP *BGPStatus `json:"bgp,omitempty"`
	// Policies counts the cluster's network policies the agents enforce
	// and those refused (listed in Warnings); nil when not readable.
	Policies *PolicyCount `json:"policies,omitempty"`
	Problems []Problem    `json:"problems,omitempty"`
	// Warnings need action soon but do not make the cluster unready, e.g.
	// a certificate expiring within RenewBefore.
	Warnings []Problem `json:"warnings,omitempty"`
	Ready    bool      `json:"ready"`
}

// APIServerStatus is the state of the cluster's clustermesh-apiserver.
type APIServerStatus struct {
	// Workload is the StatefulSet's "ready/desired" replicas, or "absent".
	Workload string `json:"workload"`
	// StoreReachable is true when the CLI could read the store.
	StoreReachable bool   `json:"storeReachable"`
	StoreError     string `json:"storeError,omitempty"`
	// ClusterConfig is true once the apiserver wrote the cluster's config.
	ClusterConfig bool `json:"clusterConfig"`
	// SyncedKinds lists the kinds whose initial export is complete.
	SyncedKinds []string `json:"syncedKinds"`
	Synced      bool     `json:"synced"`
}

// ClusterStatus is how this cluster's agents are doing with one cluster.
type ClusterStatus struct {
	Name     string `json:"name"`
	ID       uint32 `json:"id,omitempty"`
	Endpoint string `json:"endpoint"`
	Local    bool   `json:"local"`
	// Agents counts agents reporting on this cluster; Connected and Synced
	// count those connected and fully synced.
	Agents    int `json:"agents"`
	Connected int `json:"connected"`
	Synced    int `json:"synced"`
	// Errors are the distinct last errors agents report for this cluster.
	Errors []string `json:"errors,omitempty"`
	// Routed counts agents with at least one route to this cluster's pods
	// in their node's kernel (BGP or static routes).
	Routed int `json:"routed"`
}

// BGPStatus is how the agents' BGP speakers are doing.
type BGPStatus struct {
	// Agents counts agents running a speaker; Established those whose
	// every session (to the cluster's route reflector) is established.
	Agents      int `json:"agents"`
	Established int `json:"established"`
	// Failed are the distinct errors of speakers that stopped; Sessions
	// the distinct sessions not established ("address: state").
	Failed   []string `json:"failed,omitempty"`
	Sessions []string `json:"sessions,omitempty"`
	// Refused counts learned routes the speakers refused (overlaps, not
	// owned by the announcing cluster); Refusals names the first few.
	Refused  int      `json:"refused"`
	Refusals []string `json:"refusals,omitempty"`
}

// maxRefusalsShown bounds BGPStatus.Refusals.
const maxRefusalsShown = 5

// GetStatus collects the cluster's status. Problems found are listed in
// Status.Problems with their fixes; an error is returned only when the
// cluster could not be inspected at all (e.g. not enabled).
func GetStatus(ctx context.Context, c *Cluster, opts StatusOptions) (*Status, error) {
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	info, err := c.ReadInfo(ctx)
	if err != nil {
		return nil, err
	}
	st := &Status{Context: c.Context, Cluster: info.Name, ID: info.ID, Endpoint: info.Endpoint}
	if opts.Endpoint != "" {
		st.Endpoint = opts.Endpoint
	}
	add := func(p Problem) { st.Problems = append(st.Problems, p) }
	warn := func(p Problem) { st.Warnings = append(st.Warnings, p) }
	logsCmd := c.logsCmd()

	// Kubernetes side: the StatefulSet and DaemonSet, when they exist.
	st.APIServer.Workload = "absent"
	if d, err := c.Kube.AppsV1().StatefulSets(c.Namespace).Get(ctx, StatefulSetName, metav1.GetOptions{}); err == nil {
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		st.APIServer.Workload = fmt.Sprintf("%d/%d", d.Status.ReadyReplicas, want)
	} else if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("context %s: get StatefulSet %s/%s: %w", c.Context, c.Namespace, StatefulSetName, err)
	}
	if ds, err := c.Kube.AppsV1().DaemonSets(c.Namespace).Get(ctx, DaemonSetName, metav1.GetOptions{}); err == nil {
		st.AgentsExpected = int(ds.Status.DesiredNumberScheduled)
	} else if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("context %s: get daemonset %s/%s: %w", c.Context, c.Namespace, DaemonSetName, err)
	}

	// Pods that cannot start for their image come first: the store and the
	// agents' problems below follow from them.
	if waits, err := c.ImageWaits(ctx); err == nil {
		st.Images = waits
		for _, p := range c.imageProblems(waits) {
			add(p)
		}
	} else if !apierrors.IsForbidden(err) {
		return nil, err
	}
	if claims, err := c.storeClaimProblems(ctx); err == nil {
		for _, p := range claims {
			add(p)
		}
	} else if !apierrors.IsForbidden(err) {
		return nil, err
	}

	secret, err := c.ClustersSecret(ctx)
	if err != nil {
		return nil, err
	}
	entries, err := Entries(secret)
	if err != nil {
		add(problem(ErrBadEntry, fmt.Sprintf("disconnect it (clustermesh disconnect %s --destination-cluster NAME) and connect it again", c.ctxFlag()),
			"%v", err))
	}
	// Own cluster first, then peers by name.
	sort.SliceStable(entries, func(i, j int) bool { return entries[i].Name == info.Name && entries[j].Name != info.Name })
	for _, e := range entries {
		st.Clusters = append(st.Clusters, ClusterStatus{Name: e.Name, ID: e.ID, Endpoint: e.Endpoint, Local: e.Name == info.Name})
	}
	if len(entries) == 0 || entries[0].Name != info.Name {
		add(problem(ErrNotReady, fmt.Sprintf("re-run clustermesh enable %s --cluster-name %s --cluster-id %d", c.ctxFlag(), info.Name, info.ID),
			"secret %s/%s has no entry for the cluster itself, so its agents do not follow the local store", c.Namespace, SecretClusters))
	}

	// Store side: the apiserver's export and the agents' statuses.
	cli, _, err := c.OpenStore(ctx, opts.StoreOptions)
	if err == nil {
		defer cli.Close()
		err = st.readStore(ctx, cli, info.Name)
	}
	if err != nil {
		st.APIServer.StoreError = err.Error()
		add(problem(ErrUnreachable,
			fmt.Sprintf("check the apiserver (%s); if %s is not reachable from here, pass --endpoint (e.g. a port-forward)", logsCmd, st.Endpoint),
			"cannot read the store of cluster %s at %s: %v", info.Name, st.Endpoint, err))
	} else {
		st.APIServer.StoreReachable = true
		if !st.APIServer.ClusterConfig {
			add(problem(ErrNotReady, "wait for the apiserver to start, or read its log: "+logsCmd,
				"the apiserver of %s has not written the cluster config (%s) yet", info.Name, api.ClusterKey(info.Name)))
		}
		if !st.APIServer.Synced {
			var missing []string
			for _, k := range api.SyncedKinds {
				if !slices.Contains(st.APIServer.SyncedKinds, string(k)) {
					missing = append(missing, string(k))
				}
			}
			add(problem(ErrNotReady, "wait for the initial export to finish, or read the apiserver log: "+logsCmd,
				"the apiserver of %s has not finished its initial export of %v", info.Name, missing))
		}
		st.agentProblems(c, add)
		st.bgpProblems(c, add, warn)
	}

	certs, err := c.certStatuses(ctx, now)
	if err != nil {
		return nil, err
	}
	st.Certificates = certs
	for _, cs := range certs {
		if cs.Expiring {
			fix := "clustermesh certs rotate " + c.ctxFlag()
			if cs.Secret == SecretCA {
				fix = "create a new CA and re-enable every cluster of the mesh with it (--ca-cert/--ca-key --replace-ca), then re-connect"
			}
			warn(problem(ErrExpiring, fix, "certificate %s (CN %s) expires %s (in %s)", cs.Secret, cs.CommonName,
				cs.NotAfter.UTC().Format(time.RFC3339), cs.NotAfter.Sub(now).Truncate(time.Hour)))
		}
	}
	if ca, err := c.LoadCA(ctx); err == nil {
		for _, p := range entryProblems(c, info.Name, entries, ca.Certificate(), now) {
			if errors.Is(p.Err, ErrExpiring) {
				warn(p)
			} else {
				add(p)
			}
		}
	}
	// Policies the mesh could not enforce as written: a warning, since the
	// cluster works and the rest is enforced (a refused update leaves the
	// previous version in force).
	if count, pps, err := c.policyProblems(ctx); err == nil {
		st.Policies = &count
		for _, p := range pps {
			warn(p)
		}
	} else if !apierrors.IsForbidden(err) {
		return nil, err
	}
	// Multi-Cluster Services: refused exports and conflicts are warnings
	// (the oldest export applies meanwhile; other services are unaffected).
	if v, err := ReadMCS(ctx, c, info.Name); err == nil {
		for _, p := range v.Problems(c) {
			warn(p)
		}
	} else if !apierrors.IsForbidden(err) {
		warn(problem(ErrMCS, "", "cluster %s: %v", info.Name, err))
	}
	st.Ready = len(st.Problems) == 0
	return st, nil
}

// entryProblems checks the credentials in the clusters Secret: the own
// entry must trust this cluster's CA and carry a certificate it issued; a
// peer's entry pins the peer's CA and carries a certificate that CA issued
// (connect issues it from the peer's CA for this cluster's user on the
// peer's store). No certificate may be about to expire.
func entryProblems(c *Cluster, self string, entries []Entry, ca *x509.Certificate, now time.Time) []Problem {
	var ps []Problem
	reconnect := func(e Entry) string {
		return fmt.Sprintf("connect again to rewrite it: clustermesh connect %s --destination-context <context of %s>", c.ctxFlag(), e.Name)
	}
	for _, e := range entries {
		own := e.Name == self
		trusted, err := pki.ParseCertificate(e.CA)
		if err != nil || (own && !trusted.Equal(ca)) {
			ps = append(ps, problem(ErrUntrusted, reconnect(e),
				"the entry for cluster %s in secret %s trusts another CA than this cluster's (was the CA replaced?)", e.Name, SecretClusters))
			continue
		}
		cert, err := pki.ParseCertificate(e.Cert)
		if err != nil || cert.CheckSignatureFrom(trusted) != nil {
			fix, whose := reconnect(e), "the peer's CA it pins"
			if own {
				fix, whose = "clustermesh certs rotate "+c.ctxFlag(), "this cluster's CA"
			}
			ps = append(ps, problem(ErrUntrusted, fix,
				"the client certificate of the entry for cluster %s in secret %s is not issued by %s", e.Name, SecretClusters, whose))
			continue
		}
		if now.Add(RenewBefore).After(cert.NotAfter) {
			ps = append(ps, problem(ErrExpiring, "clustermesh certs rotate "+c.ctxFlag(),
				"the client certificate of the entry for cluster %s expires %s (in %s)", e.Name, cert.NotAfter.UTC().Format(time.RFC3339), cert.NotAfter.Sub(now).Truncate(time.Hour)))
		}
	}
	return ps
}

func (st *Status) readStore(ctx context.Context, cli *kvstore.Client, cluster string) error {
	_, found, err := cli.Get(ctx, api.ClusterKey(cluster))
	if err != nil {
		return err
	}
	st.APIServer.ClusterConfig = found
	synced, err := cli.List(ctx, api.ClusterPrefix(api.KindSynced, cluster), kvstore.ListOptions{KeysOnly: true})
	if err != nil {
		return err
	}
	st.APIServer.SyncedKinds = []string{}
	for _, kv := range synced {
		if r, err := api.ParseSyncedKey(kv.Key); err == nil {
			st.APIServer.SyncedKinds = append(st.APIServer.SyncedKinds, string(r.Kind))
		}
	}
	st.APIServer.Synced = true
	for _, k := range api.SyncedKinds {
		if !slices.Contains(st.APIServer.SyncedKinds, string(k)) {
			st.APIServer.Synced = false
		}
	}
	agents, err := cli.List(ctx, api.ClusterPrefix(api.KindAgents, cluster), kvstore.ListOptions{})
	if err != nil {
		return err
	}
	for _, kv := range agents {
		a, err := status.DecodeStored(kv.Key, kv.Value)
		if err != nil {
			// An agent of a newer schema still counts as reporting.
			st.AgentsReporting++
			continue
		}
		st.AgentsReporting++
		st.readBGP(a)
		for i := range st.Clusters {
			cs := &st.Clusters[i]
			ac, ok := a.ClusterByName(cs.Name)
			if !ok {
				continue
			}
			if ac.Routes > 0 {
				cs.Routed++
			}
			cs.Agents++
			if ac.Connected {
				cs.Connected++
			}
			if ac.Synced {
				cs.Synced++
			}
			if msg := fmt.Sprintf("%s: %s", ac.State, ac.LastError); ac.LastError != "" && !ac.Connected && !slices.Contains(cs.Errors, msg) {
				cs.Errors = append(cs.Errors, msg)
			}
		}
	}
	return nil
}

// readBGP adds one agent's BGP section to st.BGP.
func (st *Status) readBGP(a *status.Agent) {
	b := a.BGP
	if b == nil {
		return
	}
	if st.BGP == nil {
		st.BGP = &BGPStatus{}
	}
	s := st.BGP
	s.Agents++
	if b.State == status.SectionFailed {
		if msg := a.Node + ": " + b.Error; !slices.Contains(s.Failed, msg) {
			s.Failed = append(s.Failed, msg)
		}
		return
	}
	up := len(b.Sessions) > 0
	for _, ss := range b.Sessions {
		if ss.Established {
			continue
		}
		up = false
		state := ss.State
		if ss.CutOff != "" {
			state += ", cut off: " + ss.CutOff
		}
		if msg := fmt.Sprintf("%s: %s", ss.Address, state); !slices.Contains(s.Sessions, msg) {
			s.Sessions = append(s.Sessions, msg)
		}
	}
	if up {
		s.Established++
	}
	s.Refused += len(b.Refused)
	for _, r := range b.Refused {
		if len(s.Refusals) >= maxRefusalsShown {
			break
		}
		s.Refusals = append(s.Refusals, fmt.Sprintf("%s refused %s via %s from %s: %s", a.Node, r.Prefix, r.NextHop, r.Peer, r.Reason))
	}
}

// bgpProblems: with BGP, a cluster is ready once every agent's session to
// the route reflector is up and every agent has a route to each connected
// cluster's pods (the reflectors of two clusters peer seconds after
// connect; until then cross-cluster traffic has no route).
func (st *Status) bgpProblems(c *Cluster, add, warn func(Problem)) {
	b := st.BGP
	if b == nil {
		return
	}
	agentsCmd := fmt.Sprintf("kubectl %s -n %s logs daemonset/%s", c.ctxFlag(), c.Namespace, DaemonSetName)
	if len(b.Failed) > 0 {
		add(problem(ErrNotReady, "read the agents' logs ("+agentsCmd+", \"bgp speaker stopped\")",
			"%d of %d agents' BGP speakers stopped: %s", len(b.Failed), b.Agents, b.Failed[0]))
	}
	if down := b.Agents - len(b.Failed) - b.Established; down > 0 {
		detail := ""
		if len(b.Sessions) > 0 {
			detail = " (" + strings.Join(b.Sessions, "; ") + ")"
		}
		add(problem(ErrNotReady,
			fmt.Sprintf("the clustermesh-apiserver hosts the cluster's route reflector (port 1790 of its node): check it runs (%s) and that the nodes reach it", c.logsCmd()),
			"%d of %d agents have no established BGP session with the route reflector%s", down, b.Agents, detail))
	}
	for _, cs := range st.Clusters {
		if cs.Local || cs.Agents == 0 || cs.Synced < cs.Agents || cs.Routed >= cs.Agents {
			continue
		}
		add(problem(ErrNotReady,
			fmt.Sprintf("the route reflectors of %s and %s peer seconds after connect; if this persists, read both apiservers' logs (bgp) and check that their nodes reach each other on port 1790", st.Cluster, cs.Name),
			"%d of %d agents have no BGP route to cluster %s's pods yet", cs.Agents-cs.Routed, cs.Agents, cs.Name))
	}
	if b.Refused > 0 {
		warn(problem(ErrRefused, "a peer announced a prefix it does not own or that overlaps a local range; the rest is installed (docs/routing.md)",
			"%d learned BGP routes refused: %s", b.Refused, strings.Join(b.Refusals, "; ")))
	}
}

func (st *Status) agentProblems(c *Cluster, add func(Problem)) {
	dsCmd := fmt.Sprintf("kubectl %s -n %s get daemonset %s, then the logs of its pods", c.ctxFlag(), c.Namespace, DaemonSetName)
	if st.AgentsReporting == 0 {
		add(problem(ErrNotReady, "check the agents: "+dsCmd, "no agent of cluster %s reports its status", st.Cluster))
		return
	}
	if st.AgentsReporting < st.AgentsExpected {
		add(problem(ErrNotReady, "check the agents: "+dsCmd, "%d of %d agents of cluster %s report their status", st.AgentsReporting, st.AgentsExpected, st.Cluster))
	}
	for _, cs := range st.Clusters {
		what := "cluster " + cs.Name
		if cs.Local {
			what = "the local store"
		}
		switch {
		case cs.Agents < st.AgentsReporting:
			add(problem(ErrNotReady, "agents pick up the clusters Secret when the kubelet refreshes the mount (up to a minute); if this persists: "+dsCmd,
				"%d of %d agents do not follow %s yet", st.AgentsReporting-cs.Agents, st.AgentsReporting, what))
		case cs.Connected < cs.Agents:
			reason := ""
			if len(cs.Errors) > 0 {
				reason = "; agents say: " + cs.Errors[0]
			}
			if len(cs.Errors) > 0 && strings.HasPrefix(cs.Errors[0], "refused:") {
				fix := fmt.Sprintf("the agents checked %s's cluster config and refused it; resolve the conflict named (connect runs the same checks: clustermesh connect %s --destination-context <context of %s>), or disconnect it", cs.Name, c.ctxFlag(), cs.Name)
				add(problem(ErrRefused, fix, "%d of %d agents refuse %s%s", cs.Agents-cs.Connected, cs.Agents, what, reason))
				break
			}
			fix := fmt.Sprintf("check that %s is reachable from the nodes and that clustermesh status --context <context of %s> is ready", cs.Endpoint, cs.Name)
			add(problem(ErrUnreachable, fix, "%d of %d agents are not connected to %s%s", cs.Agents-cs.Connected, cs.Agents, what, reason))
		case cs.Synced < cs.Agents:
			add(problem(ErrNotReady, "wait for the initial sync; if it does not finish, check the apiserver of "+cs.Name,
				"%d of %d agents have not finished syncing %s", cs.Agents-cs.Synced, cs.Agents, what))
		}
	}
}

// logsCmd is the command that shows the clustermesh-apiserver's log.
func (c *Cluster) logsCmd() string {
	return fmt.Sprintf("kubectl %s -n %s logs statefulset/%s", c.ctxFlag(), c.Namespace, StatefulSetName)
}

// WaitStatus polls GetStatus every interval until the cluster is ready or
// ctx ends, calling progress with every status seen. It returns the last
// status, and ctx's error when the cluster did not become ready.
func WaitStatus(ctx context.Context, c *Cluster, opts StatusOptions, interval time.Duration, progress func(*Status)) (*Status, error) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var last *Status
	for {
		st, err := GetStatus(ctx, c, opts)
		switch {
		case err == nil:
			last = st
			if progress != nil {
				progress(st)
			}
			if st.Ready {
				return st, nil
			}
		case ctx.Err() != nil:
		default:
			if last == nil {
				return nil, err
			}
		}
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("context %s: %w: %w", c.Context, ErrNotReady, ctx.Err())
		case <-t.C:
		}
	}
}
