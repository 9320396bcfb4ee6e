// crdt: the real client sends CRDT operations (counter, LWW register, set, list, map with a
// counter, a list, a last-writer-wins register and a causal-length set inside) as ordinary
// Logux actions, online and while offline; a second client
// subscribes to the
// objects' channels and, from the crdt/delta actions it receives, holds the merged state,
// including after both clients lost their connections. A third client's concurrent write to a
// multi-value register survives next to the first's, and its map operations of the wrong
// shape or kind are undone with their reasons.
//   node interop/crdt.mjs ws://127.0.0.1:31337
//
// Last, a client that held a set and was closed comes back as a new client with the
// version vector of its copy (`seen` on logux/subscribe): it receives only the adds it
// missed and the removes (as context), and its copy converges.
//
// A Rhizome feature: the reference @logux/server 0.14.0 has no CRDT objects.
import {
  LoguxUndoError,
  check,
  dropConnection,
  makeClient,
  received,
  reconnect,
  run,
  settle,
  sleep,
  startClient,
  waitUntil,
  withTimeout
} from './lib.mjs'
// Bob's copies of the objects are built only from the crdt/delta actions he receives.
import { canonical, counterValue, elementsOf, foldDeltas, joinCounter, joinLww, joinSet, mvValues } from './crdt-join.mjs'

const LIKES = 'posts/1/likes'
const TITLE = 'posts/1/title'
const TAGS = 'posts/1/tags'
const TODO = 'posts/1/todo'
const META = 'posts/1/meta'
const OWNER = 'posts/1/owner'
const ONLINE = 20
const OFFLINE = 30

