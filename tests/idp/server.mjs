// node-oidc-provider 9 as a real local IdP for authmount's end-to-end tests.
//
// Environment:
//   PORT           listen port on 127.0.0.1 (default 9000; tests pass a free port)
//   ISSUER         issuer string, used verbatim (default http://127.0.0.1:$PORT)
//   JWKS_FILE      private JWKs written by genkeys.mjs (default ./jwks.json)
//   REDIRECT_URIS  extra comma-separated redirect URIs for the `vault`, `vault-es`, `vault-device`
//                  and `vault-pkjwt` clients (web clients: node-oidc-provider matches redirect
//                  URIs exactly)
//   CLIENT_JWKS_FILE  the public JWK set of the `vault-pkjwt` client (private_key_jwt);
//                  without it that client is not registered
//   CLAIMS_ENDPOINT   where the account `dana`'s groups live (a distributed claim, OIDC Core 5.6.2)
// SIGHUP re-reads JWKS_FILE (key rotation) without changing the port; sessions survive
// because the in-memory adapter is module-global.
import http from 'node:http';
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const PORT = Number(process.env.PORT ?? 9000);
const ISSUER = process.env.ISSUER ?? `http://127.0.0.1:${PORT}`;
const JWKS_FILE = process.env.JWKS_FILE ?? './jwks.json';
const EXTRA_REDIRECTS = (process.env.REDIRECT_URIS ?? '')
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean);

const CLIENT_JWKS_FILE = process.env.CLIENT_JWKS_FILE ?? '';
const CLAIMS_ENDPOINT = process.env.CLAIMS_ENDPOINT ?? '';

// Any login name works in the dev form; these accounts get extra claims.
const accounts = {
  alice: { email: 'alice@example.com', email_verified: true, groups: ['admins', 'dev'] },
  bob: { email: 'bob@example.com', email_verified: false, groups: ['dev'] },
};

// Accounts whose claims depend on where they are read (`use`: 'id_token' or 'userinfo').
// gina is GitLab-like: her groups are only at the userinfo endpoint, and her `team` differs
// between the two. dana's groups are a distributed claim at CLAIMS_ENDPOINT.
const byUse = {
  gina: (use) => ({
    email: 'gina@example.com',
    team: use === 'userinfo' ? 'team-from-userinfo' : 'team-from-id-token',
    ...(use === 'userinfo' ? { groups: ['gitlab-devs', 'gitlab-ops'] } : {}),
  }),
  dana: () => ({
    email: 'dana@example.com',
    _claim_names: { groups: 'src1' },
    _claim_sources: { src1: { endpoint: CLAIMS_ENDPOINT, access_token: 'claims-token-dana' } },
  }),
};

const redirectUris = [
  'http://127.0.0.1:8250/oidc/callback',
  'http://localhost:8250/oidc/callback',
  ...EXTRA_REDIRECTS,
];

function build() {
  const jwks = JSON.parse(readFileSync(JWKS_FILE, 'utf8'));
  const extraClients = [
    {
      // The device grant and refresh tokens (callback_mode device/direct, oauth2_metadata).
      client_id: 'vault-device',
      client_secret: 'vault-secret',
      grant_types: ['authorization_code', 'urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: redirectUris,
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'RS256',
    },
  ];
  if (CLIENT_JWKS_FILE) {
    extraClients.push({
      // private_key_jwt (RFC 7523): no secret; authmount signs client assertions.
      client_id: 'vault-pkjwt',
      grant_types: ['authorization_code', 'urn:ietf:params:oauth:grant-type:device_code'],
      response_types: ['code'],
      redirect_uris: redirectUris,
      token_endpoint_auth_method: 'private_key_jwt',
      jwks: JSON.parse(readFileSync(CLIENT_JWKS_FILE, 'utf8')),
      id_token_signed_response_alg: 'RS256',
    });
  }
  const provider = new Provider(ISSUER, {
    jwks,
    clients: [
      ...extraClients,
      {
        client_id: 'vault',
        client_secret: 'vault-secret',
        grant_types: ['authorization_code', 'client_credentials'],
        response_types: ['code'],
        redirect_uris: redirectUris,
        token_endpoint_auth_method: 'client_secret_basic',
        id_token_signed_response_alg: 'RS256',
      },
      {
        client_id: 'vault-es',
        client_secret: 'vault-secret',
        grant_types: ['authorization_code'],
        response_types: ['code'],
        redirect_uris: redirectUris,
        id_token_signed_response_alg: 'ES256',
      },
    ],
    cookies: { keys: ['test-cookie-key-1'] },
    claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups', 'team'] },
    // Scope claims also inside the ID token (by default they are only at /me).
    conformIdTokenClaims: false,
    findAccount: async (ctx, sub) => ({
      accountId: sub,
      claims: async (use) => ({ sub, ...(byUse[sub]?.(use) ?? accounts[sub] ?? { groups: [] }) }),
    }),
    // A refresh token for every client allowed the grant (no offline_access consent dance).
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    features: {
      devInteractions: { enabled: true },
      deviceFlow: { enabled: true },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // Only client_credentials gets a default resource (=> JWT access token);
        // code-flow access tokens stay opaque so /me keeps working.
        defaultResource: (ctx) =>
          ctx.oidc.params?.grant_type === 'client_credentials' ? 'urn:test:vault' : undefined,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource) => ({
          scope: 'read',
          audience: resource,
          accessTokenTTL: 300,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: resource.includes('es256') ? 'ES256' : 'RS256' } },
        }),
      },
    },
    // Skip the consent screen: a scripted login is then 3 redirects.
    loadExistingGrant: async (ctx) => {
      const { provider: p, client, session, result, params } = ctx.oidc;
      const grantId = result?.consent?.grantId || session.grantIdFor(client.clientId);
      if (grantId) return p.Grant.find(grantId);
      const grant = new p.Grant({ clientId: client.clientId, accountId: session.accountId });
      grant.addOIDCScope(String(params.scope ?? 'openid'));
      await grant.save();
      return grant;
    },
    extraTokenClaims: async (ctx, token) =>
      token.kind === 'ClientCredentials' ? { groups: ['machines'], env: 'test' } : undefined,
  });
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  return provider;
}

let provider = build();
const server = http.createServer((req, res) => provider.callback()(req, res));
process.on('SIGHUP', () => {
  try {
    provider = build();
    console.log('reloaded keys from', JWKS_FILE);
  } catch (err) {
    console.error('reload failed, keeping the old keys:', err.message);
  }
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
server.listen(PORT, '127.0.0.1', () => console.log(`oidc-provider ${ISSUER} pid=${process.pid}`));
