#!/usr/bin/env node
// A partner system for Careweave's demo and tests: an @medplum/hl7 Hl7Server receives
// HL7 v2 over MLLP (framing, decoding, parsing and sending ACKs are the library's) and
// this script answers each message as it is told to.
//
//   node partners/partner.js --name billing --port 0 --control-port 0 --host 127.0.0.1
//
// prints, once both servers listen, one line:  PARTNER <name> mllp=<port> control=<port>
//
// MLLP over TLS: --tls-cert server.pem --tls-key server.key [--tls-client-ca ca.pem]
// (with a client CA, a client certificate it issued is required: mutual TLS). The TLS
// socket is handed to @medplum/hl7's Hl7Connection, which does the MLLP as before.
//
// Control endpoint (JSON, on --host:--control-port):
//   GET  /health    -> 200 {"ok": true, "name": ...}
//   GET  /messages  -> 200 [{received_at, control_id, message_type, text, answered}, ...]
//   POST /mode      {"mode": "AA"|"AE"|"AR"|"silent", "code": "207", "text": "", "times": N,
//                    "patient_id": "MRN1"}
//                   -> 200 {"ok": true}; bad JSON or an unknown mode -> 400 {"error": ...}
//                   With patient_id the mode is for that patient's messages only (PID-3's
//                   first ID); the others are answered AA and do not count towards times.
//   POST /reset     -> 200 {"ok": true}: forget the messages, back to mode AA
'use strict';

const fs = require('node:fs');
const http = require('node:http');
const tls = require('node:tls');
const { parseArgs } = require('node:util');
const { Hl7Segment } = require('@medplum/core');
const { Hl7Connection, Hl7Server } = require('@medplum/hl7');

const MODES = new Set(['AA', 'AE', 'AR', 'silent']);
const DEFAULT_MODE = Object.freeze({
  mode: 'AA',
  code: '207',
  text: '',
  times: null,
  patientId: null,
});

// HL7 escape sequences for a value placed inside a component (delimiters from MSH-1/2).
function escapeHl7(value, context) {
  const esc = context.escapeCharacter ?? '\\';
  const pairs = [
    [context.fieldSeparator ?? '|', 'F'],
    [context.componentSeparator ?? '^', 'S'],
    [context.subcomponentSeparator ?? '&', 'T'],
    [context.repetitionSeparator ?? '~', 'R'],
  ];
  let out = String(value).split(esc).join(`${esc}E${esc}`);
  for (const [char, code] of pairs) {
    out = out.split(char).join(`${esc}${code}${esc}`);
  }
  return out.replace(/\r/g, `${esc}X0D${esc}`).replace(/\n/g, `${esc}X0A${esc}`);
}

class Partner {
  constructor(name) {
    this.name = name;
    this.records = [];
    this.mode = { ...DEFAULT_MODE };
  }

  reset() {
    this.records.length = 0;
    this.mode = { ...DEFAULT_MODE };
  }

  setMode(body) {
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
      throw new Error('the body must be a JSON object');
    }
    const { mode, code = '207', text = '', times = null, patient_id: patientId = null } = body;
    if (!MODES.has(mode)) {
      throw new Error(`unknown mode ${JSON.stringify(mode)}; use AA, AE, AR or silent`);
    }
    if (times !== null && !(Number.isInteger(times) && times > 0)) {
      throw new Error('times must be a positive integer (or omitted: until changed)');
    }
    if (!['string', 'number'].includes(typeof code) || String(code) === '') {
      throw new Error('code must be a non-empty string (HL7 table 0357)');
    }
    if (typeof text !== 'string') {
      throw new Error('text must be a string');
    }
    if (patientId !== null && !(typeof patientId === 'string' && patientId !== '')) {
      throw new Error('patient_id must be a non-empty string (PID-3), or omitted: every patient');
    }
    this.mode = { mode, code: String(code), text, times, patientId };
  }

  // The answer for the next message; a limited mode returns to AA when used up.
  nextAnswer(patientId) {
    if (this.mode.patientId !== null && this.mode.patientId !== patientId) {
      return { ...DEFAULT_MODE };
    }
    const current = { ...this.mode };
    if (this.mode.times !== null) {
      this.mode.times -= 1;
      if (this.mode.times <= 0) {
        this.mode = { ...DEFAULT_MODE };
      }
    }
    return current;
  }

  receive(connection, message) {
    const header = message.getSegment('MSH');
    // PID-3, first repetition, first component: the patient's ID in the sender's list.
    const pid3 = message.getSegment('PID')?.getField(3)?.getComponent(1) ?? '';
    const answer = this.nextAnswer(pid3);
    this.records.push({
      received_at: new Date().toISOString(),
      control_id: header?.getField(10)?.toString() ?? '',
      message_type: header?.getField(9)?.toString() ?? '',
      text: message.toString(),
      answered: answer.mode === 'silent' ? 'none' : answer.mode,
    });
    if (answer.mode === 'silent') {
      return;
    }
    if (answer.mode === 'AA') {
      // MSH with sending/receiving application and facility swapped, MSA|AA|<MSH-10>.
      connection.send(message.buildAck({ ackCode: 'AA' }));
      return;
    }
    // v2.5 ERR: ERR-3 (HL7 error code, CWE) = code^text^HL70357, ERR-4 severity E.
    const context = message.context;
    const err = Hl7Segment.parse(
      [
        'ERR',
        '',
        '',
        [escapeHl7(answer.code, context), escapeHl7(answer.text, context), 'HL70357'].join(
          context.componentSeparator ?? '^'
        ),
        'E',
      ].join(context.fieldSeparator ?? '|'),
      context
    );
    connection.send(message.buildAck({ ackCode: answer.mode, errSegment: err }));
  }
}

