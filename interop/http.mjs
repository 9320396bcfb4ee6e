// http: the real @logux/client without a WebSocket, over Rhizome's HTTP sync API through
// http-connection.mjs, next to a WebSocket client of the same server.
//   node interop/http.mjs ws://127.0.0.1:31337
//
// alice (HTTP) and bob (WebSocket) subscribe to counter/h; alice sends 100 actions and every
// client.sync() resolves with logux/processed; bob receives all 100 once; bob sends 20 and
// alice receives them through her long-poll, once each, none of her own back; alice's denied
// action comes back as logux/undo; her offline queue is delivered when she is back online.
//
// A Rhizome feature: the reference @logux/server 0.14.0 has no HTTP transport.
import { Reconnect } from '@logux/core'

import { HttpConnection } from './http-connection.mjs'
import {
  LoguxUndoError,
  check,
  makeClient,
  received,
  run,
  settle,
  startClient,
  waitUntil
} from './lib.mjs'

const ALICE_ACTIONS = 100
const BOB_ACTIONS = 20

await run('http', async url => {
  let httpUrl = url.replace(/^ws/, 'http')
  let connection = new HttpConnection(httpUrl)
  let alice = makeClient(httpUrl, 'alice', {
    server: new Reconnect(connection, { minDelay: 300, maxDelay: 1000 })
  })
  // What the HTTP connection delivered to alice's client (lib.mjs taps WebSocket frames only).
  let aliceReceived = []
  connection.on('message', message => {
    if (message[0] !== 'sync') return
    for (let i = 2; i < message.length; i += 2) aliceReceived.push(message[i])
  })
  let bob = makeClient(url, 'bob')
  let started = await settle(Promise.all([startClient(alice), startClient(bob)]), 12000, 'connect')
  check(started.ok, 'alice (HTTP) and bob (WebSocket) connect', started.error?.message)
  if (!started.ok) return

  let subs = await settle(
    Promise.all([
      alice.sync({ type: 'logux/subscribe', channel: 'counter/h' }),
      bob.sync({ type: 'logux/subscribe', channel: 'counter/h' })
    ]),
    8000,
    'subscribe'
  )
  check(subs.ok, 'both subscribe to counter/h', subs.error?.message)

  let sends = []
  for (let i = 0; i < ALICE_ACTIONS; i++) sends.push(alice.sync({ type: 'inc', id: 'h', n: i }))
  let sent = await settle(Promise.all(sends), 15000, "alice's actions")
  check(sent.ok, `alice's ${ALICE_ACTIONS} actions over HTTP are processed`, sent.error?.message)

  let bobGot = () => received(bob, a => a.type === 'inc' && a.n < ALICE_ACTIONS)
  await waitUntil(() => bobGot().length >= ALICE_ACTIONS, 8000)
  let ns = bobGot().map(r => r.action.n)
  check(ns.length === ALICE_ACTIONS && new Set(ns).size === ALICE_ACTIONS, `bob receives all ${ALICE_ACTIONS} once`, ns.length)

  let bobSends = []
  for (let i = 0; i < BOB_ACTIONS; i++) bobSends.push(bob.sync({ type: 'inc', id: 'h', n: 1000 + i }))
  let bobSent = await settle(Promise.all(bobSends), 8000, "bob's actions")
  check(bobSent.ok, `bob's ${BOB_ACTIONS} actions over the WebSocket are processed`, bobSent.error?.message)
  let aliceGot = () => aliceReceived.filter(a => a.type === 'inc').map(a => ({ action: a }))
  await waitUntil(() => aliceGot().length >= BOB_ACTIONS, 8000)
  let got = aliceGot().map(r => r.action.n)
  check(
    got.length === BOB_ACTIONS && got.every((n, i) => n === 1000 + i),
    `alice receives bob's ${BOB_ACTIONS} through her long-poll, in order, none of her own`,
    JSON.stringify(got)
  )

  let denied = await settle(alice.sync({ type: 'post', channel: 'users/bob', text: 'no' }), 8000, 'denied')
  check(
    !denied.ok && denied.error instanceof LoguxUndoError && denied.error.action.reason === 'denied',
    "alice's post to bob's channel is undone with reason denied",
    denied.ok ? 'was processed' : String(denied.error?.action?.reason ?? denied.error)
  )

  // Offline: the connection is closed; actions queue in alice's log and go when she is back.
  alice.node.connection.disconnect()
  let offline = []
  for (let i = 0; i < 10; i++) offline.push(alice.sync({ type: 'inc', id: 'h', n: 2000 + i }))
  await alice.node.connection.connect()
  let back = await settle(Promise.all(offline), 10000, 'offline queue')
  check(back.ok, "alice's 10 offline actions are processed after she is back", back.error?.message)
  await waitUntil(() => received(bob, a => a.type === 'inc' && a.n >= 2000).length >= 10, 8000)
  let late = received(bob, a => a.type === 'inc' && a.n >= 2000).map(r => r.action.n)
  check(late.length === 10, 'bob receives them once', JSON.stringify(late))

  let errors = [...alice.errors, ...bob.errors]
  check(errors.length === 0, 'no client errors', errors.map(e => e.message).join('; '))
})
