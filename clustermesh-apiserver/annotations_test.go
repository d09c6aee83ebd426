package apiserver

import (
	"errors"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/api"
)

func TestParseServiceAnnotations(t *testing.T) {
	def := ServiceSettings{Shared: true, Affinity: api.AffinityNone}
	nonGlobal := ServiceSettings{Annotated: true, Shared: true, Affinity: api.AffinityNone}
	tests := []struct {
		name    string
		ann     map[string]string
		want    ServiceSettings
		wantErr []string // substrings the error must contain; nil means no error
	}{
		{"none", nil, def, nil},
		{"unrelated", map[string]string{"example.com/x": "1"}, def, nil},
		{"global", map[string]string{AnnotationGlobal: "true"},
			ServiceSettings{Annotated: true, Global: true, Shared: true, Affinity: api.AffinityNone}, nil},
		{"global false", map[string]string{AnnotationGlobal: "false"}, nonGlobal, nil},
		{"all set", map[string]string{AnnotationGlobal: "true", AnnotationShared: "false", AnnotationAffinity: "Local", AnnotationMinLocalBackends: " 3 "},
			ServiceSettings{Annotated: true, Global: true, Shared: false, Affinity: api.AffinityLocal, MinLocalBackends: 3}, nil},
		{"cilium", map[string]string{CiliumAnnotationGlobal: "true", CiliumAnnotationShared: "false", CiliumAnnotationAffinity: "remote"},
			ServiceSettings{Annotated: true, Global: true, Shared: false, Affinity: api.AffinityRemote}, nil},
		{"cilium legacy", map[string]string{CiliumLegacyAnnotationGlobal: "true"},
			ServiceSettings{Annotated: true, Global: true, Shared: true, Affinity: api.AffinityNone}, nil},
		{"own wins over cilium", map[string]string{AnnotationGlobal: "false", CiliumAnnotationGlobal: "true", AnnotationAffinity: "local", CiliumAnnotationAffinity: "bogus"},
			ServiceSettings{Annotated: true, Shared: true, Affinity: api.AffinityLocal}, nil},
		{"empty affinity", map[string]string{AnnotationGlobal: "true", CiliumAnnotationAffinity: ""},
			ServiceSettings{Annotated: true, Global: true, Shared: true, Affinity: api.AffinityNone}, nil},
		{"bad global", map[string]string{AnnotationGlobal: "yes please"}, nonGlobal,
			[]string{AnnotationGlobal, `"yes please"`}},
		{"bad affinity", map[string]string{AnnotationGlobal: "true", AnnotationAffinity: "nearest"}, nonGlobal,
			[]string{AnnotationAffinity, `"nearest"`, "local"}},
		{"bad threshold", map[string]string{AnnotationGlobal: "true", AnnotationMinLocalBackends: "-1"}, nonGlobal,
			[]string{AnnotationMinLocalBackends, `"-1"`}},
		{"two bad", map[string]string{AnnotationGlobal: "true", CiliumAnnotationShared: "maybe", AnnotationMinLocalBackends: "many"}, nonGlobal,
			[]string{CiliumAnnotationShared, `"maybe"`, AnnotationMinLocalBackends, `"many"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseServiceAnnotations(tt.ann)
			if got != tt.want {
				t.Errorf("settings = %+v, want %+v", got, tt.want)
			}
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrBadAnnotation) {
				t.Fatalf("error %v does not wrap ErrBadAnnotation", err)
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %s", err, s)
				}
			}
		})
	}
}
