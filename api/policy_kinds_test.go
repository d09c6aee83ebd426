package api_test

import (
	"testing"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/policy"
)

// TestPolicyKindsMatchPackagePolicy: api spells the policy kinds itself
// (package policy imports api); they must stay those package policy
// parses.
func TestPolicyKindsMatchPackagePolicy(t *testing.T) {
	if api.PolicyKindCNP != policy.KindCNP || api.PolicyKindCCNP != policy.KindCCNP {
		t.Errorf("api policy kinds %q, %q; package policy %q, %q", api.PolicyKindCNP, api.PolicyKindCCNP, policy.KindCNP, policy.KindCCNP)
	}
}
