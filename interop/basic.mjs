// basic: valid auth, subscribe, 1,000 pipelined actions, fan-out to a subscriber,
// no echo to the author.
//   node interop/basic.mjs ws://127.0.0.1:31337
import { check, makeClient, note, received, run, settle, startClient, waitUntil } from './lib.mjs'

const N = 1000
const CHANNEL = 'counter/1'

await run('basic', async url => {
  let alice = makeClient(url, 'alice')
  let bob = makeClient(url, 'bob')

  let started = await settle(Promise.all([startClient(alice), startClient(bob)]), 12000, 'connect')
  check(started.ok, 'alice and bob connect with valid tokens and reach synchronized', started.error?.message)
  if (!started.ok) return
  check(alice.node.remoteProtocol === 5, `server speaks protocol 5`, `got ${alice.node.remoteProtocol}`)
  note(`server node id ${alice.node.remoteNodeId}, subprotocol ${alice.node.remoteSubprotocol}`)

  let subs = await settle(
    Promise.all([
      alice.sync({ type: 'logux/subscribe', channel: CHANNEL }),
      bob.sync({ type: 'logux/subscribe', channel: CHANNEL })
    ]),
    10000,
    'subscribe'
  )
  check(subs.ok, `alice and bob subscribe to ${CHANNEL} (logux/processed)`, subs.error?.message)
  if (!subs.ok) return

  let fromAlice = id => id.split(' ')[1] === alice.nodeId
  let t0 = Date.now()
  let promises = []
  for (let i = 0; i < N; i++) promises.push(alice.sync({ type: 'inc', id: '1' }))
  let all = await settle(Promise.all(promises), 30000, `${N} logux/processed`)
  let ms = Date.now() - t0
  let resolved = 0
  await Promise.allSettled(promises.map(p => p.then(() => resolved++)))
  check(all.ok, `all ${N} pipelined alice.sync() promises resolve (logux/processed)`,
    all.ok ? undefined : `${resolved}/${N} resolved; ${all.error?.message}`)
  if (all.ok) note(`${N} actions processed in ${ms} ms (${Math.round((N / ms) * 1000)} actions/s)`)

  let bobInc = () => received(bob, (a, id) => a.type === 'inc' && a.id === '1' && fromAlice(id))
  await waitUntil(() => new Set(bobInc().map(r => r.id)).size >= N, 10000)
  let bobIds = new Set(bobInc().map(r => r.id))
  check(bobIds.size === N, `bob receives all ${N} inc actions via ${CHANNEL}`, `got ${bobIds.size}`)
  check(bobInc().length === bobIds.size, 'bob receives no duplicate inc actions',
    `${bobInc().length - bobIds.size} duplicates`)
  let sentIds = alice.tap.sent.filter(s => s.action.type === 'inc').map(s => s.id)
  check(sentIds.every(id => bobIds.has(id)), 'bob sees exactly the action ids alice sent')
  let idx = new Map(sentIds.map((id, i) => [id, i]))
  let seq = bobInc().map(r => idx.get(r.id))
  let inOrder = seq.every((v, i) => i === 0 || seq[i - 1] < v)
  note(`bob received alice's actions ${inOrder ? 'in' : 'NOT in'} send order`)

  // Give a possible (wrong) echo time to arrive before checking its absence.
  await waitUntil(() => false, 300)
  let echoed = received(alice, (a, id) => a.type === 'inc' && fromAlice(id))
  check(echoed.length === 0, 'alice does not receive her own inc actions back', `${echoed.length} echoed`)

  let processedIds = new Set(
    received(alice, a => a.type === 'logux/processed').map(r => r.action.id)
  )
  check(sentIds.every(id => processedIds.has(id)), `alice got a logux/processed frame for each of her ${N} actions`)
  let undos = received(alice, a => a.type === 'logux/undo')
  check(undos.length === 0, 'alice got no logux/undo', undos.map(u => u.action.reason).join(','))
  check(alice.errors.length === 0 && bob.errors.length === 0, 'no client errors',
    [...alice.errors, ...bob.errors].map(e => e.message).join('; '))
})