function controlServer(partner) {
  return http.createServer((req, res) => {
    const reply = (status, body) => {
      res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8' });
      res.end(JSON.stringify(body));
    };
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      const path = new URL(req.url, 'http://partner').pathname;
      if (req.method === 'GET' && path === '/health') {
        reply(200, { ok: true, name: partner.name });
      } else if (req.method === 'GET' && path === '/messages') {
        reply(200, partner.records);
      } else if (req.method === 'POST' && path === '/reset') {
        partner.reset();
        reply(200, { ok: true });
      } else if (req.method === 'POST' && path === '/mode') {
        let body;
        try {
          body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        } catch (err) {
          reply(400, { error: `bad JSON: ${err.message}` });
          return;
        }
        try {
          partner.setMode(body);
        } catch (err) {
          reply(400, { error: err.message });
          return;
        }
        reply(200, { ok: true });
      } else {
        reply(404, { error: `no ${req.method} ${path}` });
      }
    });
  });
}

function listening(server) {
  return new Promise((resolve, reject) => {
    if (server.listening) {
      resolve();
      return;
    }
    server.once('listening', resolve);
    server.once('error', reject);
  });
}

function parsePort(value, option) {
  const port = Number(value);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`${option} must be a port number (0 = any free port), not ${value}`);
  }
  return port;
}

// Hl7Server listens on plain TCP only; for TLS the same handler gets an Hl7Connection
// around each TLS socket (a tls.TLSSocket is a net.Socket).
function startTlsMllp(onConnection, { port, host, cert, key, clientCa, name }) {
  const connections = new Set();
  const server = tls.createServer(
    {
      cert: fs.readFileSync(cert),
      key: fs.readFileSync(key),
      minVersion: 'TLSv1.2',
      ...(clientCa
        ? { ca: fs.readFileSync(clientCa), requestCert: true, rejectUnauthorized: true }
        : {}),
    },
    (socket) => {
      const connection = new Hl7Connection(socket, 'utf-8');
      connections.add(connection);
      connection.addEventListener('close', () => connections.delete(connection));
      onConnection(connection);
    }
  );
  server.on('tlsClientError', (err) => {
    console.error(`partner ${name}: TLS handshake failed: ${err.code ?? err.message}`);
  });
  server.listen(port, host);
  const stop = () =>
    new Promise((resolve) => {
      for (const connection of connections) {
        connection.close().catch(() => undefined);
      }
      server.close(() => resolve());
    });
  return { server, stop };
}

async function main() {
  const { values } = parseArgs({
    options: {
      name: { type: 'string', default: 'partner' },
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '0' },
      'control-port': { type: 'string', default: '0' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'tls-client-ca': { type: 'string' },
    },
  });
  const host = values.host;
  const partner = new Partner(values.name);

  const onConnection = (connection) => {
    connection.addEventListener('message', (event) => partner.receive(connection, event.message));
    connection.addEventListener('error', (event) => {
      console.error(`partner ${partner.name}: ${event.error?.message ?? event.error}`);
    });
  };
  const port = parsePort(values.port, '--port');
  let mllp;
  if (values['tls-cert'] || values['tls-key']) {
    if (!values['tls-cert'] || !values['tls-key']) {
      throw new Error('--tls-cert and --tls-key go together');
    }
    mllp = startTlsMllp(onConnection, {
      port,
      host,
      cert: values['tls-cert'],
      key: values['tls-key'],
      clientCa: values['tls-client-ca'],
      name: partner.name,
    });
  } else {
    const hl7 = new Hl7Server(onConnection);
    // Hl7Server.start(port) hands its argument to net.Server.listen(), which also takes
    // {port, host}: that keeps the MLLP port on --host (loopback) instead of every interface.
    hl7.start({ port, host }, 'utf-8');
    mllp = { server: hl7.server, stop: () => hl7.stop({ forceDrainTimeoutMs: 0 }) };
  }
  await listening(mllp.server);
  const mllpPort = mllp.server.address().port;

  const control = controlServer(partner);
  control.listen(parsePort(values['control-port'], '--control-port'), host);
  await listening(control);
  const controlPort = control.address().port;

  process.stdout.write(`PARTNER ${partner.name} mllp=${mllpPort} control=${controlPort}\n`);

  let stopping = false;
  const stop = () => {
    if (stopping) {
      return;
    }
    stopping = true;
    // Whatever happens, be gone within 3 s.
    setTimeout(() => process.exit(0), 3000).unref();
    control.closeAllConnections?.();
    const closed = [
      new Promise((resolve) => control.close(() => resolve())),
      mllp.stop().catch(() => undefined),
    ];
    Promise.all(closed).finally(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => {
  console.error(`partner: ${err.message ?? err}`);
  process.exit(1);
});
