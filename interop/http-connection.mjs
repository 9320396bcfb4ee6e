// A Logux `Connection` (the interface of @logux/core 0.10's WsConnection) over Rhizome's HTTP
// sync API (docs/http.md): the real @logux/client runs unchanged with
//   new Client({ server: new Reconnect(new HttpConnection('http://host:port')), ... })
// and no WebSocket.
//
// It answers the client's protocol-5 messages itself, as a server would:
// * `connect` → `connected`, whose time is the local clock, so `timeFix` is 0 and `baseTime`
//   is the moment of connecting; the token of `connect` is sent with every request.
// * `sync` → `POST /v1/push` of its actions (ids and times made whole again from `baseTime`);
//   then `synced` and one `logux/processed` or `logux/undo` per action, from the results.
//   `logux/subscribe` and `logux/unsubscribe` change the channels that pulls follow.
// * a loop of long-polling `POST /v1/pull` (`wait` 25 s) delivers what arrives as `sync`
//   messages, ids compressed from `baseTime` as a server compresses them.
// * a `logux/subscribe` to a channel the pulls do not follow yet asks the server for the
//   channel's subscription id (`ids: {channel: null}`), with the subscription's `since` if it
//   has one, and is answered with a `logux/processed` whose meta id is that subscription id:
//   the id the client keeps and sends back as `since`, which the server maps to what this
//   client received (every pull raises it to where the channel starts). So a new Client, on
//   a new page, resumes a channel with that `since`. A channel still catching up on its own
//   (`since` of an answer) is pulled from its own cursor until it meets the main one. A
//   re-subscription to a channel the pulls still follow (the same connection, back from a
//   disconnect) is answered at once: the cursor already holds its place. A subscription the
//   server refuses (`denied`, `wrongChannel`) is answered with `logux/undo`.
// * `ping` → `pong`.
import { createNanoEvents } from 'nanoevents'

const SERVER_NODE = 'server:http'
const WAIT_SECONDS = 25

export class HttpConnection {
  constructor(url) {
    this.url = url.replace(/\/$/, '')
    this.connected = false
    this.emitter = createNanoEvents()
    this.channels = new Set()
    // Per channel: its subscription id, from the server.
    this.ids = new Map()
    // Per channel whose id is asked for: the subscriptions waiting for it, and its `since`.
    this.pending = new Map()
    // Per channel pulled from a cursor of its own (a re-subscription catching up).
    this.channelSince = {}
    this.cursor = undefined
    this.added = 0
    this.serverSeq = 0
  }

  on(event, listener) {
    return this.emitter.on(event, listener)
  }

  connect() {
    if (this.connected) return Promise.resolve()
    this.emitter.emit('connecting')
    this.connected = true
    this.abort = new AbortController()
    this.emitter.emit('connect')
    return Promise.resolve()
  }

  disconnect(reason) {
    if (!this.connected) return
    this.connected = false
    this.node = undefined
    this.abort?.abort()
    this.emitter.emit('disconnect', reason)
  }

  // Delivers a server message to the client, asynchronously, as a socket would.
  receive(message) {
    queueMicrotask(() => {
      if (this.connected) this.emitter.emit('message', message)
    })
  }

  fail(error) {
    this.emitter.emit('error', error)
    this.disconnect('error')
  }

  send(message) {
    if (!this.connected) return
    let [type] = message
    if (type === 'connect') this.onConnect(message)
    else if (type === 'sync') this.onSync(message).catch(e => this.fail(e))
    else if (type === 'ping') this.receive(['pong', this.added])
    // `synced` confirms what a pull delivered: the cursor already moved on.
  }

  onConnect([, , node, , options = {}]) {
    this.node = node
    this.token = options.token
    this.subprotocol = options.subprotocol
    let now = Date.now()
    this.baseTime = now
    this.receive(['connected', 5, SERVER_NODE, [now, now], {}])
    this.pullLoop(this.abort.signal)
  }

  headers() {
    let headers = { 'Content-Type': 'application/json' }
    if (this.token) headers.Authorization = `Bearer ${this.token}`
    return headers
  }

  // `[shift, node, seq]`, `[shift, seq]` or `shift` → the whole id.
  wholeId(id) {
    if (typeof id === 'number') return `${id + this.baseTime} ${this.node} 0`
    if (id.length === 2) return `${id[0] + this.baseTime} ${this.node} ${id[1]}`
    return `${id[0] + this.baseTime} ${id[1]} ${id[2]}`
  }

  // A server action of ours (an answer), as the client decodes it.
  serverMeta() {
    this.serverSeq += 1
    let shift = Date.now() - this.baseTime
    return { id: [shift, this.serverSeq], time: shift }
  }

