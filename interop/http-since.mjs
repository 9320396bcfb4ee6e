// http-since: the real @logux/client over HTTP (http-connection.mjs) re-subscribes with `since`
// and receives exactly what it missed, with the same connection back from a disconnect and
// with a brand new Client on a new HttpConnection; and CRDT objects written over HTTP and over a
// WebSocket converge.
//   node interop/http-since.mjs ws://127.0.0.1:31337
//
// 1. bob (HTTP) subscribes to counter/hs and receives alice's (WebSocket) 20 live actions. His
//    connection is closed; alice sends 200; he comes back, his client re-subscribes with
//    `since` by itself, and he receives the 200 once each and none of the 20 again.
// 2. bob's page goes away. The real client keeps `since` (`client.last`) in memory only, not
//    in its log store: a new Client does not re-subscribe by itself and knows no `since`. So
//    the app keeps it, as a page would in localStorage, and the new Client (on bob's log store,
//    a new HttpConnection) subscribes with it. alice sends 50 meanwhile: the new Client
//    receives exactly those 50. The `since` id is the subscription id the server gave bob's
//    HttpConnection, raised by each of its pulls to what it had received.
// 3. CRDT over HTTP: the new Client and carol (WebSocket) write one counter and one set; the
//    copy the HTTP client folds from its pulled deltas equals the state a fresh WebSocket
//    subscriber (dave) receives. Then it goes away, carol adds one element, and a third Client
//    subscribing with the kept `since` receives one delta holding only that element.
//
// A Rhizome feature: the reference @logux/server 0.14.0 has no HTTP transport.
import { Reconnect } from '@logux/core'

import { counterValue, elementsOf, foldDeltas, normalize } from './crdt-join.mjs'
import { HttpConnection } from './http-connection.mjs'
import { check, makeClient, note, received, run, settle, sleep, startClient, waitUntil } from './lib.mjs'

const LIVE = 20
const MISSED = 200
const LATER = 50
const CHANNEL = 'counter/hs'
const RUN = Date.now().toString(36)
const COUNTER = `hs-count-${RUN}`
const SET = `hs-set-${RUN}`

// Every pull sent, by node: to know when a connection has confirmed what it received.
const pulls = []
const realFetch = globalThis.fetch
globalThis.fetch = (url, init) => {
  if (String(url).endsWith('/v1/pull')) pulls.push(JSON.parse(init.body))
  return realFetch(url, init)
}

// A real Client over a new HttpConnection, with what that connection delivered (`got`, ids
// made whole) and the subscriptions the client sent (`subscribes`).
function httpClient(httpUrl, userId, opts = {}) {
  let connection = new HttpConnection(httpUrl)
  let client = makeClient(httpUrl, userId, {
    server: new Reconnect(connection, { minDelay: 300, maxDelay: 1000 }),
    ...opts
  })
  let got = []
  let subscribes = []
  let connectCount = 0
  connection.on('message', message => {
    if (message[0] !== 'sync') return
    for (let i = 2; i < message.length; i += 2) {
      // The client's node, listening first, has already made the id whole in place.
      let id = message[i + 1].id
      if (Array.isArray(id)) id = `${id[0] + connection.baseTime} ${id[1]} ${id[2]}`
      got.push({ action: message[i], id, connection: connectCount })
    }
  })
  let send = connection.send.bind(connection)
  connection.send = message => {
    if (message[0] === 'connect') connectCount += 1
    if (message[0] === 'sync') {
      for (let i = 2; i < message.length; i += 2) {
        if (message[i].type === 'logux/subscribe') subscribes.push({ action: message[i], connection: connectCount })
      }
    }
    return send(message)
  }
  client.http = { connection, got, subscribes }
  return client
}

// Resolves once `client`'s connection has sent a pull whose cursor is its current one: the
// server then records that it received everything before.
function confirmed(client) {
  let { connection } = client.http
  return waitUntil(
    () => pulls.some(p => p.node === client.nodeId && p.cursor === connection.cursor && p.ids),
    5000
  )
}

