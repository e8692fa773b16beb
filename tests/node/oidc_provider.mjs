// panva's oidc-provider (pinned in package.json) as a real issuer for tests/test_oidc_provider.py:
// a server nobody here wrote, configured the way its users configure it for machine clients.
//
// - client credentials only, with resource indicators (RFC 8707): a token for the API's
//   resource is an RFC 9068 JWT (`typ: at+jwt`) signed with the algorithm its client is set
//   up for (RS256, PS256, ES256 or EdDSA), or opaque for `svc-opaque`;
// - introspection (RFC 7662) for the API itself (client `scores-api`) and revocation
//   (RFC 7009) for each token's own client;
// - key rotation: `POST /test/rotate` replaces every signing key by a new one under a new kid
//   (the old kids leave the JWKS); tokens already issued stay in the shared in-memory store.
//
// argv: <port> <api resource> <other resource>. When it listens it prints one JSON line on
// stdout: {"issuer", "clients": {id: secret}}. Everything else goes to stderr.
import { generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:http';

import Provider, { errors } from 'oidc-provider';

const [port, api, other] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;

// client id → the algorithm its JWT access tokens are signed with (null: opaque tokens).
const CLIENTS = {
  'svc-rs256': 'RS256',
  'svc-ps256': 'PS256',
  'svc-es256': 'ES256',
  'svc-eddsa': 'EdDSA',
  'svc-opaque': null,
};
const SCOPES = 'scores:read feeds:read';
const secrets = Object.fromEntries(
  [...Object.keys(CLIENTS), 'scores-api'].map((id) => [id, `${id}-secret-0123456789abcdef`]),
);

let generation = 0;

function signingKeys() {
  generation += 1;
  const jwk = (pair, kid) => ({ ...pair.privateKey.export({ format: 'jwk' }), kid, use: 'sig' });
  return [
    jwk(generateKeyPairSync('rsa', { modulusLength: 2048 }), `rsa-${generation}`),
    jwk(generateKeyPairSync('ec', { namedCurve: 'P-256' }), `ec-${generation}`),
    jwk(generateKeyPairSync('ed25519'), `ed-${generation}`),
  ];
}

function build() {
  const clients = Object.keys(CLIENTS).map((id) => ({
    client_id: id,
    client_secret: secrets[id],
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    scope: SCOPES,
  }));
  clients.push({
    client_id: 'scores-api',
    client_secret: secrets['scores-api'],
    grant_types: [],
    redirect_uris: [],
    response_types: [],
  });
  const provider = new Provider(issuer, {
    clients,
    jwks: { keys: signingKeys() },
    scopes: SCOPES.split(' '),
    ttl: { ClientCredentials: 600 },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      // The API's own client may introspect any token; a token's client may revoke it.
      introspection: { enabled: true, allowedPolicy: () => true },
      revocation: { enabled: true, allowedPolicy: (ctx, client, token) => client.clientId === token.clientId },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => api,
        useGrantedResource: () => true,
        getResourceServerInfo(ctx, resource, client) {
          if (resource !== api && resource !== other) {
            throw new errors.InvalidTarget();
          }
          const alg = CLIENTS[client.clientId];
          const info = { scope: SCOPES, audience: resource, accessTokenTTL: 600 };
          if (alg === null || alg === undefined) {
            return { ...info, accessTokenFormat: 'opaque' };
          }
          return { ...info, accessTokenFormat: 'jwt', jwt: { sign: { alg } } };
        },
      },
    },
    enabledJWA: {
      // What the JWT access tokens may be signed with (the provider's defaults lack PS256
      // and EdDSA for some uses).
      idTokenSigningAlgValues: ['RS256', 'PS256', 'ES256', 'EdDSA'],
    },
  });
  provider.on('server_error', (ctx, err) => process.stderr.write(`server_error: ${err}\n`));
  return provider;
}

let provider = build();

const server = createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/test/rotate') {
    provider = build();
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ generation }));
    return;
  }
  provider.callback()(req, res);
});

server.listen(Number(port), '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ issuer, clients: secrets })}\n`);
});

process.on('SIGTERM', () => server.close(() => process.exit(0)));
