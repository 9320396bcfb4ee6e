// denied: access control, unknown types/channels, and bad credentials.
//   node interop/denied.mjs ws://127.0.0.1:31337
import {
  LoguxUndoError,
  check,
  makeClient,
  note,
  run,
  settle,
  sleep,
  startClient,
  status,
  token,
  waitUntil
} from './lib.mjs'

// Expect client.sync(action) to be undone with `reason`.
async function expectUndo(client, action, reason, label) {
  let r = await settle(client.sync(action), 8000, label)
  let got = r.ok
    ? 'was processed'
    : r.timeout
      ? 'no answer (timeout)'
      : r.error instanceof LoguxUndoError
        ? `undone with ${r.error.action.reason}`
        : `rejected with ${r.error}`
  check(
    !r.ok && r.error instanceof LoguxUndoError && r.error.action.reason === reason,
    `${label}: logux/undo reason ${reason}`,
    got
  )
  if (!r.ok && r.error instanceof LoguxUndoError) {
    check(
      JSON.stringify(r.error.action.action) === JSON.stringify(action),
      `${label}: logux/undo carries the original action`,
      JSON.stringify(r.error.action.action)
    )
  }
}

async function expectProcessed(client, action, label) {
  let r = await settle(client.sync(action), 8000, label)
  check(r.ok, `${label}: logux/processed`, r.ok ? undefined : String(r.error?.message))
}

// A client whose credentials must be refused with wrong-credentials, after
// which it must stay disconnected (Reconnect must not loop).
async function expectWrongCredentials(url, userId, tok, label) {
  let client = makeClient(url, userId, { token: tok, minDelay: 50, maxDelay: 100 })
  let statuses = []
  status(client, s => statuses.push(s))
  let connecting = 0
  client.node.connection.on('connecting', () => connecting++)
  client.start()
  let gotError = await waitUntil(
    () => client.errors.some(e => e.type === 'wrong-credentials'),
    8000
  )
  check(gotError, `${label}: client receives error wrong-credentials`,
    `errors: ${client.errors.map(e => e.type || e.message).join(',') || 'none'}; state ${client.state}`)
  check(
    client.tap.connectedCount === 0,
    `${label}: server never answers connected`,
    `${client.tap.connectedCount} connected`
  )
  // With minDelay 50 ms a reconnect loop would make several attempts here.
  await sleep(1200)
  check(client.state === 'disconnected', `${label}: client ends disconnected`, `state ${client.state}`)
  check(
    connecting === 1 && client.tap.connectCount === 1,
    `${label}: no reconnect loop (exactly one connection attempt)`,
    `${connecting} attempts, ${client.tap.connectCount} connect messages`
  )
  check(statuses.includes('wrongCredentials'), `${label}: status() reports wrongCredentials`,
    statuses.join(','))
  client.destroy()
}

await run('denied', async url => {
  let alice = makeClient(url, 'alice')
  let started = await settle(startClient(alice), 12000, 'connect')
  check(started.ok, 'alice connects with a valid token', started.error?.message)
  if (started.ok) {
    // Positive controls first, so a server that denies everything cannot pass.
    await expectProcessed(alice, { type: 'logux/subscribe', channel: 'users/alice' },
      'alice subscribes to users/alice')
    await expectProcessed(alice, { type: 'logux/subscribe', channel: 'news' },
      'alice subscribes to news')
    await expectProcessed(alice, { type: 'post', channel: 'users/alice', text: 'hi me' },
      'alice posts to users/alice')
    await expectProcessed(alice, { type: 'post', channel: 'counter/7', text: 'hi all' },
      'alice posts to counter/7')

    await expectUndo(alice, { type: 'post', channel: 'users/bob', text: 'hi bob' }, 'denied',
      'alice posts to users/bob')
    await expectUndo(alice, { type: 'post', channel: 'news', text: 'breaking' }, 'denied',
      'alice posts to news')
    await expectUndo(alice, { type: 'logux/subscribe', channel: 'users/bob' }, 'denied',
      'alice subscribes to users/bob')
    await expectUndo(alice, { type: 'nope' }, 'unknownType', 'alice sends type nope')
    await expectUndo(alice, { type: 'logux/subscribe', channel: 'nope/1' }, 'wrongChannel',
      'alice subscribes to nope/1')

    // After all the undos the connection must still be usable.
    await expectProcessed(alice, { type: 'inc', id: 'denied-check' }, 'alice still works after undos')
    check(alice.state === 'synchronized', 'alice is still connected', `state ${alice.state}`)
    check(alice.errors.length === 0, 'alice has no client errors',
      alice.errors.map(e => e.message).join('; '))
    alice.destroy()
  }

  // The reference server locks an IP out after 3 failed logins within 3 s
  // (the client still only sees wrong-credentials). Only bad logins follow
  // from here, and we wait the lock out at the end so the next script is not hit.
  let firstBad = Date.now()
  await expectWrongCredentials(
    url, 'alice', token('alice', { secret: 'not-the-secret' }), 'bad signature'
  )
  await expectWrongCredentials(url, 'alice', token('alice', { expSeconds: -60 }), 'expired token')
  await expectWrongCredentials(url, 'alice', token('bob'), 'token of bob used by alice (sub mismatch)')
  let wait = firstBad + 3300 - Date.now()
  if (wait > 0) {
    note(`waiting ${wait} ms for brute-force counters to expire`)
    await sleep(wait)
  }
})
