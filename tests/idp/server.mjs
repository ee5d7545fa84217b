// node-oidc-provider 9 as a real local IdP for authmount's end-to-end tests.
//
// Environment:
//   PORT           listen port on 127.0.0.1 (default 9000; tests pass a free port)
//   ISSUER         issuer string, used verbatim (default http://127.0.0.1:$PORT)
//   JWKS_FILE      private JWKs written by genkeys.mjs (default ./jwks.json)
//   REDIRECT_URIS  extra comma-separated redirect URIs for the `vault` and `vault-es` clients
//                  (web clients: node-oidc-provider matches redirect URIs exactly)
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

// Any login name works in the dev form; these accounts get extra claims.
const accounts = {
  alice: { email: 'alice@example.com', email_verified: true, groups: ['admins', 'dev'] },
  bob: { email: 'bob@example.com', email_verified: false, groups: ['dev'] },
};

const redirectUris = [
  'http://127.0.0.1:8250/oidc/callback',
  'http://localhost:8250/oidc/callback',
  ...EXTRA_REDIRECTS,
];

function build() {
  const jwks = JSON.parse(readFileSync(JWKS_FILE, 'utf8'));
  const provider = new Provider(ISSUER, {
    jwks,
    clients: [
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
    claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
    // Scope claims also inside the ID token (by default they are only at /me).
    conformIdTokenClaims: false,
    findAccount: async (ctx, sub) => ({
      accountId: sub,
      claims: async () => ({ sub, ...(accounts[sub] ?? { groups: [] }) }),
    }),
    features: {
      devInteractions: { enabled: true },
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
