package drills

import (
	"fmt"
	"net/netip"
	"testing"
)

func TestParseMeshRoutes(t *testing.T) {
	for _, tc := range []struct {
		name, out, want string
		err             bool
	}{
		{"empty", "", "map[]", false},
		{"none", "[]", "map[]", false},
		{"v4", `[{"dst":"10.9.0.0/24","gateway":"192.0.2.5","dev":"eth0","flags":[]},{"dst":"10.9.1.1","gateway":"192.0.2.5","dev":"eth0","flags":[]}]`, "map[10.9.0.0/24:192.0.2.5 10.9.1.1/32:192.0.2.5]", false},
		{"v6", `[{"dst":"fd00:2::/64","gateway":"fd00::2","dev":"eth0"}]`, "map[fd00:2::/64:fd00::2]", false},
		{"no gateway skipped", `[{"dst":"10.9.0.0/24","dev":"eth0"}]`, "map[]", false},
		{"bad json", `[{`, "", true},
		{"bad gateway", `[{"dst":"10.9.0.0/24","gateway":"x"}]`, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := map[netip.Prefix]netip.Addr{}
			err := ParseMeshRoutes([]byte(tc.out), got)
			if (err != nil) != tc.err {
				t.Fatalf("err = %v, want error %v", err, tc.err)
			}
			if !tc.err && fmt.Sprint(got) != tc.want {
				t.Errorf("got %v, want %s", got, tc.want)
			}
		})
	}
}
