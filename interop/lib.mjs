// Shared helpers for the interop scripts: the real @logux/client 0.23.2
// (protocol 5, via its @logux/core 0.10.0) running on Node with `ws`.
//
// Environment:
//   RHIZOME_JWT_SECRET  HS256 secret for tokens (default "interop-secret")
//   TRACE=1             print every WebSocket frame (truncated) to stderr
import { Client, LoguxUndoError, status } from '@logux/client'
import { WebSocket as WsWebSocket } from 'ws'

import { signJwt } from './jwt.mjs'

export { LoguxUndoError, status }

const TRACE = !!process.env.TRACE

// ---------------------------------------------------------------------------
// WebSocket polyfill. Node 20 has no global WebSocket and @logux/core's
// WsConnection reads globalThis.WebSocket in its constructor, so this must be
// set before any `new Client()` (importing this module does it).
//
// The subclass also taps every frame so the scripts can see exactly what the
// server sent to each client (the client's Log silently drops an action whose
// id it already holds, so log events alone cannot prove "no echo").
// ---------------------------------------------------------------------------
const clients = new Set()

function findClient(ws) {
  if (ws.__rzClient) return ws.__rzClient
  for (let c of clients) {
    let conn = c.node.connection
    let wsConn = conn.connection || conn // Reconnect wraps WsConnection
    if (wsConn.ws === ws) {
      ws.__rzClient = c
      return c
    }
  }
  return undefined
}

function decodeId(id, base, remoteNodeId) {
  if (typeof id === 'number') return `${id + base} ${remoteNodeId} 0`
  if (Array.isArray(id) && id.length === 2) return `${id[0] + base} ${remoteNodeId} ${id[1]}`
  if (Array.isArray(id) && id.length === 3) return `${id[0] + base} ${id[1]} ${id[2]}`
  return String(id)
}

function onFrame(ws, dir, raw) {
  let c = findClient(ws)
  if (TRACE) {
    let who = c ? c.options.userId : '?'
    let text = raw.length > 300 ? raw.slice(0, 300) + '…' : raw
    process.stderr.write(`  [${who}] ${dir === 'in' ? 'S→C' : 'C→S'} ${text}\n`)
  }
  if (!c) return
  let msg
  try {
    msg = JSON.parse(raw)
  } catch {
    c.tap.garbage.push(raw)
    return
  }
  if (!Array.isArray(msg)) return
  let tap = c.tap
  if (dir === 'in') {
    if (msg[0] === 'connected') {
      tap.baseTime = msg[3][1]
      tap.remoteNodeId = msg[2]
      tap.connectedCount += 1
    } else if (msg[0] === 'error') {
      tap.errors.push({ type: msg[1], options: msg[2] })
    } else if (msg[0] === 'sync') {
      tap.syncAdded = Math.max(tap.syncAdded, msg[1])
      for (let i = 2; i + 1 < msg.length; i += 2) {
        let action = msg[i]
        let meta = msg[i + 1]
        tap.received.push({
          action,
          id: decodeId(meta.id, tap.baseTime, tap.remoteNodeId),
          connection: tap.connectedCount
        })
      }
    }
  } else if (msg[0] === 'connect') {
    tap.connectCount += 1
  } else if (msg[0] === 'synced') {
    tap.syncedSent = Math.max(tap.syncedSent, msg[1])
  } else if (msg[0] === 'sync') {
    for (let i = 2; i + 1 < msg.length; i += 2) {
      tap.sent.push({
        action: msg[i],
        id: decodeId(msg[i + 1].id, tap.baseTime, c.nodeId),
        connection: tap.connectedCount
      })
    }
  }
}

class TapWebSocket extends WsWebSocket {
  constructor(...args) {
    super(...args)
    this.addEventListener('message', e => onFrame(this, 'in', String(e.data)))
  }

  send(data, ...rest) {
    onFrame(this, 'out', String(data))
    return super.send(data, ...rest)
  }
}

globalThis.WebSocket = TapWebSocket

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

