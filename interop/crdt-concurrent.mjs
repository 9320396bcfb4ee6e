// crdt-concurrent: two real clients (alice, carol) write the same CRDT objects while both are
// offline, concurrently; a third (bob) is subscribed and offline too. They come back one by
// one, each client resending its queue, and everyone converges:
//   node interop/crdt-concurrent.mjs ws://127.0.0.1:31337
//
// Objects (one per kind the scenario needs): a counter, an add-wins set, a causal-length set,
// two multi-value registers (one written with `seen`, one without) and a map with counters
// inside. bob's copies are built only by joining, in order, every crdt/delta he receives
// (interop/crdt-join.mjs), never by taking the last one; at the end a fresh client (dave)
// subscribes and must receive the same states.
//
// The operations are chosen so that the outcome does not depend on the order in which the
// server applies the two queues, and the scenario is played three times on objects of its
// own: carol, alice, bob reconnecting in that order; alice, carol, bob; and carol, bob, alice
// (bob receives alice's queue live). The exception is the register written without `seen`,
// whose outcome is the documented "the write applied last supersedes every value": the
// writer who reconnects last. Why the rest is order-free:
// - the server assigns dots when it applies an action, so "concurrent" for a set remove or an
//   mv write means its `seen` (the vv of the writer's copy when it went offline) does not
//   cover the other writer's offline dots; the server adds the writer's own dots to `seen`;
// - clset add/remove lengthen an element only when that changes its presence on the server,
//   so only operations whose final length is the same in either order are used.
//
// A Rhizome feature: the reference @logux/server 0.14.0 has no CRDT objects.
import {
  check as checkLine,
  dropConnection,
  makeClient,
  note,
  received,
  reconnect,
  run,
  settle,
  startClient,
  waitUntil,
  withTimeout
} from './lib.mjs'
import {
  canonical,
  clsetLengths,
  clsetPresent,
  counterValue,
  elementsOf,
  foldDeltas,
  mapCounterValue,
  mapValueAt,
  mvValues,
  normalize
} from './crdt-join.mjs'

// The objects of one round, under keys unique to it (a server reused across runs starts from
// empty objects).
function objects(round) {
  let base = `conc/${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}/${round}`
  let o = {
    LIKES: `${base}/likes`, // counter
    TAGS: `${base}/tags`, // add-wins set
    FLAGS: `${base}/flags`, // causal-length set
    OWNER: `${base}/owner`, // mv register, written with `seen`
    STATUS: `${base}/status`, // mv register, written without `seen`
    STATS: `${base}/stats` // map with counters
  }
  o.KEYS = [o.LIKES, o.TAGS, o.FLAGS, o.OWNER, o.STATUS, o.STATS]
  o.KINDS = { [o.LIKES]: 'counter', [o.TAGS]: 'set', [o.FLAGS]: 'clset', [o.OWNER]: 'mv', [o.STATUS]: 'mv', [o.STATS]: 'map' }
  o.NAMES = {
    [o.LIKES]: 'counter',
    [o.TAGS]: 'set',
    [o.FLAGS]: 'clset',
    [o.OWNER]: 'mv register (seen)',
    [o.STATUS]: 'mv register (no seen)',
    [o.STATS]: 'map'
  }
  return o
}

const deltasOf = client => received(client, a => a.type === 'crdt/delta').map(r => r.action)
const copiesOf = client => foldDeltas(deltasOf(client))
const stateOf = (client, key) => copiesOf(client).get(key)?.state
const show = value => JSON.stringify(value)
const subscribe = (client, keys) =>
  Promise.all(keys.map(key => client.sync({ type: 'logux/subscribe', channel: `crdt/${key}` })))

let tag = ''
function check(cond, msg, detail) {
  return checkLine(cond, `${tag}${msg}`, detail)
}

async function processed(label, promises, ms = 10000) {
  let r = await settle(Promise.all(promises), ms, label)
  let why = r.ok ? '' : r.timeout ? 'no answer' : `${r.error?.action?.reason ?? r.error?.message ?? r.error}`
  return check(r.ok, `${label}: all ${promises.length} processed`, why)
}

async function goOffline(client) {
  let down = client.waitFor('disconnected')
  dropConnection(client, { reconnect: false })
  await withTimeout(down, 5000, `${client.options.userId} noticing the dropped connection`)
}

