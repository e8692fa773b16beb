// A real socket.io-client 4.x peer for the Python tests.
// usage: node sio_client.js '<json options>'
//   {url, namespace, token?, forged?, transports?, rooms?: [..], binary?, waitUpgrade?,
//    waitDisconnect?}
// Prints one JSON line: what the client saw, then exits.
const { io } = require("socket.io-client");

const opts = JSON.parse(process.argv[2]);
const auth = {};
if (opts.token) auth.token = opts.token;
if (opts.forged) auth.principal = opts.forged;

const socket = io(opts.url + (opts.namespace || "/"), {
  auth,
  transports: opts.transports || ["polling", "websocket"],
  reconnection: false,
  timeout: 5000,
});

const result = { errors: [], joins: {}, transport: null };
const done = (extra) => {
  Object.assign(result, extra || {});
  process.stdout.write(JSON.stringify(result) + "\n");
  socket.close();
  process.exit(0);
};
setTimeout(() => done({ timeout: true }), 15000);

socket.on("error", (payload) => result.errors.push(payload));
socket.on("connect_error", (err) => done({ connect_error: err.message, data: err.data || null }));
socket.on("connect", async () => {
  try {
    result.whoami = await socket.timeout(5000).emitWithAck("whoami");
    for (const room of opts.rooms || []) {
      result.joins[room] = await socket.timeout(5000).emitWithAck("join", room);
    }
    if (opts.binary) {
      const back = await socket.timeout(5000).emitWithAck("echo", Buffer.from([0, 1, 2, 255]));
      result.binary = Array.from(back);
    }
    if (opts.waitUpgrade && socket.io.engine.transport.name !== "websocket") {
      await new Promise((resolve) => socket.io.engine.once("upgrade", resolve));
    }
    result.transport = socket.io.engine.transport.name;
    // let a refused join's error event arrive before reporting
    await socket.timeout(5000).emitWithAck("whoami");
    if (opts.waitDisconnect) {
      const reason = await new Promise((resolve) => socket.once("disconnect", resolve));
      done({ disconnect: reason });
      return;
    }
    done();
  } catch (err) {
    done({ failure: String(err) });
  }
});