await run('http-since', async url => {
  let httpUrl = url.replace(/^ws/, 'http')
  let alice = makeClient(url, 'alice')
  let bob = httpClient(httpUrl, 'bob')
  let started = await settle(Promise.all([startClient(alice), startClient(bob)]), 12000, 'connect')
  check(started.ok, 'alice (WebSocket) and bob (HTTP) connect', started.error?.message)
  if (!started.ok) return

  let sub = await settle(bob.sync({ type: 'logux/subscribe', channel: CHANNEL }), 8000, 'subscribe')
  check(sub.ok, `bob subscribes to ${CHANNEL} over HTTP`, sub.error?.message)
  if (!sub.ok) return
  let since = bob.last[CHANNEL]
  check(
    !!since && since.id.split(' ')[1].startsWith('server:pull:'),
    "the since bob's client keeps is the server's subscription id",
    JSON.stringify(since)
  )

  let fromAlice = id => id.split(' ')[1] === alice.nodeId
  let incs = client => client.http.got.filter(r => r.action.type === 'inc' && r.action.id === 'hs' && fromAlice(r.id))
  let send = async (phase, n) => {
    let sends = []
    for (let i = 0; i < n; i++) sends.push(alice.sync({ type: 'inc', id: 'hs', phase, n: i }))
    let done = await settle(Promise.all(sends), 20000, `${phase} actions`)
    check(done.ok, `alice's ${n} ${phase} actions are processed`, done.error?.message)
    return alice.tap.sent.filter(s => s.action.type === 'inc' && s.action.phase === phase).map(s => s.id)
  }

  // 1. The same connection, back from a disconnect.
  let liveIds = await send('live', LIVE)
  await waitUntil(() => incs(bob).length >= LIVE, 8000)
  check(incs(bob).length === LIVE, `bob receives the ${LIVE} live actions`, incs(bob).length)

  bob.node.connection.disconnect()
  await waitUntil(() => bob.state === 'disconnected', 3000)
  let missedIds = await send('missed', MISSED)
  check(missedIds.length === MISSED, `alice sent ${MISSED} distinct missed actions`, missedIds.length)
  check(bob.state === 'disconnected', 'bob was offline the whole time', bob.state)

  await bob.node.connection.connect()
  let resub = () => bob.http.subscribes.filter(s => s.action.channel === CHANNEL && s.connection >= 2)
  await waitUntil(() => resub().length > 0, 8000)
  let r = resub()[0]
  check(
    !!r && r.action.since?.id === since.id,
    `bob's client re-subscribes to ${CHANNEL} with since = its subscription id`,
    r ? JSON.stringify(r.action) : 'no re-subscription'
  )
  let missedSet = new Set(missedIds)
  let gotMissed = () => incs(bob).filter(g => missedSet.has(g.id))
  await waitUntil(() => gotMissed().length >= MISSED, 10000)
  await sleep(300) // late duplicates would come now
  let all = incs(bob)
  check(
    gotMissed().length === MISSED && new Set(gotMissed().map(g => g.id)).size === MISSED,
    `bob receives the ${MISSED} actions he missed, once each`,
    `${gotMissed().length} received, ${new Set(gotMissed().map(g => g.id)).size} distinct`
  )
  let liveAgain = all.filter(g => g.action.phase === 'live' && g.connection >= 2).length
  check(liveAgain === 0, 'bob receives none of the live actions again', `${liveAgain} re-sent`)
  check(all.length === LIVE + MISSED, 'bob receives nothing else', `${all.length} inc actions`)

  // 2. A new Client on a new HttpConnection, with the since the app kept.
  let kept = bob.last[CHANNEL]
  check(kept.id === since.id, 'the since stays the first subscription id', JSON.stringify(kept))
  let pageDone = await confirmed(bob)
  check(pageDone, "bob's last pull confirms what he received")
  let store = bob.log.store
  bob.destroy()
  let laterIds = await send('later', LATER)
  let bob2 = httpClient(httpUrl, 'bob', { store })
  let back = await settle(startClient(bob2), 10000, 'new client')
  check(back.ok, "bob's new Client connects over a new HttpConnection", back.error?.message)
  if (!back.ok) return
  let resumed = await settle(
    bob2.sync({ type: 'logux/subscribe', channel: CHANNEL, since: kept }),
    8000,
    'subscribe with since'
  )
  check(resumed.ok, `the new Client subscribes to ${CHANNEL} with the kept since`, resumed.error?.message)
  let laterSet = new Set(laterIds)
  await waitUntil(() => incs(bob2).length >= LATER, 8000)
  await sleep(300)
  let got2 = incs(bob2)
  check(
    got2.length === LATER && got2.every(g => laterSet.has(g.id)) && new Set(got2.map(g => g.id)).size === LATER,
    `the new Client receives exactly the ${LATER} actions sent after bob left`,
    `${got2.length} received, ${got2.filter(g => laterSet.has(g.id)).length} of them sent later, ` +
      `${got2.filter(g => liveIds.includes(g.id) || missedSet.has(g.id)).length} bob had`
  )
  check(
    bob2.last[CHANNEL]?.id.split(' ')[1].startsWith('server:pull:') && bob2.last[CHANNEL].id !== kept.id,
    'the new Client keeps a subscription id of its own',
    JSON.stringify(bob2.last[CHANNEL])
  )

  // 3. CRDT objects over HTTP and over a WebSocket.
  let carol = makeClient(url, 'carol')
  let carolUp = await settle(startClient(carol), 10000, 'carol')
  check(carolUp.ok, 'carol connects over a WebSocket', carolUp.error?.message)
  let objects = [`crdt/${COUNTER}`, `crdt/${SET}`]
  let subs = await settle(
    Promise.all(objects.flatMap(channel => [bob2, carol].map(c => c.sync({ type: 'logux/subscribe', channel })))),
    8000,
    'object subscriptions'
  )
  check(subs.ok, 'both subscribe to a counter and a set', subs.error?.message)
  let writes = []
  for (let i = 0; i < 5; i++) writes.push(carol.sync({ type: 'crdt/counter/inc', key: COUNTER, by: 1 }))
  for (let i = 0; i < 3; i++) writes.push(bob2.sync({ type: 'crdt/counter/inc', key: COUNTER, by: 2 }))
  writes.push(carol.sync({ type: 'crdt/set/add', key: SET, elem: 'c1' }))
  writes.push(carol.sync({ type: 'crdt/set/add', key: SET, elem: 'c2' }))
  writes.push(bob2.sync({ type: 'crdt/set/add', key: SET, elem: 'b1' }))
  writes.push(carol.sync({ type: 'crdt/set/remove', key: SET, elem: 'c2' }))
  let written = await settle(Promise.all(writes), 10000, 'object writes')
  check(written.ok, "carol's and bob's object operations are processed", written.error?.message)
  let deltas = client => client.http.got.filter(g => g.action.type === 'crdt/delta').map(g => g.action)
  let copy = () => foldDeltas(deltas(bob2))
  let expectedDone = () => {
    let c = copy()
    return counterValue(c.get(COUNTER)?.state ?? {}) === 11 && elementsOf(c.get(SET)?.state ?? { elems: [] }).join() === 'b1,c1'
  }
  await waitUntil(expectedDone, 8000)
  let bobCopy = copy()
  check(counterValue(bobCopy.get(COUNTER)?.state ?? {}) === 11, "the HTTP client's counter is 5 + 3 × 2",
    JSON.stringify(bobCopy.get(COUNTER)?.state))
  check(elementsOf(bobCopy.get(SET)?.state ?? { elems: [] }).join() === 'b1,c1', "the HTTP client's set is {b1, c1}",
    JSON.stringify(bobCopy.get(SET)?.state))
  let dave = makeClient(url, 'dave')
  await settle(startClient(dave), 10000, 'dave')
  let daveSubs = await settle(
    Promise.all(objects.map(channel => dave.sync({ type: 'logux/subscribe', channel }))),
    8000,
    'dave subscribes'
  )
  check(daveSubs.ok, 'dave (WebSocket) subscribes to both objects', daveSubs.error?.message)
  let daveCopy = foldDeltas(received(dave, a => a.type === 'crdt/delta').map(r => r.action))
  for (let [key, kind] of [[COUNTER, 'counter'], [SET, 'set']]) {
    let mine = bobCopy.get(key)
    let his = daveCopy.get(key)
    check(
      !!mine && !!his && normalize(kind, mine.state) === normalize(kind, his.state),
      `the HTTP client's ${kind} equals the state a fresh WebSocket subscriber receives`,
      `${JSON.stringify(mine?.state)} vs ${JSON.stringify(his?.state)}`
    )
  }

  // The set, resumed by a third Client with the since the second one kept.
  let keptSet = bob2.last[`crdt/${SET}`]
  check(await confirmed(bob2), "bob's second Client confirms what it received")
  let store2 = bob2.log.store
  bob2.destroy()
  let added = await settle(carol.sync({ type: 'crdt/set/add', key: SET, elem: 'c3' }), 8000, 'c3')
  check(added.ok, 'carol adds c3 while no client of bob is there', added.error?.message)
  let bob3 = httpClient(httpUrl, 'bob', { store: store2 })
  await settle(startClient(bob3), 10000, 'third client')
  let resumedSet = await settle(
    bob3.sync({ type: 'logux/subscribe', channel: `crdt/${SET}`, since: keptSet }),
    8000,
    'set with since'
  )
  check(resumedSet.ok, 'a third Client subscribes to the set with the kept since', resumedSet.error?.message)
  await waitUntil(() => deltas(bob3).length > 0, 5000)
  await sleep(300)
  let resumedDeltas = deltas(bob3)
  check(
    resumedDeltas.length === 1 && resumedDeltas[0].delta.elems.map(e => e[0]).join() === 'c3',
    'it receives one delta, holding only c3 (the join of the deltas after its since)',
    JSON.stringify(resumedDeltas)
  )
  note(`since ids: ${since.id}, ${bob2.last[CHANNEL]?.id}`)

  let errors = [...alice.errors, ...carol.errors, ...dave.errors, ...bob3.errors]
  check(errors.length === 0, 'no client errors', errors.map(e => e.message).join('; '))
})
