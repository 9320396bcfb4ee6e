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
//   `logux/subscribe` and `logux/unsubscribe` change the channels that pulls follow and are
//   answered at once.
// * a loop of long-polling `POST /v1/pull` (`wait` 25 s) delivers what arrives as `sync`
//   messages, ids compressed from `baseTime` as a server compresses them.
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
      if (action.type === 'logux/subscribe' || action.type === 'logux/unsubscribe') {
        if (action.type === 'logux/subscribe') this.channels.add(action.channel)
        else this.channels.delete(action.channel)
        // The poll waiting now follows the old channels: start a new one.
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
        let response = await fetch(`${this.url}/v1/pull`, {
          method: 'POST',
          headers: this.headers(),
          body: JSON.stringify(body),
          signal: poll
        })
        let answer = await response.json()
        if (!response.ok) throw new Error(`pull answered ${response.status}: ${answer.error} ${answer.message}`)
        if (answer.actions.length > 0) {
          let message = ['sync', ++this.added]
          for (let { action, meta } of answer.actions) {
            let [ms, node, seq] = meta.id.split(' ')
            message.push(action, { id: [Number(ms) - this.baseTime, node, Number(seq)], time: meta.time - this.baseTime })
          }
          this.receive(message)
        }
        this.cursor = answer.cursor
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
