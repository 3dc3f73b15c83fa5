// A minimal fleet back end for vehicle-agent, written from docs/ alone: it monitors one car
// (status, health, state, telemetry, events) and sends signed commands, each answered on the
// back end's own MQTT 5 response topic. It follows the checklist in docs/backend.md.
//
//   node backend.js --url mqtt://127.0.0.1:1883 --vehicle VIN0000000000000 \
//     --key keys/fleet-app.pem --kid fleet-app \
//     --send 'hvac.start {"target_temp_c": 21}' --exit-when-answered
//
// Every line it prints on stdout is one JSON object: {"kind": ..., ...}.

import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import { SignJWT, importPKCS8 } from "jose";
import mqtt from "mqtt";

const FINAL = new Set(["succeeded", "failed", "timed_out", "rejected"]);

const { values: opts } = parseArgs({
  options: {
    url: { type: "string", default: "mqtt://127.0.0.1:1883" },
    vehicle: { type: "string" },
    prefix: { type: "string" }, // mqtt.topic_prefix with the vehicle id filled in
    key: { type: "string" },
    kid: { type: "string" },
    send: { type: "string", multiple: true, default: [] },
    "client-id": { type: "string" },
    "ttl-s": { type: "string", default: "60" },
    "timeout-s": { type: "string", default: "60" },
    "exit-when-answered": { type: "boolean", default: false },
    // With --exit-when-answered: go on listening this long after the last answer (to see,
    // for example, a campaign's first capture).
    "linger-s": { type: "string", default: "0" },
  },
});
if (!opts.vehicle) {
  console.error("usage: node backend.js --vehicle ID [--url URL] [--key PEM --kid NAME --send 'CMD {json}' ...]");
  process.exit(2);
}
if (opts.send.length && !(opts.key && opts.kid)) {
  console.error("--send needs --key and --kid");
  process.exit(2);
}

const vehicle = opts.vehicle;
const prefix = opts.prefix ?? `vehicles/${vehicle}`;
const clientId = opts["client-id"] ?? `backend-${vehicle}`;
// Our own response topic: the car answers every request there too, rejections included.
const replyTopic = `backend/${clientId}/responses`;

const out = (kind, fields) => console.log(JSON.stringify({ kind, ...fields }));

// Persistent session, QoS 1: what the car publishes while we are away waits at the broker.
const client = mqtt.connect(opts.url, {
  clientId,
  protocolVersion: 5,
  clean: false,
  properties: { sessionExpiryInterval: 3600 },
  reconnectPeriod: 1000,
});

// Dedupe telemetry by (vehicle_id, seq): delivery is at least once.
const seen = new Map(); // vehicle_id -> highest seq (and gaps reported)
const pending = new Map(); // jti -> { command, correlation }
let online = null;
let lastHealth = null;

function onTelemetry(body) {
  const last = seen.get(body.vehicle_id) ?? 0;
  if (body.seq <= last) {
    out("telemetry_duplicate", { seq: body.seq });
    return;
  }
  if (last && body.seq > last + 1) out("telemetry_gap", { from: last + 1, to: body.seq - 1 });
  seen.set(body.vehicle_id, body.seq);
  out("telemetry", { seq: body.seq, samples: body.samples.length });
}

function onResponse(topic, body, correlation) {
  const request = pending.get(body.id) ?? [...pending.values()].find((p) => p.correlation === correlation);
  out("response", {
    topic,
    on_reply_topic: topic === replyTopic,
    correlation,
    command: request?.command ?? null,
    id: body.id,
    status: body.status,
    reason: body.reason ?? null,
    detail: body.detail ?? null,
  });
  if (topic === replyTopic && FINAL.has(body.status) && request) {
    pending.delete(request.jti);
    if (opts["exit-when-answered"] && pending.size === 0 && sent) {
      setTimeout(() => finish(0), Number(opts["linger-s"]) * 1000);
    }
  }
}