// HS256 JWT {sub: userId, exp}. expSeconds is relative to now (negative = expired).
// opts.secret overrides RHIZOME_JWT_SECRET (used to forge a bad signature).
export function token(userId, { expSeconds = 3600, secret, sub = userId } = {}) {
  let exp = Math.floor(Date.now() / 1000) + expSeconds
  return signJwt({ sub, exp }, secret)
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

// A real @logux/client Client. opts: token (default: a valid token for userId),
// minDelay/maxDelay/attempts (Reconnect), any other Client option.
export function makeClient(url, userId, opts = {}) {
  let { token: tok, ...rest } = opts
  let client = new Client({
    server: url,
    subprotocol: 1,
    userId,
    token: tok === undefined ? token(userId) : tok,
    // ws:// + a non-development server would make the client destroy itself
    allowDangerousProtocol: true,
    minDelay: 300,
    maxDelay: 1000,
    ...rest
  })
  client.tap = {
    baseTime: 0,
    remoteNodeId: undefined,
    connectCount: 0, // `connect` messages sent (= connection attempts that opened)
    connectedCount: 0, // `connected` answers received
    received: [], // every action the server sent: {action, id, connection}
    syncAdded: 0, // the highest `added` of a server `sync`
    syncedSent: 0, // the highest `added` this client confirmed with `synced`
    sent: [], // every action this client sent: {action, id, connection}
    errors: [], // `error` messages received
    garbage: []
  }
  // Errors go to client.errors instead of being thrown by BaseNode.
  client.errors = []
  client.node.catch(e => {
    client.errors.push(e)
  })
  clients.add(client)
  return client
}

export async function startClient(client, ms = 10000) {
  client.start()
  await withTimeout(
    client.waitFor('synchronized'),
    ms,
    `${client.options.userId} reaching state synchronized`
  )
}

// Actions received from the server (frame level), optionally filtered.
export function received(client, filter = () => true) {
  return client.tap.received.filter(r => filter(r.action, r.id))
}

// Simulate a network drop: destroy the underlying TCP socket (no close frame).
// reconnect:false also pauses the client's Reconnect until reconnect(client).
export function dropConnection(client, { reconnect = true } = {}) {
  let rc = client.node.connection
  if (!reconnect) rc.reconnecting = false
  let ws = (rc.connection || rc).ws
  if (!ws) throw new Error(`${client.options.userId}: no open socket to drop`)
  ws.terminate()
}

export function reconnect(client) {
  return client.node.connection.connect()
}

export function destroyAll() {
  for (let c of clients) {
    try {
      c.destroy()
    } catch {}
  }
}

// ---------------------------------------------------------------------------
// Timing helpers (every wait is bounded)
// ---------------------------------------------------------------------------

export const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

export function withTimeout(promise, ms, label) {
  let timer
  return Promise.race([
    promise,
    new Promise((resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${label}`)), ms)
    })
  ]).finally(() => clearTimeout(timer))
}

// Polls cond() every 10 ms; resolves true when it holds, false after ms.
export async function waitUntil(cond, ms) {
  let deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (cond()) return true
    await sleep(10)
  }
  return !!cond()
}

// Resolves to {ok:true, value} | {ok:false, error} | {ok:false, timeout:true}
export async function settle(promise, ms, label = 'promise') {
  try {
    return { ok: true, value: await withTimeout(promise, ms, label) }
  } catch (error) {
    return { ok: false, error, timeout: /^timed out after/.test(error.message) }
  }
}

// ---------------------------------------------------------------------------
// Checks / reporting
// ---------------------------------------------------------------------------

let passed = 0
let failed = 0

export function check(cond, msg, detail) {
  if (cond) {
    passed += 1
    console.log(`ok - ${msg}`)
  } else {
    failed += 1
    console.log(`not ok - ${msg}${detail !== undefined ? ` (${detail})` : ''}`)
  }
  return !!cond
}

export function note(msg) {
  console.log(`# ${msg}`)
}

export function serverUrl() {
  let url = process.argv[2]
  if (!url || !/^wss?:\/\//.test(url)) {
    console.error(`usage: node ${process.argv[1]} ws://HOST:PORT`)
    process.exit(2)
  }
  return url
}

function finish(name) {
  destroyAll()
  console.log(`# ${name}: ${passed} passed, ${failed} failed`)
  process.exit(failed === 0 && passed > 0 ? 0 : 1)
}

// Runs a script body with a hard deadline; never hangs, exits 0 only if all
// checks passed.
export async function run(name, body, { deadlineMs = 55000 } = {}) {
  let watchdog = setTimeout(() => {
    check(false, `${name} finished within ${deadlineMs} ms`, 'watchdog fired')
    finish(name)
  }, deadlineMs)
  process.on('unhandledRejection', e => {
    check(false, `no unhandled rejection`, e && e.stack ? e.stack : String(e))
  })
  try {
    await body(serverUrl())
  } catch (e) {
    check(false, `${name} ran without exceptions`, e && e.stack ? e.stack : String(e))
  }
  clearTimeout(watchdog)
  finish(name)
}
