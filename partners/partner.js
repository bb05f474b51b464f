#!/usr/bin/env node
// A partner system for Careweave's demo and tests: receives HL7 v2 over MLLP with
// @medplum/hl7's Hl7Connection (the per-connection half of its Hl7Server: MLLP framing,
// parsing, sending ACKs; code nobody on this project wrote) and answers as told.
// A small HTTP control endpoint shows what arrived and switches the answer:
//   GET /messages, POST /mode {"mode": "AA"|"AE"|"AR"|"silent", "code", "text", "times"},
//   POST /reset, GET /health.
'use strict';

const http = require('node:http');
const net = require('node:net');
const { parseArgs } = require('node:util');
const { Hl7Segment } = require('@medplum/core');
const { Hl7Connection } = require('@medplum/hl7');

const MODES = new Set(['AA', 'AE', 'AR', 'silent']);

class Partner {
  constructor(name) {
    this.name = name;
    this.records = [];
    this.reset();
  }

  reset() {
    this.records.length = 0;
    this.mode = { mode: 'AA', code: '207', text: '', times: null };
  }

  setMode({ mode, code = '207', text = '', times = null }) {
    if (!MODES.has(mode)) {
      throw new Error(`unknown mode ${JSON.stringify(mode)}; use AA, AE, AR or silent`);
    }
    if (times !== null && !(Number.isInteger(times) && times > 0)) {
      throw new Error('times must be a positive integer');
    }
    this.mode = { mode, code: String(code), text: String(text), times };
  }

  // The answer for the next message; a limited mode falls back to AA when used up.
  nextAnswer() {
    const current = { ...this.mode };
    if (current.times !== null) {
      this.mode.times -= 1;
      if (this.mode.times <= 0) {
        this.mode = { mode: 'AA', code: '207', text: '', times: null };
      }
    }
    return current;
  }

  receive(connection, message) {
    const header = message.getSegment('MSH');
    const answer = this.nextAnswer();
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
      connection.send(message.buildAck({ ackCode: 'AA' }));
      return;
    }
    const err = Hl7Segment.parse(
      `ERR|||${answer.code}^${answer.text || 'Rejected by partner'}^HL70357|E`,
      message.context
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
      if (req.method === 'GET' && req.url === '/health') {
        reply(200, { ok: true, name: partner.name });
      } else if (req.method === 'GET' && req.url === '/messages') {
        reply(200, partner.records);
      } else if (req.method === 'POST' && req.url === '/reset') {
        partner.reset();
        reply(200, { ok: true });
      } else if (req.method === 'POST' && req.url === '/mode') {
        try {
          partner.setMode(JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}'));
          reply(200, { ok: true });
        } catch (err) {
          reply(400, { error: err.message });
        }
      } else {
        reply(404, { error: `no ${req.method} ${req.url}` });
      }
    });
  });
}

async function main() {
  const { values } = parseArgs({
    options: {
      name: { type: 'string', default: 'partner' },
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '0' },
      'control-port': { type: 'string', default: '0' },
    },
  });
  const host = values.host;
  const partner = new Partner(values.name);
  // Hl7Server.start(port) listens on every interface; only loopback is ever a target
  // here, so the listening socket is ours and each connection is the library's.
  const connections = new Set();
  const server = net.createServer((socket) => {
    const connection = new Hl7Connection(socket, 'utf-8');
    connections.add(connection);
    socket.on('close', () => connections.delete(connection));
    connection.addEventListener('message', (event) => partner.receive(connection, event.message));
    connection.addEventListener('error', () => socket.destroy());
  });
  await new Promise((resolve) => server.listen(Number(values.port), host, resolve));
  const mllpPort = server.address().port;
  const control = controlServer(partner);
  await new Promise((resolve) => control.listen(Number(values['control-port']), host, resolve));
  console.log(`PARTNER ${partner.name} mllp=${mllpPort} control=${control.address().port}`);

  const stop = () => {
    control.close();
    server.close();
    for (const connection of connections) {
      connection.socket.destroy();
    }
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
