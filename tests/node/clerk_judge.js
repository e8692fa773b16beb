// Judges crafted tokens with Clerk's own JS SDK (@clerk/backend, pinned in package.json),
// for the differential table in tests/test_clerk_differential.py.
//
// stdin: {"apiUrl", "secretKey", "authorizedParties": [...] | null, "tokens": {"<row>": "<jwt>"}}
// stdout: {"<row>": {"any": {...}, "session": {...}, "verifyToken": {...}}}
//   any      authenticateRequest(acceptsToken: "any"), then toAuth() (pending sessions signed out)
//   session  authenticateRequest() with the default acceptsToken (session_token)
//   verifyToken  the lower-level verifyToken() (session tokens only)
'use strict';

const { createClerkClient, verifyToken } = require('@clerk/backend');

function readStdin() {
  return new Promise(resolve => {
    const chunks = [];
    process.stdin.on('data', c => chunks.push(c));
    process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
  });
}

function verdict(state) {
  const auth = state.toAuth();
  const authenticated = Boolean(auth && auth.isAuthenticated);
  return {
    status: state.status,
    reason: state.reason || null,
    tokenType: state.tokenType || null,
    authenticated,
    // Machine auth objects name the machine/user in `subject`; sessions in `userId`.
    subject: authenticated ? auth.subject || auth.userId || null : null,
    scopes: authenticated && Array.isArray(auth.scopes) ? auth.scopes : null,
  };
}

async function main() {
  const input = JSON.parse(await readStdin());
  const publishableKey = 'pk_test_' + Buffer.from('emulator.clerk.accounts.dev$').toString('base64');
  const telemetry = { disabled: true };
  const options = {
    secretKey: input.secretKey,
    apiUrl: input.apiUrl,
    publishableKey,
    telemetry,
  };
  if (input.authorizedParties) {
    options.authorizedParties = input.authorizedParties;
  }
  const clerk = createClerkClient(options);
  const out = {};
  for (const [row, token] of Object.entries(input.tokens)) {
    const request = () =>
      new Request('http://api.example.test/scores', { headers: { Authorization: `Bearer ${token}` } });
    const result = {};
    try {
      result.any = verdict(await clerk.authenticateRequest(request(), { ...options, acceptsToken: 'any' }));
    } catch (e) {
      result.any = { error: String(e && e.message) };
    }
    try {
      result.session = verdict(await clerk.authenticateRequest(request(), options));
    } catch (e) {
      result.session = { error: String(e && e.message) };
    }
    // The package's export throws on failure and returns the payload (its legacy return).
    try {
      const payload = await verifyToken(token, options);
      result.verifyToken = { ok: true, sub: payload && payload.sub };
    } catch (e) {
      result.verifyToken = { ok: false, reason: (e && e.reason) || String(e && e.message) };
    }
    out[row] = result;
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch(e => {
  process.stderr.write(String(e && e.stack) + '\n');
  process.exit(1);
});
