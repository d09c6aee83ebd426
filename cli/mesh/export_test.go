package mesh

import "context"

// OpenStoreAs opens the store at endpoint with creds, as an agent would.
var OpenStoreAs = openStore

// CredentialsOf reads the client credentials kept in one of the cluster's
// certificate Secrets.
func (c *Cluster) CredentialsOf(ctx context.Context, secret string) (Credentials, error) {
	return c.credentials(ctx, secret)
}