  async onSync([, added, ...rest]) {
    let pushed = []
    let answers = []
    for (let i = 0; i < rest.length; i += 2) {
      let action = rest[i]
      let meta = { ...rest[i + 1] }
      let id = this.wholeId(meta.id)
      if (action.type === 'logux/subscribe') {
        let channel = action.channel
        let waiting = this.pending.get(channel)
        if (waiting) {
          waiting.ids.push(id)
        } else if (this.channels.has(channel)) {
          answers.push({ id, result: { status: 'processed' } })
        } else {
          this.channels.add(channel)
          this.pending.set(channel, { ids: [id], since: action.since })
          // The poll waiting now follows the old channels: start a new one.
          this.poll?.abort()
        }
        continue
      }
      if (action.type === 'logux/unsubscribe') {
        this.channels.delete(action.channel)
        this.ids.delete(action.channel)
        delete this.channelSince[action.channel]
        for (let waiting of this.pending.get(action.channel)?.ids ?? []) {
          this.receive(['sync', ++this.added, { type: 'logux/processed', id: waiting }, this.serverMeta()])
        }
        this.pending.delete(action.channel)
        this.poll?.abort()
        answers.push({ id, result: { status: 'processed' } })
        continue
      }
      meta.id = id
      meta.time = meta.time + this.baseTime
      pushed.push({ action, meta })
      answers.push({ id, action })
    }
    if (pushed.length > 0) {
      let response = await fetch(`${this.url}/v1/push`, {
        method: 'POST',
        headers: this.headers(),
        body: JSON.stringify({ node: this.node, subprotocol: this.subprotocol, actions: pushed }),
        signal: this.abort?.signal
      })
      let body = await response.json()
      if (!response.ok) {
        if (body.error === 'wrong-credentials') {
          this.receive(['error', 'wrong-credentials'])
          this.disconnect('error')
          return
        }
        throw new Error(`push answered ${response.status}: ${body.error} ${body.message}`)
      }
      let byId = new Map(body.results.map(r => [r.id, r]))
      for (let answer of answers) answer.result ??= byId.get(answer.id)
    }
    this.receive(['synced', added])
    let reply = ['sync', ++this.added]
    for (let { id, action, result } of answers) {
      if (result?.status === 'processed') {
        reply.push({ type: 'logux/processed', id }, this.serverMeta())
      } else if (result?.status === 'undone') {
        let undo = result.undo ?? { type: 'logux/undo', id, reason: result.reason, action }
        reply.push(undo, this.serverMeta())
      }
      // `accepted`: durable, outcome to come; a later push of the same id learns it.
    }
    if (reply.length > 2) this.receive(reply)
  }

  // A server id, `"<ms> <node> <seq>"`, and its time, as the client decodes them.
  clientMeta(id, time) {
    let [ms, node, seq] = id.split(' ')
    return { id: [Number(ms) - this.baseTime, node, Number(seq)], time: time - this.baseTime }
  }

  // A pull refused for the channels it was subscribing to (`denied`, `wrongChannel`): those
  // subscriptions are undone and the channels dropped. False when no subscription was asked.
  refuse(asked, answer) {
    if (asked.size === 0) return false
    let message = []
    for (let [channel, waiting] of asked) {
      if (this.pending.get(channel) !== waiting) continue
      this.pending.delete(channel)
      this.channels.delete(channel)
      for (let id of waiting.ids) {
        let action = { type: 'logux/subscribe', channel }
        message.push({ type: 'logux/undo', id, reason: answer.error, action }, this.serverMeta())
      }
    }
    if (message.length > 0) this.receive(['sync', ++this.added, ...message])
    return true
  }

  async pullLoop(signal) {
    let pause = 100
    while (this.connected && !signal.aborted) {
      this.poll = new AbortController()
      let poll = this.poll.signal
      let ended = () => this.poll.abort()
      signal.addEventListener('abort', ended, { once: true })
      try {
        let body = { node: this.node, subprotocol: this.subprotocol, channels: [...this.channels] }
        if (this.cursor !== undefined) body.cursor = this.cursor
        // The first pull only takes the cursor; then polls wait.
        if (this.cursor !== undefined) body.wait = WAIT_SECONDS
        let since = { ...this.channelSince }
        // Known subscription ids are sent back (the server raises each to where this pull
        // starts its channel) only when that moved since they were last raised: an idle
        // long-poll renewed on a quiet log costs the server no write.
        let place = JSON.stringify([this.cursor, this.channelSince])
        let raise = place !== this.raisedAt
        let ids = raise ? Object.fromEntries(this.ids) : {}
        let asked = new Map(this.pending)
        for (let [channel, { since: resume }] of asked) {
          ids[channel] = null
          if (resume) since[channel] = resume
        }
        if (Object.keys(since).length > 0) body.since = since
        if (Object.keys(ids).length > 0) body.ids = ids
        let response = await fetch(`${this.url}/v1/pull`, {
          method: 'POST',
          headers: this.headers(),
          body: JSON.stringify(body),
          signal: poll
        })
        let answer = await response.json()
        if (!response.ok) {
          if (response.status < 500 && this.refuse(asked, answer)) continue
          throw new Error(`pull answered ${response.status}: ${answer.error} ${answer.message}`)
        }
        let message = []
        for (let { action, meta } of answer.actions) message.push(action, this.clientMeta(meta.id, meta.time))
        // A subscription is answered after what its channel brought, as a server answers
        // one after its catch-up.
        for (let [channel, id] of Object.entries(answer.ids ?? {})) {
          let waiting = asked.get(channel)
          if (!waiting || this.pending.get(channel) !== waiting) continue
          this.pending.delete(channel)
          this.ids.set(channel, id)
          let ms = Number(id.split(' ')[0])
          for (let subscribe of waiting.ids) message.push({ type: 'logux/processed', id: subscribe }, this.clientMeta(id, ms))
        }
        if (message.length > 0) this.receive(['sync', ++this.added, ...message])
        if (raise) this.raisedAt = place
        this.cursor = answer.cursor
        this.channelSince = answer.since ?? {}
        pause = 100
      } catch (e) {
        if (signal.aborted || !this.connected) return
        // A poll ended for new channels starts again at once; a failed one is retried with
        // backoff. The cursor did not move either way.
        if (!poll.aborted) {
          await new Promise(resolve => setTimeout(resolve, pause))
          pause = Math.min(pause * 2, 5000)
        }
      } finally {
        signal.removeEventListener('abort', ended)
      }
    }
  }
}
