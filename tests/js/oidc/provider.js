// A real OpenID provider for the tests: panva's oidc-provider (tests/browser/test_oidc_login.py).
// node provider.js CONFIG_JSON: {"port", "client_id", "client_secret", "redirect_uris",
// "post_logout_redirect_uris", "accounts": {"login": {"email", "email_verified", "groups"}}}
// Sign-in is oidc-provider's own development form (any password); PKCE is required of
// every client, so a flow without it fails. Prints "ready <issuer>" once it listens.
import Provider from 'oidc-provider';

const config = JSON.parse(process.argv[2]);
const issuer = `http://127.0.0.1:${config.port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: config.client_id,
    client_secret: config.client_secret,
    redirect_uris: config.redirect_uris,
    post_logout_redirect_uris: config.post_logout_redirect_uris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
  }],
  pkce: { required: () => true },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'groups'],   // as Authentik does: groups come with the profile scope
  },
  async findAccount(ctx, id) {
    const account = config.accounts[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() { return { sub: id, name: id, ...account }; },
    };
  },
  cookies: { keys: ['quaero-tests-only-cookie-key'] },
  features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
});
provider.proxy = false;

const server = provider.listen(config.port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