// One round: both writers and bob offline, then they reconnect in `order` (their names).
// Returns false when a step failed, so that the rest would only pile up follow-on failures.
async function round(url, name, order) {
  let { LIKES, TAGS, FLAGS, OWNER, STATUS, STATS, KEYS, KINDS, NAMES } = objects(name)
  tag = `[${name}] `
  let alice = makeClient(url, 'alice')
  let carol = makeClient(url, 'carol')
  let bob = makeClient(url, 'bob')
  let started = await settle(
    Promise.all([startClient(alice), startClient(carol), startClient(bob)]),
    12000,
    'connect'
  )
  check(started.ok, 'alice, carol and bob connect', started.error?.message)
  if (!started.ok) return false

  // bob reads every object; the writers read the set and the register they write with `seen`,
  // so that `seen` comes from their own copies.
  let subs = await settle(
    Promise.all([subscribe(bob, KEYS), subscribe(alice, [TAGS, OWNER]), subscribe(carol, [TAGS, OWNER])]),
    10000,
    'subscribe'
  )
  check(subs.ok, 'bob subscribes to the six objects, alice and carol to the set and the register', subs.error?.message)
  if (!subs.ok) return false

  // 1. online operations by both writers
  let ok = await processed('online operations', [
    alice.sync({ type: 'crdt/counter/inc', key: LIKES, by: 5 }),
    carol.sync({ type: 'crdt/counter/inc', key: LIKES, by: 3 }),
    alice.sync({ type: 'crdt/set/add', key: TAGS, elem: 'a' }),
    alice.sync({ type: 'crdt/set/add', key: TAGS, elem: 'b' }),
    carol.sync({ type: 'crdt/set/add', key: TAGS, elem: 'c' }),
    carol.sync({ type: 'crdt/set/add', key: TAGS, elem: 'd' }),
    alice.sync({ type: 'crdt/clset/add', key: FLAGS, elem: 'x' }),
    alice.sync({ type: 'crdt/clset/add', key: FLAGS, elem: 'y' }),
    carol.sync({ type: 'crdt/clset/add', key: FLAGS, elem: 'z' }),
    carol.sync({ type: 'crdt/mv/set', key: OWNER, value: 'start' }),
    alice.sync({ type: 'crdt/mv/set', key: STATUS, value: 'idle' }),
    alice.sync({ type: 'crdt/map/inc', key: STATS, path: ['views'], by: 2 }),
    carol.sync({ type: 'crdt/map/inc', key: STATS, path: ['views'] }),
    carol.sync({ type: 'crdt/map/inc', key: STATS, path: ['daily', 'mon'], by: 4 })
  ])
  if (!ok) return false

  // Each writer's copy must hold the other's online writes before it goes offline: its
  // `seen` is read from it.
  let holds = (client, key, pred) => {
    let s = stateOf(client, key)
    return s !== undefined && pred(s)
  }
  let has = (list, ...xs) => xs.every(x => list.includes(x))
  let copiesReady = await waitUntil(
    () =>
      holds(alice, TAGS, s => has(elementsOf(s), 'c', 'd')) &&
      holds(alice, OWNER, s => has(mvValues(s), 'start')) &&
      holds(carol, TAGS, s => has(elementsOf(s), 'a', 'b')),
    5000
  )
  check(copiesReady, "alice's copies hold carol's online writes and carol's hold alice's",
    show({ alice: [stateOf(alice, TAGS), stateOf(alice, OWNER)], carol: stateOf(carol, TAGS) }))
  let bobOnline = await waitUntil(() => {
    let copies = copiesOf(bob)
    return counterValue(copies.get(LIKES)?.state ?? {}) === 8 &&
      show(elementsOf(copies.get(TAGS)?.state ?? { elems: [] })) === '["a","b","c","d"]' &&
      show(clsetPresent(copies.get(FLAGS)?.state ?? { elems: [] })) === '["x","y","z"]' &&
      show(mvValues(copies.get(OWNER)?.state ?? { values: [] })) === '["start"]' &&
      show(mvValues(copies.get(STATUS)?.state ?? { values: [] })) === '["idle"]' &&
      mapCounterValue(mapValueAt(copies.get(STATS)?.state ?? { entries: {} }, ['views'])?.counter) === 3
  }, 5000)
  check(bobOnline, "bob's joined copies hold the online operations", show(Object.fromEntries(copiesOf(bob))))

  // 2. alice and carol lose their connections and write the same objects offline; bob's
  // connection drops too.
  await goOffline(alice)
  await goOffline(carol)
  await goOffline(bob)
  // A writer's copy holds what others wrote (the server sends no one its own operations'
  // deltas): carol has no copy of the register she alone wrote, so her `seen` there is empty.
  // The server counts a writer's own dots as seen.
  let vvOf = (client, key) => stateOf(client, key)?.context.vv ?? {}
  let aliceSeen = { tags: vvOf(alice, TAGS), owner: vvOf(alice, OWNER) }
  let carolSeen = { tags: vvOf(carol, TAGS), owner: vvOf(carol, OWNER) }
  note(`alice's seen: ${show(aliceSeen)}; carol's seen: ${show(carolSeen)}`)

  let aliceOffline = []
  let carolOffline = []
  let a = action => aliceOffline.push(alice.sync(action))
  let c = action => carolOffline.push(carol.sync(action))
  // counter: alice +10 −4, carol +7 −3
  for (let i = 0; i < 10; i++) a({ type: 'crdt/counter/inc', key: LIKES, by: 1 })
  a({ type: 'crdt/counter/dec', key: LIKES, by: 4 })
  c({ type: 'crdt/counter/inc', key: LIKES, by: 7 })
  for (let i = 0; i < 3; i++) c({ type: 'crdt/counter/dec', key: LIKES, by: 1 })
  // add-wins set (a remove's `seen` is the remover's copy, which lacks the other's offline adds):
  //   a: alice removes it, carol adds it again        → stays (add wins)
  //   c: carol removes it, alice adds it again        → stays (add wins)
  //   b: both remove it                               → gone
  //   d: alice removes it (carol's add, in her copy)  → gone
  //   e: carol adds it and removes it                 → gone (her own add counts as seen)
  //   f: both add it                                  → stays
  //   g: alice adds it                                → stays
  a({ type: 'crdt/set/remove', key: TAGS, elem: 'a', seen: aliceSeen.tags })
  a({ type: 'crdt/set/add', key: TAGS, elem: 'c' })
  a({ type: 'crdt/set/remove', key: TAGS, elem: 'b', seen: aliceSeen.tags })
  a({ type: 'crdt/set/remove', key: TAGS, elem: 'd', seen: aliceSeen.tags })
  a({ type: 'crdt/set/add', key: TAGS, elem: 'f' })
  a({ type: 'crdt/set/add', key: TAGS, elem: 'g' })
  c({ type: 'crdt/set/add', key: TAGS, elem: 'a' })
  c({ type: 'crdt/set/remove', key: TAGS, elem: 'c', seen: carolSeen.tags })
  c({ type: 'crdt/set/remove', key: TAGS, elem: 'b', seen: carolSeen.tags })
  c({ type: 'crdt/set/add', key: TAGS, elem: 'e' })
  c({ type: 'crdt/set/remove', key: TAGS, elem: 'e', seen: carolSeen.tags })
  c({ type: 'crdt/set/add', key: TAGS, elem: 'f' })
  // causal-length set (lengths after both queues, in either order):
  //   x (1): both remove                 → 2
  //   y (1): alice removes and re-adds   → 3
  //   z (1): carol removes               → 2
  //   n: both add                        → 1
  //   m: alice adds and removes          → 2
  //   k: carol adds                      → 1
  a({ type: 'crdt/clset/remove', key: FLAGS, elem: 'x' })
  a({ type: 'crdt/clset/remove', key: FLAGS, elem: 'y' })
  a({ type: 'crdt/clset/add', key: FLAGS, elem: 'y' })
  a({ type: 'crdt/clset/add', key: FLAGS, elem: 'n' })
  a({ type: 'crdt/clset/add', key: FLAGS, elem: 'm' })
  a({ type: 'crdt/clset/remove', key: FLAGS, elem: 'm' })
  c({ type: 'crdt/clset/remove', key: FLAGS, elem: 'x' })
  c({ type: 'crdt/clset/add', key: FLAGS, elem: 'n' })
  c({ type: 'crdt/clset/remove', key: FLAGS, elem: 'z' })
  c({ type: 'crdt/clset/add', key: FLAGS, elem: 'k' })
  // mv register with `seen`: both saw 'start'; alice writes twice (her second supersedes her
  // first), carol once. Both writers' last values survive; 'start' does not.
  a({ type: 'crdt/mv/set', key: OWNER, value: 'a1', seen: aliceSeen.owner })
  a({ type: 'crdt/mv/set', key: OWNER, value: 'a2', seen: aliceSeen.owner })
  c({ type: 'crdt/mv/set', key: OWNER, value: 'c1', seen: carolSeen.owner })
  // mv register without `seen`: a write supersedes every value the server holds, so only the
  // one of the writer who reconnects last is left.
  a({ type: 'crdt/mv/set', key: STATUS, value: 'alice-offline' })
  c({ type: 'crdt/mv/set', key: STATUS, value: 'carol-offline' })
  // map counters: views alice +3 −1, carol +10 −2; daily/mon carol +1; daily/tue alice +1
  for (let i = 0; i < 3; i++) a({ type: 'crdt/map/inc', key: STATS, path: ['views'] })
  a({ type: 'crdt/map/dec', key: STATS, path: ['views'], by: 1 })
  a({ type: 'crdt/map/inc', key: STATS, path: ['daily', 'tue'] })
  for (let i = 0; i < 2; i++) c({ type: 'crdt/map/inc', key: STATS, path: ['views'], by: 5 })
  c({ type: 'crdt/map/dec', key: STATS, path: ['views'], by: 2 })
  c({ type: 'crdt/map/inc', key: STATS, path: ['daily', 'mon'] })
  check(alice.state === 'disconnected' && carol.state === 'disconnected' && bob.state === 'disconnected',
    'alice, carol and bob are all offline while the writers queue their operations',
    `${alice.state} ${carol.state} ${bob.state}`)

  // 3. everyone comes back in `order`, one at a time: a writer's queue is processed before
  // the next reconnects; bob's re-subscriptions are answered before the next reconnects (so
  // with bob before a writer, that writer's whole queue reaches him as live deltas)
  let queues = { alice: [alice, aliceOffline], carol: [carol, carolOffline] }
  for (let who of order) {
    if (who === 'bob') {
      reconnect(bob)
      let bobBack = await settle(bob.waitFor('synchronized'), 10000, 'bob reconnecting')
      check(bobBack.ok, 'bob reconnects', bobBack.error?.message)
      let answered = await waitUntil(() => {
        let now = received(bob, x => x.type === 'crdt/delta').filter(r => r.connection === bob.tap.connectedCount)
        return KEYS.every(k => now.some(r => r.action.key === k))
      }, 5000)
      check(answered, "bob's re-subscriptions are answered with each object's state")
    } else {
      let [client, queue] = queues[who]
      reconnect(client)
      if (!(await processed(`${who}'s offline operations after she reconnects`, queue, 15000))) return false
    }
  }
  let lastWriter = order.filter(who => who !== 'bob').at(-1)

  // 4. with everyone online, a few more concurrent writes reach bob as live deltas
  ok = await processed('online operations after the reconnections', [
    alice.sync({ type: 'crdt/counter/inc', key: LIKES, by: 2 }),
    carol.sync({ type: 'crdt/clset/add', key: FLAGS, elem: 'x' }),
    alice.sync({ type: 'crdt/set/add', key: TAGS, elem: 'h' }),
    carol.sync({ type: 'crdt/map/inc', key: STATS, path: ['views'] })
  ])
  if (!ok) return false

  // 5. bob's joined copies converge
  let want = {
    counter: { [alice.nodeId]: [5 + 10 + 2, 4], [carol.nodeId]: [3 + 7, 3] },
    tags: ['a', 'c', 'f', 'g', 'h'],
    lengths: { k: 1, m: 2, n: 1, x: 3, y: 3, z: 2 },
    present: ['k', 'n', 'x', 'y'],
    owner: ['a2', 'c1'],
    status: [`${lastWriter}-offline`],
    views: { total: 2 + 1 + (3 - 1) + (10 - 2) + 1, alice: [2 + 3, 1], carol: [1 + 10 + 1, 2] },
    mon: 5,
    tue: 1
  }
  let sorted = list => [...list].sort()
  let sameJson = (x, y) => canonical(x) === canonical(y) // key order aside
  let byNode = entries => Object.fromEntries((entries ?? []).map(([node, , p, m]) => [node, [p, m]]))
  let views = state => mapValueAt(state ?? { entries: {} }, ['views'])?.counter
  let facts = copies => {
    let get = key => copies.get(key)?.state
    return {
      counter: get(LIKES) ?? {},
      tags: get(TAGS) ? elementsOf(get(TAGS)) : [],
      lengths: get(FLAGS) ? clsetLengths(get(FLAGS)) : {},
      present: get(FLAGS) ? clsetPresent(get(FLAGS)) : [],
      owner: get(OWNER) ? sorted(mvValues(get(OWNER))) : [],
      status: get(STATUS) ? sorted(mvValues(get(STATUS))) : [],
      views: byNode(views(get(STATS))),
      viewsTotal: mapCounterValue(views(get(STATS))),
      mon: mapCounterValue(mapValueAt(get(STATS) ?? { entries: {} }, ['daily', 'mon'])?.counter),
      tue: mapCounterValue(mapValueAt(get(STATS) ?? { entries: {} }, ['daily', 'tue'])?.counter)
    }
  }
  let converged = f =>
    counterValue(f.counter) === counterValue(want.counter) && sameJson(f.tags, want.tags) &&
    sameJson(f.present, want.present) && sameJson(f.owner, want.owner) && sameJson(f.status, want.status) &&
    f.viewsTotal === want.views.total && f.mon === want.mon && f.tue === want.tue
  await waitUntil(() => converged(facts(copiesOf(bob))), 10000)
  let got = facts(copiesOf(bob))
  let total = counterValue(want.counter)
  check(counterValue(got.counter) === total, `bob's counter converges to ${total}`, counterValue(got.counter))
  check(sameJson(got.counter, want.counter), "bob's counter holds each writer's totals of increments and decrements",
    show(got.counter))
  check(sameJson(got.tags, want.tags),
    "bob's set: concurrent adds win over removes that did not see them; removes of seen adds hold", show(got.tags))
  check(sameJson(got.lengths, want.lengths), "bob's clset holds each element's causal length", show(got.lengths))
  check(sameJson(got.present, want.present), "bob's clset holds the elements of odd length", show(got.present))
  check(sameJson(got.owner, want.owner),
    "bob's mv register written with seen keeps both writers' last values, not the one both saw", show(got.owner))
  check(sameJson(got.status, want.status),
    "bob's mv register written without seen holds only the write applied last", show(got.status))
  check(got.viewsTotal === want.views.total, `bob's map counter converges to ${want.views.total}`, got.viewsTotal)
  check(sameJson(got.views, { [alice.nodeId]: want.views.alice, [carol.nodeId]: want.views.carol }),
    "bob's map counter holds one dot per writer with its running totals", show(views(stateOf(bob, STATS))))
  check(got.mon === want.mon && got.tue === want.tue, "bob's nested map counters converge (mon 5, tue 1)",
    show(mapValueAt(stateOf(bob, STATS) ?? { entries: {} }, ['daily'])))
  let bobDeltas = deltasOf(bob)
  check(bobDeltas.every(d => d.kind === KINDS[d.key]), "every delta bob received names its object's kind",
    show(bobDeltas.filter(d => d.kind !== KINDS[d.key])))
  note(`bob joined ${bobDeltas.length} deltas: ${KEYS.map(k => `${NAMES[k]} ${bobDeltas.filter(d => d.key === k).length}`).join(', ')}`)

  // 6. a fresh client receives the same states as bob's joined copies
  let dave = makeClient(url, 'dave')
  let daveUp = await settle(startClient(dave), 10000, 'dave connects')
  check(daveUp.ok, 'dave connects', daveUp.error?.message)
  if (!daveUp.ok) return false
  let daveSub = await settle(subscribe(dave, KEYS), 10000, 'dave subscribes')
  check(daveSub.ok, 'dave subscribes to the six objects', daveSub.error?.message)
  await waitUntil(() => KEYS.every(k => copiesOf(dave).has(k)), 5000)
  let daves = copiesOf(dave)
  let bobs = copiesOf(bob)
  for (let key of KEYS) {
    let ours = bobs.get(key)
    let theirs = daves.get(key)
    let same = ours && theirs && normalize(KINDS[key], ours.state) === normalize(KINDS[key], theirs.state)
    check(same, `dave's state of the ${NAMES[key]} equals bob's joined copy`,
      `bob ${ours ? normalize(KINDS[key], ours.state) : 'none'} / dave ${theirs ? normalize(KINDS[key], theirs.state) : 'none'}`)
  }
  check(converged(facts(daves)), "dave's states read the expected values", show(facts(daves)))

  // 7. nothing was undone, and no client saw an error
  let undos = [alice, carol, bob, dave].flatMap(cl => received(cl, x => x.type === 'logux/undo'))
  check(undos.length === 0, 'no logux/undo', show(undos.map(u => u.action)))
  let errors = [alice, carol, bob, dave].flatMap(cl => [...cl.errors, ...cl.tap.errors])
  check(errors.length === 0, 'no client errors', show(errors.map(e => e.type ?? e.message ?? String(e))))
  for (let client of [alice, carol, bob, dave]) client.destroy()
  return true
}

await run('crdt-concurrent', async url => {
  // Every expectation but the register written without `seen` must hold whichever writer the
  // server applies first: both orders are played, each on objects of its own; in the last
  // round bob is back between the writers and receives alice's queue live.
  let rounds = [
    ['carol-first', ['carol', 'alice', 'bob']],
    ['alice-first', ['alice', 'carol', 'bob']],
    ['bob-between', ['carol', 'bob', 'alice']]
  ]
  for (let [name, order] of rounds) if (!(await round(url, name, order))) break
})
