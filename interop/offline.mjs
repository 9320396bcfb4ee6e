// offline: actions created while the connection is down are sent after the
// client's Reconnect brings it back, all get logux/processed and reach a
// subscriber.
//   node interop/offline.mjs ws://127.0.0.1:31337
import {
  check,
  dropConnection,
  makeClient,
  note,
  received,
  run,
  settle,
  startClient,
  waitUntil,
  withTimeout
} from './lib.mjs'

const N = 50
const CHANNEL = 'counter/off'

await run('offline', async url => {
  // Reconnect delay is 0.9–1.5 × minDelay: long enough to add N actions offline.
  let alice = makeClient(url, 'alice', { minDelay: 800, maxDelay: 1500 })
  let bob = makeClient(url, 'bob')
  let started = await settle(Promise.all([startClient(alice), startClient(bob)]), 12000, 'connect')
  check(started.ok, 'alice and bob connect', started.error?.message)
  if (!started.ok) return

  let subs = await settle(
    Promise.all([
      alice.sync({ type: 'logux/subscribe', channel: CHANNEL }),
      bob.sync({ type: 'logux/subscribe', channel: CHANNEL })
    ]),
    10000,
    'subscribe'
  )
  check(subs.ok, `alice and bob subscribe to ${CHANNEL}`, subs.error?.message)
  if (!subs.ok) return

  // Drop alice's TCP connection abruptly; Reconnect will reconnect by itself.
  let disconnected = alice.waitFor('disconnected')
  dropConnection(alice)
  await withTimeout(disconnected, 5000, 'alice noticing the dropped connection')
  check(alice.state === 'disconnected', 'alice is disconnected after the socket is destroyed')

  let connectsBefore = alice.tap.connectCount
  let sentBefore = alice.tap.sent.length
  let promises = []
  for (let i = 0; i < N; i++) promises.push(alice.sync({ type: 'inc', id: 'off', n: i }))
  // let the Log store them (MemoryStore adds are async)
  await new Promise(resolve => setImmediate(resolve))
  check(
    alice.state === 'disconnected' && alice.tap.sent.length === sentBefore,
    `alice added ${N} actions while offline (nothing sent yet)`,
    `state ${alice.state}, ${alice.tap.sent.length - sentBefore} sent`
  )

  let all = await settle(Promise.all(promises), 20000, `${N} offline actions processed`)
  let resolved = 0
  await Promise.allSettled(promises.map(p => p.then(() => resolved++)))
  check(all.ok, `all ${N} offline actions reach logux/processed after reconnect`,
    all.ok ? undefined : `${resolved}/${N}; ${all.error?.message}`)
  check(alice.tap.connectCount === connectsBefore + 1, 'Reconnect reconnected alice once',
    `${alice.tap.connectCount - connectsBefore} connects`)
  let offlineSent = alice.tap.sent.filter(s => s.action.type === 'inc' && s.action.id === 'off')
  note(`alice sent ${offlineSent.length} inc frames after reconnect`)

  let fromAlice = id => id.split(' ')[1] === alice.nodeId
  let bobInc = () => received(bob, (a, id) => a.type === 'inc' && a.id === 'off' && fromAlice(id))
  await waitUntil(() => new Set(bobInc().map(r => r.id)).size >= N, 10000)
  let ids = new Set(bobInc().map(r => r.id))
  check(ids.size === N, `bob receives all ${N} offline actions via ${CHANNEL}`, `got ${ids.size}`)
  let ns = new Set(bobInc().map(r => r.action.n))
  check(ns.size === N, 'bob receives every action payload (n = 0..49)', `got ${ns.size}`)
  check(bobInc().length === ids.size, 'bob receives no duplicates', `${bobInc().length - ids.size} duplicates`)

  // The client re-subscribes to counter/off on reconnect; it must be accepted.
  let resub = alice.tap.sent.filter(
    s => s.action.type === 'logux/subscribe' && s.action.channel === CHANNEL && s.connection === 2
  )
  check(resub.length === 1, 'alice re-subscribes to counter/off after reconnect', `${resub.length} frames`)
  if (resub.length === 1) {
    note(`re-subscribe since: ${JSON.stringify(resub[0].action.since)}`)
    let ok = await waitUntil(
      () => received(alice, a => a.type === 'logux/processed' && a.id === resub[0].id).length > 0,
      5000
    )
    check(ok, 'the re-subscription gets logux/processed')
  }
  let echoed = received(alice, (a, id) => a.type === 'inc' && fromAlice(id))
  check(echoed.length === 0, 'alice does not receive her own actions back', `${echoed.length} echoed`)
  let undos = received(alice, a => a.type === 'logux/undo')
  check(undos.length === 0, 'no logux/undo', undos.map(u => u.action.reason).join(','))
})