client.on("message", (topic, payload, packet) => {
  let body;
  try {
    body = JSON.parse(payload.toString("utf8"));
  } catch {
    out("unreadable", { topic });
    return;
  }
  const correlation = packet.properties?.correlationData?.toString("utf8") ?? null;
  if (topic === replyTopic) return onResponse(topic, body, correlation);
  switch (topic.slice(prefix.length + 1)) {
    case "status": // liveness, with health: never judge a car by its telemetry
      online = body.online;
      out("status", { online: body.online, reason: body.reason ?? null, ts: body.ts, retained: packet.retain });
      break;
    case "health":
      lastHealth = Date.now();
      out("health", { uptime_s: body.uptime_s, outbox_depth: body.outbox.depth, connected: body.mqtt.connected });
      break;
    case "state":
      out("state", { values: Object.keys(body.values).length, alerts: body.alerts });
      break;
    case "telemetry":
      onTelemetry(body);
      break;
    case "events":
      out("event", { type: body.type, name: body.name, seq: body.seq });
      break;
    case "commands/response":
      break; // ours come on replyTopic; others' answers are not our business
    default:
      if (topic.startsWith(`${prefix}/campaigns/`)) {
        // A campaign's capture: its own seq per campaign, deduplicated like telemetry.
        const key = `${body.vehicle_id}/${body.campaign}`;
        if (body.seq <= (seen.get(key) ?? 0)) break;
        seen.set(key, body.seq);
        out("campaign", {
          campaign: body.campaign,
          version: body.version,
          seq: body.seq,
          trigger_ts: body.trigger_ts,
          samples: body.samples.length,
        });
        break;
      }
      out("other", { topic });
  }
});

let sent = false;
let key = null;

async function sign(command, params) {
  key ??= await importPKCS8(readFileSync(opts.key, "utf8"), "EdDSA");
  const jti = randomUUID();
  const ttl = Number(opts["ttl-s"]);
  const token = await new SignJWT({ cmd: command, params })
    .setProtectedHeader({ alg: "EdDSA", kid: opts.kid, typ: "JWT" })
    .setJti(jti)
    .setAudience(vehicle)
    .setIssuedAt()
    .setExpirationTime(`${ttl}s`)
    .sign(key);
  return { jti, token };
}

async function sendAll() {
  for (const spec of opts.send) {
    const space = spec.indexOf(" ");
    const command = space < 0 ? spec : spec.slice(0, space);
    const params = space < 0 ? {} : JSON.parse(spec.slice(space + 1));
    const { jti, token } = await sign(command, params);
    const correlation = `${command}:${jti}`;
    pending.set(jti, { jti, command, correlation });
    await client.publishAsync(`${prefix}/commands/request`, token, {
      qos: 1,
      properties: { responseTopic: replyTopic, correlationData: Buffer.from(correlation) },
    });
    out("sent", { command, id: jti, params });
  }
  sent = true;
  if (opts["exit-when-answered"] && pending.size === 0) finish(0);
}

function finish(code) {
  client.end(false, {}, () => process.exit(code));
}

let started = false;
client.on("connect", async () => {
  out("connected", { url: opts.url, client_id: clientId });
  if (started) return; // a reconnect: the persistent session kept our subscriptions
  started = true;
  // Subscribe to the answers before sending anything.
  const topics = ["status", "health", "state", "telemetry", "events", "commands/response", "campaigns/+"].map(
    (t) => `${prefix}/${t}`,
  );
  await client.subscribeAsync([...topics, replyTopic], { qos: 1 });
  if (!opts.send.length) return;
  // Commands need a car that is online (retained P/status) and knows its state.
  const waitOnline = setInterval(() => {
    if (online === true && lastHealth !== null) {
      clearInterval(waitOnline);
      sendAll().catch((err) => {
        console.error(`cannot send: ${err.message}`);
        finish(1);
      });
    }
  }, 100);
});
client.on("error", (err) => console.error(`mqtt: ${err.message}`));

const timeout = setTimeout(() => {
  out("timeout", { waiting_for: [...pending.values()].map((p) => p.command) });
  finish(1);
}, Number(opts["timeout-s"]) * 1000);
timeout.unref();
if (!opts["exit-when-answered"]) clearTimeout(timeout);