await run('crdt', async url => {
  let alice = makeClient(url, 'alice', { minDelay: 800, maxDelay: 1500 })
  let bob = makeClient(url, 'bob')
  let started = await settle(Promise.all([startClient(alice), startClient(bob)]), 12000, 'connect')
  check(started.ok, 'alice and bob connect', started.error?.message)
  if (!started.ok) return

  let likes = {}
  let title = {}
  let deltas = () => received(bob, a => a.type === 'crdt/delta')
  let applied = 0
  let fold = () => {
    let all = deltas()
    for (let { action } of all.slice(applied)) {
      if (action.key === LIKES) joinCounter(likes, action.delta)
      if (action.key === TITLE) title = joinLww(title, action.delta)
    }
    applied = all.length
  }

  let subs = await settle(
    Promise.all([
      bob.sync({ type: 'logux/subscribe', channel: `crdt/${LIKES}` }),
      bob.sync({ type: 'logux/subscribe', channel: `crdt/${TITLE}` }),
      bob.sync({ type: 'logux/subscribe', channel: `crdt/${TAGS}` }),
      bob.sync({ type: 'logux/subscribe', channel: `crdt/${TODO}` }),
      bob.sync({ type: 'logux/subscribe', channel: `crdt/${META}` })
    ]),
    10000,
    'subscribe'
  )
  check(subs.ok, 'bob subscribes to the five objects', subs.error?.message)
  if (!subs.ok) return

  // 1. online operations
  let online = []
  for (let i = 0; i < ONLINE; i++) online.push(alice.sync({ type: 'crdt/counter/inc', key: LIKES, by: 1 }))
  online.push(alice.sync({ type: 'crdt/lww/set', key: TITLE, value: 'first' }))
  online.push(alice.sync({ type: 'crdt/set/add', key: TAGS, elem: 'a' }))
  online.push(alice.sync({ type: 'crdt/set/add', key: TAGS, elem: 'b' }))
  online.push(alice.sync({ type: 'crdt/list/insert', key: TODO, index: 0, value: 'milk' }))
  online.push(alice.sync({ type: 'crdt/list/insert', key: TODO, index: 1, value: 'eggs' }))
  online.push(alice.sync({ type: 'crdt/map/set', key: META, path: ['author'], value: 'alice' }))
  for (let i = 0; i < 3; i++) online.push(alice.sync({ type: 'crdt/map/inc', key: META, path: ['stats', 'views'], by: 2 }))
  online.push(alice.sync({ type: 'crdt/map/insert', key: META, path: ['todo'], index: 0, value: 'milk' }))
  online.push(alice.sync({ type: 'crdt/map/insert', key: META, path: ['todo'], index: 1, value: { t: 'eggs' } }))
  // A last-writer-wins register of structured JSON and a causal-length set inside the map.
  online.push(alice.sync({ type: 'crdt/map/put', key: META, path: ['style'], value: { font: 'serif', size: 12 } }))
  online.push(alice.sync({ type: 'crdt/map/cladd', key: META, path: ['flags'], elem: 'draft' }))
  online.push(alice.sync({ type: 'crdt/map/cladd', key: META, path: ['flags'], elem: 'pinned' }))
  let ok = await settle(Promise.all(online), 10000, 'online operations')
  check(ok.ok, `alice's ${ONLINE + 14} online operations are processed`, ok.error?.message)
  await waitUntil(() => (fold(), counterValue(likes) === ONLINE), 5000)
  // The id of alice's first element, as bob's copy names it: the server that applied her
  // insert chose its dot (her node id, or her name at that edge: docs/edge.md), so an app
  // reads element ids from the document instead of predicting them.
  let milkOf = () =>
    deltas()
      .filter(({ action }) => action.key === TODO)
      .flatMap(({ action }) => action.delta.elems ?? [])
      .find(e => e[4] === 'milk')
  await waitUntil(() => milkOf() !== undefined, 5000)
  let milk = milkOf()
  check(milk !== undefined, "bob's copy of the list names alice's first element", JSON.stringify(deltas().length))
  let aliceActor = milk?.[0]
  check(counterValue(likes) === ONLINE, `bob's counter reaches ${ONLINE} from the deltas`, counterValue(likes))

  // 2. both lose their connections; alice keeps working offline
  let bobDown = bob.waitFor('disconnected')
  dropConnection(bob, { reconnect: false })
  await withTimeout(bobDown, 5000, 'bob noticing the dropped connection')
  let aliceDown = alice.waitFor('disconnected')
  dropConnection(alice)
  await withTimeout(aliceDown, 5000, 'alice noticing the dropped connection')
  let offline = []
  for (let i = 0; i < OFFLINE; i++) offline.push(alice.sync({ type: 'crdt/counter/inc', key: LIKES, by: 1 }))
  offline.push(alice.sync({ type: 'crdt/counter/dec', key: LIKES, by: 5 }))
  offline.push(alice.sync({ type: 'crdt/lww/set', key: TITLE, value: 'written offline' }))
  offline.push(alice.sync({ type: 'crdt/set/remove', key: TAGS, elem: 'a' }))
  offline.push(alice.sync({ type: 'crdt/set/add', key: TAGS, elem: 'c' }))
  offline.push(alice.sync({ type: 'crdt/list/insert', key: TODO, index: 0, value: 'bread' }))
  offline.push(alice.sync({ type: 'crdt/list/delete', key: TODO, index: 2 }))
  // By element id: right after milk (alice's first element), wherever it is by then.
  offline.push(alice.sync({ type: 'crdt/list/insert', key: TODO, after: [milk?.[0], milk?.[1]], value: 'jam' }))
  offline.push(alice.sync({ type: 'crdt/map/set', key: META, path: ['stats', 'words'], value: 120 }))
  for (let i = 0; i < 4; i++) offline.push(alice.sync({ type: 'crdt/map/inc', key: META, path: ['stats', 'views'] }))
  offline.push(alice.sync({ type: 'crdt/map/dec', key: META, path: ['stats', 'views'], by: 3 }))
  // The list inside the map: bread first, eggs cut, jam at the head.
  offline.push(alice.sync({ type: 'crdt/map/insert', key: META, path: ['todo'], index: 0, value: 'bread' }))
  offline.push(alice.sync({ type: 'crdt/map/cut', key: META, path: ['todo'], index: 2 }))
  offline.push(alice.sync({ type: 'crdt/map/insert', key: META, path: ['todo'], after: null, value: 'jam' }))
  // The register in the map: a later put supersedes the earlier one, whatever the clocks.
  offline.push(alice.sync({ type: 'crdt/map/put', key: META, path: ['style'], value: { font: 'sans', marks: [1, { b: null }] } }))
  // The set in the map: draft removed, hidden added, pinned added again (present: nothing).
  offline.push(alice.sync({ type: 'crdt/map/cldelete', key: META, path: ['flags'], elem: 'draft' }))
  offline.push(alice.sync({ type: 'crdt/map/cladd', key: META, path: ['flags'], elem: 'hidden' }))
  offline.push(alice.sync({ type: 'crdt/map/cladd', key: META, path: ['flags'], elem: 'pinned' }))
  let back = await settle(Promise.all(offline), 20000, 'offline operations')
  check(back.ok, `alice's ${OFFLINE + 20} offline operations are processed after she reconnects`, back.error?.message)

  // 3. bob comes back: his client re-subscribes, and each object's state arrives as a delta
  await sleep(200)
  reconnect(bob)
  let synced = await settle(bob.waitFor('synchronized'), 10000, 'bob reconnecting')
  check(synced.ok, 'bob reconnects', synced.error?.message)
  let expected = ONLINE + OFFLINE - 5
  await waitUntil(() => (fold(), counterValue(likes) === expected && title.value === 'written offline'), 8000)
  check(counterValue(likes) === expected, `bob's counter converges to ${expected}`, counterValue(likes))
  check(title.value === 'written offline', "bob's title converges to alice's last write", JSON.stringify(title))
  // The set's state arrives whole with the re-subscription: present elements only.
  let tagStates = () => deltas().filter(d => d.connection >= 2 && d.action.key === TAGS)
  await waitUntil(() => tagStates().length > 0, 5000)
  let last = tagStates().at(-1)
  let tags = last ? last.action.delta.elems.map(e => e[0]).sort() : []
  check(JSON.stringify(tags) === '["b","c"]', "bob's set converges to alice's adds minus her remove", JSON.stringify(tags))
  // The list and the map, also whole with the re-subscription.
  let stateOf = key => deltas().filter(d => d.connection >= 2 && d.action.key === key).at(-1)?.action.delta
  await waitUntil(() => stateOf(TODO) && stateOf(META), 5000)
  let list = stateOf(TODO)
  let deleted = new Set((list?.deleted ?? []).map(([n, c]) => `${n} ${c}`))
  let items = (list?.elems ?? []).filter(e => !deleted.has(`${e[0]} ${e[1]}`)).map(e => e[4])
  check(JSON.stringify(items) === '["bread","milk","jam"]', "bob's list converges to alice's inserts and delete", JSON.stringify(items))
  let meta = stateOf(META)?.entries
  check(meta?.author?.reg?.[0]?.[2] === 'alice' && meta?.stats?.map?.words?.reg?.[0]?.[2] === 120,
    "bob's map holds alice's nested fields", JSON.stringify(meta))
  // A counter inside the map: each node's [node, dot, increments, decrements] under one dot.
  let views = (meta?.stats?.map?.views?.counter ?? []).reduce((sum, [, , p, n]) => sum + p - n, 0)
  // A list inside the map, written as a list object: elements in list order, retired ones in
  // `deleted`.
  let todo = meta?.todo?.list
  let retired = new Set((todo?.deleted ?? []).map(([n, c]) => `${n} ${c}`))
  let todoItems = (todo?.elems ?? []).filter(e => !retired.has(`${e[0]} ${e[1]}`)).map(e => e[4])
  check(JSON.stringify(todoItems) === '["jam","bread","milk"]', "bob's list inside the map converges to alice's inserts and cut",
    JSON.stringify(todo))
  check(views === 3 * 2 + 4 - 3, "bob's map counter sums alice's online and offline counts", JSON.stringify(meta?.stats))
  // The LWW register inside the map: [node, n, time, value] per write held; one after the
  // offline put superseded the online one.
  let style = meta?.style?.lww ?? []
  check(style.length === 1 && JSON.stringify(style[0][3]) === JSON.stringify({ font: 'sans', marks: [1, { b: null }] }) &&
    style[0][0] === aliceActor,
    "bob's map register holds alice's last put, and only it", JSON.stringify(meta?.style))
  // The causal-length set inside the map: [element, node, n, length] per bump held; odd
  // lengths are present. draft was added and removed (2), hidden and pinned added once (1).
  let flags = meta?.flags?.clset ?? []
  let lengths = {}
  for (let [elem, , , length] of flags) lengths[elem] = Math.max(lengths[elem] ?? 0, length)
  check(JSON.stringify(lengths) === '{"draft":2,"hidden":1,"pinned":1}',
    "bob's map clset holds each element's causal length", JSON.stringify(meta?.flags))
  let present = Object.keys(lengths).filter(e => lengths[e] % 2 === 1).sort()
  check(JSON.stringify(present) === '["hidden","pinned"]', "bob's map clset converges to alice's adds and remove",
    JSON.stringify(present))
  // Two clients write a multi-value register without having seen each other's write
  // (`seen: {}`): both values survive, for the app to resolve.
  let carol = makeClient(url, 'carol')
  let carolUp = await settle(startClient(carol), 10000, 'carol connects')
  check(carolUp.ok, 'carol connects', carolUp.error?.message)
  let writes = await settle(
    Promise.all([
      alice.sync({ type: 'crdt/mv/set', key: OWNER, value: 'alice', seen: {} }),
      carol.sync({ type: 'crdt/mv/set', key: OWNER, value: 'carol', seen: {} })
    ]),
    10000,
    'concurrent register writes'
  )
  check(writes.ok, 'both register writes are processed', writes.error?.message)
  let owner = await settle(bob.sync({ type: 'logux/subscribe', channel: `crdt/${OWNER}` }), 10000, 'subscribe owner')
  check(owner.ok, 'bob subscribes to the register', owner.error?.message)
  // Bob's copy is the join of every delta he got: at an edge, the cloud may also send back a
  // delta of what the edge already holds, which repeats the answer or part of it.
  let ownerState = () => foldDeltas(deltas().filter(d => d.action.key === OWNER).map(d => d.action)).get(OWNER)?.state
  await waitUntil(() => ownerState() && mvValues(ownerState()).length >= 2, 5000)
  let values = (ownerState() ? mvValues(ownerState()) : []).sort()
  check(JSON.stringify(values) === '["alice","carol"]', 'both concurrent values survive', JSON.stringify(values))
  // Map operations of the wrong shape, or of another kind than the value at their path, are
  // undone with their reason (carol's: alice must see none).
  for (let [action, reason, label] of [
    [{ type: 'crdt/map/cladd', key: META, path: ['flags'], elem: [1] }, 'crdtWrongShape', 'a clset element that is an array'],
    [{ type: 'crdt/map/cldelete', key: META, path: [], elem: 'draft' }, 'crdtWrongShape', 'a clset removal without a path'],
    [{ type: 'crdt/map/put', key: META, path: ['style'] }, 'crdtWrongShape', 'a put without a value'],
    [{ type: 'crdt/map/add', key: META, path: ['flags'], elem: 'x' }, 'crdtTypeMismatch', 'a set add where the clset is'],
    [{ type: 'crdt/map/cladd', key: META, path: ['style'], elem: 'x' }, 'crdtTypeMismatch', 'a clset add where the register is'],
    [{ type: 'crdt/map/put', key: META, path: ['flags'], value: 1 }, 'crdtTypeMismatch', 'a put where the clset is']
  ]) {
    let r = await settle(carol.sync(action), 8000, label)
    let got = r.ok ? 'was processed' : r.timeout ? 'no answer' : `${r.error?.action?.reason ?? r.error}`
    check(!r.ok && r.error instanceof LoguxUndoError && r.error.action.reason === reason,
      `${label}: logux/undo reason ${reason}`, got)
  }

  // 4. erin holds a set, closes her app; others add and remove; she comes back with `seen`
  const LABELS = 'posts/1/labels'
  let labels = []
  for (let i = 0; i < 20; i++) labels.push(alice.sync({ type: 'crdt/set/add', key: LABELS, elem: `l${i}` }))
  let added = await settle(Promise.all(labels), 10000, 'labels')
  check(added.ok, "alice's 20 labels are processed", added.error?.message)
  let erin = makeClient(url, 'erin')
  let erinUp = await settle(startClient(erin), 10000, 'erin connects')
  check(erinUp.ok, 'erin connects', erinUp.error?.message)
  let erinSub = await settle(erin.sync({ type: 'logux/subscribe', channel: `crdt/${LABELS}` }), 10000, 'erin subscribes')
  check(erinSub.ok, 'erin subscribes to the labels', erinSub.error?.message)
  let erinDeltas = client => received(client, a => a.type === 'crdt/delta' && a.key === LABELS).map(r => r.action)
  await waitUntil(() => erinDeltas(erin).length > 0, 5000)
  let copy = { elems: [], context: { vv: {} } }
  for (let action of erinDeltas(erin)) copy = joinSet(copy, action.delta)
  check(elementsOf(copy).length === 20, 'erin holds the 20 labels', JSON.stringify(elementsOf(copy)))
  erin.destroy()

  let changes = await settle(
    Promise.all([
      alice.sync({ type: 'crdt/set/add', key: LABELS, elem: 'fresh' }),
      alice.sync({ type: 'crdt/set/remove', key: LABELS, elem: 'l3' }),
      carol.sync({ type: 'crdt/set/remove', key: LABELS, elem: 'l4' }),
      carol.sync({ type: 'crdt/set/add', key: LABELS, elem: 'l5' })
    ]),
    10000,
    'changes while erin is away'
  )
  check(changes.ok, 'adds and removes while erin is away are processed', changes.error?.message)

  let seen = copy.context.vv
  let erinAgain = makeClient(url, 'erin')
  let erinBack = await settle(startClient(erinAgain), 10000, 'erin comes back')
  check(erinBack.ok, 'erin comes back', erinBack.error?.message)
  let resub = await settle(
    erinAgain.sync({ type: 'logux/subscribe', channel: `crdt/${LABELS}`, seen }),
    10000,
    'erin subscribes with seen'
  )
  check(resub.ok, 'erin re-subscribes with the version vector of her copy', resub.error?.message)
  await waitUntil(() => erinDeltas(erinAgain).length > 0, 5000)
  let catchUp = erinDeltas(erinAgain)
  // One delta answers; at an edge the cloud may send back a delta of what the edge already
  // had, which adds nothing to it: an operation chain would.
  let answered = joinSet(copy, catchUp[0]?.delta ?? { elems: [], context: { vv: {} } })
  let sig = c => JSON.stringify(elementsOf(c)) + canonical(c.context)
  let more = catchUp.slice(1).filter(a => sig(joinSet(answered, a.delta)) !== sig(answered))
  check(catchUp.length >= 1 && more.length === 0, 'one delta answers the subscription', catchUp.length)
  let sent = catchUp[0]?.delta ?? { elems: [], context: { vv: {} } }
  check(JSON.stringify(elementsOf(sent)) === '["fresh","l5"]', 'it carries only the two adds she missed',
    JSON.stringify(sent))
  for (let action of catchUp) copy = joinSet(copy, action.delta)
  let expectedLabels = [...Array(20).keys()].map(i => `l${i}`).filter(l => l !== 'l3' && l !== 'l4')
  expectedLabels = [...expectedLabels, 'fresh'].sort()
  check(JSON.stringify(elementsOf(copy)) === JSON.stringify(expectedLabels),
    "erin's copy converges: the adds, without the removed labels", JSON.stringify(elementsOf(copy)))

  let undos = received(alice, a => a.type === 'logux/undo')
  check(undos.length === 0, 'no logux/undo', undos.map(u => u.action.reason).join(','))
  let afterReconnect = deltas().filter(d => d.connection >= 2).length
  check(afterReconnect <= 10, 'the re-subscriptions bring one delta per object, not the operation chain',
    `${afterReconnect} deltas after reconnecting`)
})
