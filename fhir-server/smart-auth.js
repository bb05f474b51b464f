// Optional authorization for the demo/test FHIR server: SMART Backend Services
// (OAuth client_credentials, the client authenticated by a JWT it signs with its private
// key, RFC 7523) and a static bearer token. Off unless the server is started with
// --smart-client, --static-token or --require-auth; then every /fhir request but
// /fhir/metadata needs a token this server issued (or the static one).
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');

const CLIENT_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
// SMART: the assertion's exp SHALL be no more than five minutes in the future.
const MAX_ASSERTION_SECONDS = 300;
const CLOCK_SKEW_SECONDS = 30;

class OAuthError extends Error {
  constructor(status, code, description) {
    super(description);
    this.status = status;
    this.code = code;
  }
}

// `--smart-client CLIENT_ID=JWKS_FILE`: the client's public keys, as its JWKS document.
function readClients(specs, jose) {
  const clients = new Map();
  for (const spec of specs) {
    const equals = spec.indexOf('=');
    if (equals <= 0 || equals === spec.length - 1) {
      throw new Error(`--smart-client ${spec}: expected CLIENT_ID=JWKS_FILE`);
    }
    const clientId = spec.slice(0, equals);
    const file = spec.slice(equals + 1);
    let jwks;
    try {
      jwks = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (err) {
      throw new Error(`--smart-client ${clientId}: cannot read a JWKS from ${file}: ${err.message}`);
    }
    if (!Array.isArray(jwks?.keys) || jwks.keys.length === 0) {
      throw new Error(`--smart-client ${clientId}: ${file} has no "keys" array`);
    }
    clients.set(clientId, jose.createLocalJWKSet(jwks));
  }
  return clients;
}

class SmartAuthorization {
  constructor({ jose, clients, staticToken, tokenLifetimeSeconds, tokenUrl }) {
    this.jose = jose;
    this.clients = clients;
    this.staticToken = staticToken;
    this.tokenLifetimeSeconds = tokenLifetimeSeconds;
    this.tokenUrl = tokenUrl;
    this.tokens = new Map(); // access token -> { clientId, scope, expiresAt (ms) }
    this.seenAssertions = new Map(); // `${clientId} ${jti}` -> exp (ms), until it expires
    this.tokensIssued = 0;
  }

  smartConfiguration() {
    return {
      token_endpoint: this.tokenUrl,
      token_endpoint_auth_methods_supported: ['private_key_jwt'],
      token_endpoint_auth_signing_alg_values_supported: ['RS384', 'ES384'],
      grant_types_supported: ['client_credentials'],
      scopes_supported: ['system/*.read', 'system/*.write', 'system/*.*', 'system/*.cruds'],
      capabilities: ['client-confidential-asymmetric'],
    };
  }

  stats() {
    this.dropExpired();
    return { tokens_issued: this.tokensIssued, tokens_active: this.tokens.size };
  }

  // POST /auth/token, form-encoded (RFC 6749 4.4, RFC 7523 2.2). Answers the token
  // response, or throws an OAuthError whose code is one of RFC 6749 5.2's.
  async issueToken(form) {
    if (form.get('grant_type') !== 'client_credentials') {
      throw new OAuthError(400, 'unsupported_grant_type', 'only client_credentials is supported');
    }
    if (form.get('client_assertion_type') !== CLIENT_ASSERTION_TYPE) {
      throw new OAuthError(400, 'invalid_request', `client_assertion_type must be ${CLIENT_ASSERTION_TYPE}`);
    }
    const assertion = form.get('client_assertion');
    if (!assertion) {
      throw new OAuthError(400, 'invalid_request', 'client_assertion is missing');
    }
    const scope = form.get('scope');
    if (!scope) {
      throw new OAuthError(400, 'invalid_scope', 'scope is missing');
    }
    const clientId = await this.verifiedClient(assertion);
    const token = crypto.randomBytes(32).toString('base64url');
    this.tokens.set(token, {
      clientId,
      scope,
      expiresAt: Date.now() + this.tokenLifetimeSeconds * 1000,
    });
    this.tokensIssued += 1;
    return {
      access_token: token,
      token_type: 'bearer',
      expires_in: this.tokenLifetimeSeconds,
      scope,
    };
  }

  async verifiedClient(assertion) {
    let claims;
    try {
      claims = this.jose.decodeJwt(assertion);
    } catch {
      throw new OAuthError(400, 'invalid_request', 'client_assertion is not a JWT');
    }
    const clientId = claims.iss;
    const keys = typeof clientId === 'string' ? this.clients.get(clientId) : undefined;
    if (!keys) {
      throw new OAuthError(401, 'invalid_client', 'unknown client');
    }
    let verified;
    try {
      verified = await this.jose.jwtVerify(assertion, keys, {
        issuer: clientId,
        subject: clientId,
        audience: this.tokenUrl,
        algorithms: ['RS384', 'ES384'],
        requiredClaims: ['exp', 'jti'],
        clockTolerance: CLOCK_SKEW_SECONDS,
      });
    } catch (err) {
      throw new OAuthError(401, 'invalid_client', `client assertion refused: ${err.code ?? err.message}`);
    }
    const { exp, jti } = verified.payload;
    const nowSeconds = Date.now() / 1000;
    if (exp > nowSeconds + MAX_ASSERTION_SECONDS + CLOCK_SKEW_SECONDS) {
      throw new OAuthError(401, 'invalid_client', 'client assertion exp is more than five minutes ahead');
    }
    this.dropExpired();
    const replayKey = `${clientId} ${jti}`;
    if (this.seenAssertions.has(replayKey)) {
      throw new OAuthError(401, 'invalid_client', 'client assertion jti was already used');
    }
    this.seenAssertions.set(replayKey, (exp + CLOCK_SKEW_SECONDS) * 1000);
    return clientId;
  }

  // The Authorization header of a /fhir request: undefined if it grants access, else
  // why not (for the OperationOutcome and WWW-Authenticate).
  refusal(authorization) {
    const match = /^Bearer\s+(\S+)$/i.exec(authorization ?? '');
    if (!match) {
      return { error: undefined, text: 'This server requires a bearer token' };
    }
    const token = match[1];
    if (this.staticToken !== undefined && safeEqual(token, this.staticToken)) {
      return undefined;
    }
    const grant = this.tokens.get(token);
    if (grant && grant.expiresAt > Date.now()) {
      return undefined;
    }
    this.tokens.delete(token);
    return { error: 'invalid_token', text: grant ? 'The access token has expired' : 'Unknown access token' };
  }

  dropExpired() {
    const now = Date.now();
    for (const [token, grant] of this.tokens) {
      if (grant.expiresAt <= now) this.tokens.delete(token);
    }
    for (const [key, expiresAt] of this.seenAssertions) {
      if (expiresAt <= now) this.seenAssertions.delete(key);
    }
  }
}

function safeEqual(a, b) {
  const left = Buffer.from(a);
  const right = Buffer.from(b);
  return left.length === right.length && crypto.timingSafeEqual(left, right);
}

// jose is ESM-only: imported dynamically, and only when auth is on.
async function createAuthorization({ smartClients, staticToken, tokenLifetimeSeconds, tokenUrl }) {
  const jose = await import('jose');
  return new SmartAuthorization({
    jose,
    clients: readClients(smartClients, jose),
    staticToken,
    tokenLifetimeSeconds,
    tokenUrl,
  });
}

module.exports = { OAuthError, createAuthorization };
