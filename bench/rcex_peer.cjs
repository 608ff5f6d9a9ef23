// The best client a user could pick instead of a2pd: RingCentral's TypeScript WebSocket
// extension, @rc-ex/ws, on node. It logs in to the emulator with the JWT grant, subscribes
// to every A2P filter and appends each notification to OUT as one JSON line, with one
// write() to the OS (like the other consumers in bench/consumers.py). The extension's own
// recovery is on, with its defaults: a dropped socket is reconnected and the session
// recovered the way the SDK does it. Runs until killed.
//
//     node bench/rcex_peer.cjs SERVER OUT JWT
//
// The modules come from tests/rcex (``npm ci --prefix tests/rcex``, which .ci/setup runs),
// or from the directory in A2PD_RCEX_MODULES.
"use strict";
const fs = require("fs");
const path = require("path");
const { createRequire } = require("module");

const modules = process.env.A2PD_RCEX_MODULES ||
  path.join(__dirname, "..", "tests", "rcex", "node_modules");
const load = createRequire(path.join(modules, "..", "package.json"));
const RingCentral = load("@rc-ex/core").default;
const WebSocketExtension = load("@rc-ex/ws").default;

const FILTERS = [
  "/restapi/v1.0/account/~/a2p-sms/batches",
  "/restapi/v1.0/account/~/a2p-sms/messages?direction=Inbound",
  "/restapi/v1.0/account/~/a2p-sms/messages?direction=Outbound",
  "/restapi/v1.0/account/~/a2p-sms/opt-outs",
];
const [server, out, jwt] = process.argv.slice(2);

async function main() {
  const fd = fs.openSync(out, "a", 0o644);
  const rc = new RingCentral({ server, clientId: "demo-client-id",
                               clientSecret: "demo-client-secret" });
  await rc.authorize({ jwt });
  const ws = new WebSocketExtension();
  await rc.installExtension(ws);
  await ws.subscribe(FILTERS, (event) => fs.writeSync(fd, JSON.stringify(event) + "\n"));
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e) + "\n");
  process.exit(1);
});
