// Reference implementation of Rhizome's interop configuration on the real
// @logux/server 0.14.0 (protocol 5). Used to validate the interop scripts
// themselves and as a benchmark baseline.
//
//   PORT=31337 node interop/reference-server.mjs
//
// Env: PORT (default 31337), HOST (default 127.0.0.1),
//      RHIZOME_JWT_SECRET (default "interop-secret"), DEBUG=1 (print server errors).
//
// Rules (must stay identical to Rhizome's interop config):
//   auth     HS256 JWT; valid signature, `exp` in the future, `sub` == user id of the node id
//   counter/:id   anyone may subscribe, anyone may write
//   users/:user   only :user may subscribe or write
//   news          anyone may subscribe, nobody may write
//   type inc      resend to counter/{action.id}
//   type post     resend to action.channel; allowed only if the sender may write it
//   other types   undo unknownType (server default); unknown channel: undo wrongChannel
//   no channel has `load` (no initial state is sent on subscribe)
process.env.NODE_ENV = 'production'

const { Server } = await import('@logux/server')
const { verifyJwt } = await import('./jwt.mjs')

const DEBUG = !!process.env.DEBUG
const noop = () => {}
const logger = {
  debug: noop,
  info: noop,
  warn: noop,
  error: DEBUG ? (...a) => console.error(...a) : noop,
  fatal: (...a) => console.error(...a)
}

const server = new Server({
  subprotocol: 1,
  minSubprotocol: 1,
  env: 'production',
  port: Number(process.env.PORT || 31337),
  host: process.env.HOST || '127.0.0.1',
  logger
})

server.auth(({ userId, token }) => {
  let payload = verifyJwt(token)
  return !!payload && typeof userId === 'string' && payload.sub === userId
})

// Channel rules shared by subscribe access and write (resend) access.
function matchChannel(name) {
  if (typeof name !== 'string') return null
  let m
  if ((m = /^counter\/([^/]+)$/.exec(name))) return { kind: 'counter', id: m[1] }
  if ((m = /^users\/([^/]+)$/.exec(name))) return { kind: 'users', user: m[1] }
  if (name === 'news') return { kind: 'news' }
  return null
}

function maySubscribe(name, userId) {
  let ch = matchChannel(name)
  if (!ch) return false
  if (ch.kind === 'users') return ch.user === userId
  return true // counter/*, news
}

function mayWrite(name, userId) {
  let ch = matchChannel(name)
  if (!ch) return false
  if (ch.kind === 'counter') return true
  if (ch.kind === 'users') return ch.user === userId
  return false // news
}

server.channel('counter/:id', {
  access(ctx) {
    return maySubscribe(`counter/${ctx.params.id}`, ctx.userId)
  }
})

server.channel('users/:user', {
  access(ctx) {
    return maySubscribe(`users/${ctx.params.user}`, ctx.userId)
  }
})

server.channel('news', {
  access(ctx) {
    return maySubscribe('news', ctx.userId)
  }
})

server.type('inc', {
  access(ctx, action) {
    let id = action.id
    if (typeof id !== 'string' && typeof id !== 'number') return false
    return mayWrite(`counter/${id}`, ctx.userId)
  },
  resend(ctx, action) {
    return `counter/${action.id}`
  }
})

server.type('post', {
  access(ctx, action) {
    return mayWrite(action.channel, ctx.userId)
  },
  resend(ctx, action) {
    return action.channel
  }
})

await server.listen()
console.error(
  `reference @logux/server 0.14.0 listening on ws://${server.options.host}:${server.options.port}/`
)
