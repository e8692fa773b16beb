// Runs Clerk's JS SDK (@clerk/backend, pinned in package.json) against the Clerk emulator,
// for tests/test_clerk_sdks.py: every call a user's code would make for the five token kinds.
//
// stdin: {"apiUrl", "secretKey", "partnerKey", "partnerId", "apiMachineKey", "apiMachineId",
//         "apiKey", "oauthToken", "oauthJwt", "sessionJwt"}
// stdout: {"<step>": {"ok": true, "value": ...} | {"ok": false, "status", "code", "message"}}
'use strict';

const { createClerkClient } = require('@clerk/backend');

function readStdin() {
  return new Promise(resolve => {
    const chunks = [];
    process.stdin.on('data', c => chunks.push(c));
    process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
  });
}

// Plain data of an SDK resource (class instances serialise their own fields).
const plain = value => JSON.parse(JSON.stringify(value === undefined ? null : value));

async function main() {
  const input = JSON.parse(await readStdin());
  const publishableKey = 'pk_test_' + Buffer.from('emulator.clerk.accounts.dev$').toString('base64');
  const telemetry = { disabled: true };
  const base = { apiUrl: input.apiUrl, publishableKey, telemetry };
  const instance = createClerkClient({ ...base, secretKey: input.secretKey });
  const partner = createClerkClient({ ...base, machineSecretKey: input.partnerKey });
  const out = {};
  const step = async (name, fn) => {
    try {
      out[name] = { ok: true, value: plain(await fn()) };
    } catch (e) {
      out[name] = {
        ok: false,
        status: e && e.status !== undefined ? e.status : null,
        code: e && e.errors && e.errors[0] ? e.errors[0].code : (e && e.code) || null,
        message: String(e && e.message),
      };
    }
    return out[name].ok ? out[name].value : null;
  };

  const created = await step('m2m.createToken', () =>
    partner.m2m.createToken({ secondsUntilExpiration: 3600, claims: { tier: 'gold' } }),
  );
  await step('m2m.createToken.instanceKey', () => instance.m2m.createToken({ secondsUntilExpiration: 60 }));
  const jwt = await step('m2m.createToken.jwt', () =>
    partner.m2m.createToken({ tokenFormat: 'jwt', secondsUntilExpiration: 600, claims: { tier: 'gold' } }),
  );
  if (created) {
    await step('m2m.verify.instanceKey', () => instance.m2m.verify({ token: created.token }));
    await step('m2m.verify.apiMachineKey', () =>
      instance.m2m.verify({ token: created.token, machineSecretKey: input.apiMachineKey }),
    );
    await step('m2m.verify.partnerKey', () =>
      instance.m2m.verify({ token: created.token, machineSecretKey: input.partnerKey }),
    );
  }
  if (jwt) {
    await step('m2m.verify.jwt', () => instance.m2m.verify({ token: jwt.token }));
  }
  await step('m2m.list', () => instance.m2m.list({ subject: input.partnerId }));
  await step('m2m.list.partnerKey', () =>
    instance.m2m.list({ subject: input.partnerId, machineSecretKey: input.partnerKey }),
  );
  if (created) {
    await step('m2m.revokeToken', () =>
      partner.m2m.revokeToken({ m2mTokenId: created.id, revocationReason: 'rotated' }),
    );
    await step('m2m.verify.revoked', () => instance.m2m.verify({ token: created.token }));
    await step('m2m.list.revoked', () => instance.m2m.list({ subject: input.partnerId, revoked: true }));
  }
  await step('apiKeys.verify', () => instance.apiKeys.verify(input.apiKey));
  await step('apiKeys.verify.unknown', () => instance.apiKeys.verify('ak_' + 'x'.repeat(40)));
  await step('idPOAuthAccessToken.verify', () => instance.idPOAuthAccessToken.verify(input.oauthToken));
  await step('jwks.getJwks', () => instance.jwks.getJwks());

  const authenticate = async (name, token, acceptsToken, extra = {}) =>
    step(name, async () => {
      const request = new Request('http://api.example.test/scores', {
        headers: { Authorization: `Bearer ${token}` },
      });
      const state = await instance.authenticateRequest(request, {
        ...base,
        secretKey: input.secretKey,
        acceptsToken,
        ...extra,
      });
      const auth = state.toAuth();
      return {
        status: state.status,
        reason: state.reason || null,
        tokenType: state.tokenType,
        isAuthenticated: Boolean(auth && auth.isAuthenticated),
        subject: auth ? auth.subject || auth.userId || null : null,
        scopes: auth && Array.isArray(auth.scopes) ? auth.scopes : null,
        clientId: auth ? auth.clientId || null : null,
      };
    });
  if (jwt) {
    await authenticate('authenticateRequest.m2m_jwt', jwt.token, 'm2m_token');
  }
  const fresh = await step('m2m.createToken.second', () =>
    partner.m2m.createToken({ secondsUntilExpiration: 3600 }),
  );
  if (fresh) {
    await authenticate('authenticateRequest.m2m', fresh.token, 'm2m_token');
  }
  await authenticate('authenticateRequest.api_key', input.apiKey, 'api_key');
  await authenticate('authenticateRequest.oauth', input.oauthToken, 'oauth_token');
  await authenticate('authenticateRequest.oauth_jwt', input.oauthJwt, 'oauth_token');
  await authenticate('authenticateRequest.session', input.sessionJwt, 'session_token');
  await authenticate('authenticateRequest.any.api_key', input.apiKey, 'any');
  process.stdout.write(JSON.stringify(out));
}

main().catch(e => {
  process.stderr.write(String(e && e.stack) + '\n');
  process.exit(1);
});
