// A real OpenID provider (oidc-provider, a certified implementation) on loopback for
// pam-agent's end-to-end tests, and a signer for the tokens no honest provider issues.
//
//   node idp.mjs serve CONFIG.json   serves the issuer; prints "ready ISSUER" when listening
//   node idp.mjs sign SPEC.json      prints one compact JWS made as SPEC says
//
// CONFIG: { "port": 0, "audience": "...", "keys": [{ "kid": "...", "pem": "PATH" }],
//           "clients": [{ "id": "...", "secret": "...", "groups": ["..."] }] }
// The first key signs; every key is published in the JWKS (rotation: restart with a new
// key first). Clients get JWT access tokens for `audience` by the client-credentials
// grant; their subject is the client id and `groups` is added as a claim.
//
// SPEC: { "alg": "RS256" | "HS256" | "none", "kid": "...", "pem": "PATH",
//         "hmac_key_file": "PATH", "claims": { ... }, "tamper": false }
// RS256 signs with the private key in `pem`; HS256 uses the bytes of `hmac_key_file` as
// the secret (the public key, for the algorithm-confusion attack); `tamper` flips a bit
// of the signature.

import { readFileSync } from 'node:fs';
import { createHmac, createPrivateKey, sign as rsaSign } from 'node:crypto';

import Provider from 'oidc-provider';

const [mode, file] = process.argv.slice(2);
const spec = JSON.parse(readFileSync(file, 'utf8'));

const b64 = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

if (mode === 'sign') {
  const header = { alg: spec.alg, typ: 'JWT' };
  if (spec.kid) header.kid = spec.kid;
  const input = `${b64(header)}.${b64(spec.claims)}`;
  let signature;
  if (spec.alg === 'none') {
    signature = Buffer.alloc(0);
  } else if (spec.alg === 'HS256') {
    signature = createHmac('sha256', readFileSync(spec.hmac_key_file)).update(input).digest();
  } else if (spec.alg === 'RS256') {
    signature = rsaSign('sha256', Buffer.from(input), createPrivateKey(readFileSync(spec.pem)));
  } else {
    throw new Error(`unsupported alg ${spec.alg}`);
  }
  if (spec.tamper) signature[signature.length - 1] ^= 1;
  process.stdout.write(`${input}.${signature.toString('base64url')}\n`);
} else if (mode === 'serve') {
  const keys = spec.keys.map(({ kid, pem }) => ({
    ...createPrivateKey(readFileSync(pem)).export({ format: 'jwk' }),
    kid,
    use: 'sig',
    alg: 'RS256',
  }));
  const groups = Object.fromEntries(spec.clients.map((c) => [c.id, c.groups ?? []]));
  const server = (await import('node:http')).createServer();
  await new Promise((resolve) => server.listen(spec.port ?? 0, '127.0.0.1', resolve));
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: spec.clients.map((c) => ({
      client_id: c.id,
      client_secret: c.secret,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
    })),
    jwks: { keys },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => spec.audience,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: 'approvals',
          audience: spec.audience,
          accessTokenTTL: 300,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256', kid: keys[0].kid } },
        }),
      },
    },
    extraTokenClaims: (ctx, token) => ({ groups: groups[token.clientId] ?? [] }),
  });
  server.on('request', provider.callback());
  process.on('SIGTERM', () => process.exit(0));
  process.stdout.write(`ready ${issuer}\n`);
} else {
  throw new Error(`usage: idp.mjs serve|sign FILE`);
}
