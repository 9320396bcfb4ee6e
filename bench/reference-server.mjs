// Benchmark baseline: the real @logux/server 0.14.0 (Logux protocol 5) running the
// same app as bench/rhizome-bench.toml.
//
//   NODE_ENV=production PORT=31338 node bench/reference-server.mjs
//
// bench/run.sh starts it this way. NODE_ENV=production matters: in development mode
// the server sends debug frames and logs every error, and a fan-out run can end up in
// an error-logging loop (reference notes §7.2, gotcha 8). If NODE_ENV is unset, this
// script sets it to "production" before @logux/server is loaded, and it also passes
// `env: 'production'` to the Server explicitly.
//
// The app:
//   auth                 everyone is accepted
//   type inc             access true; resend -> channel `counter/{action.id}`; no process()
//                        (the server then marks the action processed right away)
//   channel counter/:id  access true; no load() (nothing is sent on subscribe)
//   subprotocol 1, minSubprotocol 1, quiet no-op logger (fatal errors go to stderr)
//
// Env: PORT (default 31338), HOST (default 127.0.0.1).
// When ready it prints exactly one line on stdout:
//   listening ws://127.0.0.1:PORT pid=PID
//
// @logux/server is loaded from ../interop/node_modules (installed by `npm ci` in
// interop/, whose package-lock pins @logux/server 0.14.0), so bench/ needs no
// package.json of its own. Node resolves the server's own dependencies from the
// real location of that file, so a relative import works under ESM.
if (!process.env.NODE_ENV) process.env.NODE_ENV = 'production'

// Dynamic import so the NODE_ENV assignment above runs before the module loads.
const { Server } = await import('../interop/node_modules/@logux/server/index.js')

const noop = () => {}
const logger = {
  debug: noop,
  info: noop,
  warn: noop,
  error: noop,
  fatal: (...args) => console.error(...args)
}

const host = process.env.HOST || '127.0.0.1'
const port = Number(process.env.PORT || 31338)

const server = new Server({
  subprotocol: 1,
  minSubprotocol: 1,
  env: process.env.NODE_ENV,
  host,
  port,
  logger
})

server.auth(() => true)

server.type('inc', {
  access() {
    return true
  },
  resend(ctx, action) {
    return `counter/${action.id}`
  }
})

server.channel('counter/:id', {
  access() {
    return true
  }
})

// @logux/server handles SIGINT; make SIGTERM (what run.sh sends) exit cleanly too.
process.on('SIGTERM', async () => {
  try {
    await server.destroy()
  } finally {
    process.exit(0)
  }
})

await server.listen()
console.log(`listening ws://${host}:${port} pid=${process.pid}`)
