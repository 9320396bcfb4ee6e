// since: a subscriber that was offline gets the channel actions it missed
// when the real client automatically re-subscribes with `since`, and none of
// those it had already received live (it confirmed them with `synced` before
// its socket dropped, so the server resumes after them).
//   node interop/since.mjs ws://127.0.0.1:31337
//
// This tests a Rhizome feature the reference @logux/server 0.14.0 does NOT
// have: it keeps no log and ignores `since` (channels have no `load` here), so
// this script is EXPECTED TO FAIL against reference-server.mjs.
// Observed against reference-server.mjs (@logux/server 0.14.0):
//   exit 1; 14 checks pass (connect, subscribe, 20 live actions received and
//   confirmed with synced, 200 offline actions processed, the client
//   re-subscribes with since = {id, time} of the subscription's
//   logux/processed and the server answers logux/processed, no live action
//   re-sent since nothing is replayed at all) and exactly one fails:
//     not ok - bob receives all 200 actions he missed (got 0)
//     # bob saw 20 inc frames, 20 distinct, 0 duplicates (0 re-sent live actions)
import {
  check,
  dropConnection,
  makeClient,
  note,
  received,
  reconnect,
  run,
  settle,
  sleep,
  startClient,
  waitUntil,
  withTimeout
} from './lib.mjs'

const LIVE = 20
const MISSED = 200
const CHANNEL = 'counter/s'

await run('since', async url => {
  let alice = makeClient(url, 'alice')
  let bob = makeClient(url, 'bob')
  let started = await settle(Promise.all([startClient(alice), startClient(bob)]), 12000, 'connect')
  check(started.ok, 'alice and bob connect', started.error?.message)
  if (!started.ok) return

  let sub = await settle(bob.sync({ type: 'logux/subscribe', channel: CHANNEL }), 10000, 'subscribe')
  check(sub.ok, `bob subscribes to ${CHANNEL}`, sub.error?.message)
  if (!sub.ok) return

  let fromAlice = id => id.split(' ')[1] === alice.nodeId
  let bobInc = () => received(bob, (a, id) => a.type === 'inc' && a.id === 's' && fromAlice(id))

  // 1. live phase
  let live = []
  for (let i = 0; i < LIVE; i++) live.push(alice.sync({ type: 'inc', id: 's', phase: 'live', n: i }))
  let liveOk = await settle(Promise.all(live), 10000, 'live actions processed')
  check(liveOk.ok, `alice's ${LIVE} live actions are processed`, liveOk.error?.message)
  await waitUntil(() => new Set(bobInc().map(r => r.id)).size >= LIVE, 5000)
  let liveSeen = new Set(bobInc().map(r => r.id)).size
  check(liveSeen === LIVE, `bob receives the ${LIVE} live actions`, `got ${liveSeen}`)
  // The client answers each `sync` with `synced` as it handles it. Those frames are written
  // before the socket is destroyed below, so the server reads them before the end of stream.
  let confirmed = await waitUntil(() => bob.tap.syncedSent >= bob.tap.syncAdded, 5000)
  check(confirmed, 'bob confirms with synced every sync he received',
    `synced ${bob.tap.syncedSent}, last added ${bob.tap.syncAdded}`)

  // 2. bob drops off (Reconnect paused so he stays offline while alice writes)
  let down = bob.waitFor('disconnected')
  dropConnection(bob, { reconnect: false })
  await withTimeout(down, 5000, 'bob noticing the dropped connection')
  await sleep(200) // let the server notice the closed socket too

  let missed = []
  for (let i = 0; i < MISSED; i++) {
    missed.push(alice.sync({ type: 'inc', id: 's', phase: 'missed', n: i }))
  }
  let missedOk = await settle(Promise.all(missed), 20000, 'missed actions processed')
  check(missedOk.ok, `alice's ${MISSED} actions sent while bob is offline are processed`,
    missedOk.error?.message)
  let missedIds = alice.tap.sent
    .filter(s => s.action.type === 'inc' && s.action.phase === 'missed')
    .map(s => s.id)
  check(missedIds.length === MISSED, `alice sent ${MISSED} distinct missed actions`, missedIds.length)
  let beforeReconnect = new Set(bobInc().map(r => r.id))
  check(bob.state === 'disconnected', 'bob was offline the whole time', `state ${bob.state}`)
  note(`bob saw ${missedIds.filter(id => beforeReconnect.has(id)).length} of them before reconnecting`)

  // 3. bob comes back; the client re-subscribes with `since` by itself
  reconnect(bob)
  let back = await settle(bob.waitFor('synchronized'), 10000, 'bob reconnecting')
  check(back.ok, 'bob reconnects', back.error?.message)
  let resub = () =>
    bob.tap.sent.filter(
      s => s.action.type === 'logux/subscribe' && s.action.channel === CHANNEL && s.connection >= 2
    )
  await waitUntil(() => resub().length > 0, 5000)
  let r = resub()[0]
  check(!!r && !!r.action.since, `bob's client re-subscribes to ${CHANNEL} with since`,
    r ? JSON.stringify(r.action) : 'no re-subscribe frame')
  if (r) {
    note(`since = ${JSON.stringify(r.action.since)}`)
    let processed = await waitUntil(
      () => received(bob, a => a.type === 'logux/processed' && a.id === r.id).length > 0,
      5000
    )
    check(processed, 'the re-subscription gets logux/processed')
  }

  let missedSet = new Set(missedIds)
  let gotMissed = () => new Set(bobInc().map(r => r.id).filter(id => missedSet.has(id)))
  await waitUntil(() => gotMissed().size >= MISSED, 8000)
  await sleep(300) // collect late duplicates too
  let all = bobInc()
  let distinct = new Set(all.map(r => r.id))
  check(gotMissed().size === MISSED, `bob receives all ${MISSED} actions he missed`,
    `got ${gotMissed().size}`)
  let liveAgain = all.filter(r => r.action.phase === 'live' && r.connection >= 2).length
  note(`bob saw ${all.length} inc frames, ${distinct.size} distinct, ` +
    `${all.length - distinct.size} duplicates (${liveAgain} re-sent live actions)`)
  // The server noticed the dropped socket (within the 200 ms above) long before bob came
  // back, and raised his subscription's acknowledgement to his last `synced` through the
  // writer ahead of alice's missed actions; so the re-subscription resumes after it.
  check(liveAgain === 0, 'bob receives none of the live actions again', `${liveAgain} re-sent`)
  check(all.length === distinct.size, 'bob receives no action twice',
    `${all.length - distinct.size} duplicates`)
  let echoed = received(alice, (a, id) => a.type === 'inc' && fromAlice(id))
  check(echoed.length === 0, 'alice does not receive her own actions back', `${echoed.length} echoed`)
})
