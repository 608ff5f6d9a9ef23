// RingCentral's own WebSocket client, @rc-ex/ws, against the a2pd emulator: it logs in with
// the JWT grant, subscribes, and prints one JSON line per thing it sees on stdout, for
// tests/test_rcex.py to follow. Lines: {"ready": subscriptionId}, {"event": body},
// {"recovered": recoveryState}, {"error": text}. Arguments: server clientId clientSecret jwt
// filter. It runs until its stdin closes.
"use strict";
const RingCentral = require("@rc-ex/core").default;
const WebSocketExtension = require("@rc-ex/ws").default;
const { Events } = require("@rc-ex/ws");

const [server, clientId, clientSecret, jwt, filter] = process.argv.slice(2);
const say = (line) => process.stdout.write(JSON.stringify(line) + "\n");

async function main() {
  const rc = new RingCentral({ server, clientId, clientSecret });
  await rc.authorize({ jwt });
  // the SDK's default recovery check runs every 2-8 s: 0.2 s keeps the test short
  const ws = new WebSocketExtension({ autoRecover: { enabled: true, checkInterval: () => 200 } });
  await rc.installExtension(ws);
  ws.eventEmitter.on(Events.autoRecoverSuccess, () =>
    say({ recovered: ws.connectionDetails.recoveryState }));
  ws.eventEmitter.on(Events.autoRecoverFailed, () =>
    say({ recovered: ws.connectionDetails.recoveryState || "none" }));
  ws.eventEmitter.on(Events.autoRecoverError, (e) => say({ error: String(e) }));
  const subscription = await ws.subscribe([filter], (event) => say({ event: event.body }));
  say({ ready: subscription.subscriptionInfo.id });
  process.stdin.resume();
  process.stdin.on("end", async () => {
    await ws.revoke();
    process.exit(0);
  });
}

main().catch((e) => {
  say({ error: String(e && e.stack ? e.stack : e) });
  process.exit(1);
});
