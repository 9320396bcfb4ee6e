// Joins of Rhizome's CRDT documents (docs/crdt.md, "Documents"), for the interop scripts: a
// client builds its copy of an object by joining every `crdt/delta` it receives, in order,
// into an empty copy. A delta and a whole state have the same document, so the same joins
// serve both. Node ids and dots come from the server; nothing here assigns any.
//
// Kinds covered: counter, lww, mv, set, clset and map (a map's nested maps, add-wins sets,
// multi-value registers, counters, LWW registers and causal-length sets; not lists).

// ---------------------------------------------------------------------------
// Causal contexts: {vv: {node: n}, cloud: [[node, n] | [node, first, last]]}
// ---------------------------------------------------------------------------

export const emptyContext = () => ({ vv: {}, cloud: [] })

// Whether the context covers the dot (node, n). Runs are never expanded: a run may be long.
export function contextHas(context, node, n) {
  if (n <= (context?.vv?.[node] ?? 0)) return true
  return (context?.cloud ?? []).some(r => r[0] === node && r[1] <= n && n <= (r[2] ?? r[1]))
}

// The union of two contexts, compacted: a run that reaches a node's prefix extends it, the
// others stay in the cloud as [node, first, last], merged when they touch, in node and
// counter order. joinContext(c, emptyContext()) is c's canonical form.
export function joinContext(a, b) {
  let vv = { ...(a?.vv ?? {}) }
  for (let [node, n] of Object.entries(b?.vv ?? {})) vv[node] = Math.max(vv[node] ?? 0, n)
  let runs = [...(a?.cloud ?? []), ...(b?.cloud ?? [])].map(r => [r[0], r[1], r[2] ?? r[1]])
  runs.sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : x[1] - y[1]))
  let cloud = []
  for (let [node, first, last] of runs) {
    let prefix = vv[node] ?? 0
    if (last <= prefix) continue
    if (first <= prefix + 1) {
      vv[node] = last
      continue
    }
    let prev = cloud.at(-1)
    if (prev && prev[0] === node && first <= prev[2] + 1) prev[2] = Math.max(prev[2], last)
    else cloud.push([node, first, last])
  }
  // A run may reach a prefix that grew after it was kept.
  cloud = cloud.filter(([node, first, last]) => {
    if (first > (vv[node] ?? 0) + 1) return true
    vv[node] = Math.max(vv[node] ?? 0, last)
    return false
  })
  for (let node of Object.keys(vv)) if (!(vv[node] > 0)) delete vv[node]
  return { vv, cloud }
}

// ---------------------------------------------------------------------------
// Dot stores: arrays of entries, each carrying one dot. The join keeps an entry when both
// sides hold its dot, or when one side holds it and the other side's context has not seen it
// (it was retired there: removed or overwritten).
// ---------------------------------------------------------------------------

function joinDots(ours, ourContext, theirs, theirContext, dotOf) {
  let key = e => dotOf(e).join(' ')
  let mine = new Set(ours.map(key))
  let other = new Set(theirs.map(key))
  return [
    ...ours.filter(e => other.has(key(e)) || !contextHas(theirContext, ...dotOf(e))),
    ...theirs.filter(e => !mine.has(key(e)) && !contextHas(ourContext, ...dotOf(e)))
  ]
}

// ---------------------------------------------------------------------------
// Top-level kinds
// ---------------------------------------------------------------------------

// PN-counter {node: [p, n]}: per node, the max of each total. Joins in place.
export function joinCounter(state, delta) {
  for (let [node, [p, n]] of Object.entries(delta)) {
    let [p0, n0] = state[node] ?? [0, 0]
    state[node] = [Math.max(p0, p), Math.max(n0, n)]
  }
  return state
}
export const counterValue = state => Object.values(state).reduce((sum, [p, n]) => sum + p - n, 0)

// LWW register {time, dot: [node, n], value} or {}: the greater (time, node, n) stamp.
export function joinLww(state, delta) {
  if (delta.dot === undefined) return state
  if (!state.dot) return delta
  let later =
    delta.time > state.time ||
    (delta.time === state.time &&
      (delta.dot[0] > state.dot[0] || (delta.dot[0] === state.dot[0] && delta.dot[1] > state.dot[1])))
  return later ? delta : state
}

// Add-wins set {elems: [[elem, node, n]], context}.
export const emptySet = () => ({ elems: [], context: emptyContext() })
export function joinSet(state, delta) {
  let elems = joinDots(state.elems, state.context, delta.elems ?? [], delta.context, e => [e[1], e[2]])
  return { elems, context: joinContext(state.context, delta.context) }
}
export const elementsOf = set => [...new Set(set.elems.map(e => e[0]))].sort()

// Multi-value register {values: [[node, n, value]], context}.
export const emptyMv = () => ({ values: [], context: emptyContext() })
export function joinMv(state, delta) {
  let values = joinDots(state.values, state.context, delta.values ?? [], delta.context, v => [v[0], v[1]])
  return { values, context: joinContext(state.context, delta.context) }
}
export const mvValues = mv => mv.values.map(v => v[2])

// Causal-length set {elems: [[elem, length]]}: per element the max length; odd is present.
export const emptyClset = () => ({ elems: [] })
export function joinClset(state, delta) {
  let lengths = new Map(state.elems.map(([e, l]) => [JSON.stringify(e), [e, l]]))
  for (let [e, l] of delta.elems ?? []) {
    let k = JSON.stringify(e)
    let [, l0] = lengths.get(k) ?? [e, 0]
    lengths.set(k, [e, Math.max(l0, l)])
  }
  return { elems: [...lengths.values()] }
}
// {element: length}, in element order (elements as strings: the scripts use string elements).
export const clsetLengths = set =>
  Object.fromEntries(set.elems.map(([e, l]) => [String(e), l]).sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0)))
export const clsetPresent = set => set.elems.filter(([, l]) => l % 2 === 1).map(([e]) => e).sort()

// Observed-remove map {entries: {key: value}, context}; one causal context for every dot at
// every depth. A value is {map, set, reg, counter, lww, clset} with only its non-empty parts.
const PART_DOTS = {
  set: e => [e[1], e[2]],
  reg: e => [e[0], e[1]],
  counter: e => [e[0], e[1]],
  lww: e => [e[0], e[1]],
  clset: e => [e[1], e[2]]
}

function joinEntries(ours, ourContext, theirs, theirContext) {
  let out = {}
  for (let key of new Set([...Object.keys(ours), ...Object.keys(theirs)])) {
    let value = joinValue(ours[key] ?? {}, ourContext, theirs[key] ?? {}, theirContext)
    if (Object.keys(value).length > 0) out[key] = value
  }
  return out
}

function joinValue(ours, ourContext, theirs, theirContext) {
  if (ours.list || theirs.list) throw new Error('crdt-join: lists in a map are not supported')
  let out = {}
  let map = joinEntries(ours.map ?? {}, ourContext, theirs.map ?? {}, theirContext)
  if (Object.keys(map).length > 0) out.map = map
  for (let [part, dotOf] of Object.entries(PART_DOTS)) {
    let joined = joinDots(ours[part] ?? [], ourContext, theirs[part] ?? [], theirContext, dotOf)
    if (joined.length > 0) out[part] = joined
  }
  return out
}

export const emptyMap = () => ({ entries: {}, context: emptyContext() })
export function joinMap(state, delta) {
  let entries = joinEntries(state.entries, state.context, delta.entries ?? {}, delta.context)
  return { entries, context: joinContext(state.context, delta.context) }
}

// The value at `path` in a map document (undefined when absent).
export function mapValueAt(map, path) {
  let entries = map.entries
  let value
  for (let key of path) {
    value = entries?.[key]
    entries = value?.map
  }
  return value
}

// A map counter's value: the sum over nodes of p − m, each node's totals the larger of each
// among its dots (one dot per node, except after two servers numbered one author concurrently).
export function mapCounterValue(entries = []) {
  let totals = {}
  for (let [node, , p, m] of entries) {
    let [p0, m0] = totals[node] ?? [0, 0]
    totals[node] = [Math.max(p0, p), Math.max(m0, m)]
  }
  return counterValue(totals)
}

// ---------------------------------------------------------------------------
// Any kind
// ---------------------------------------------------------------------------

const KINDS = {
  counter: { empty: () => ({}), join: (s, d) => joinCounter({ ...s }, d) },
  lww: { empty: () => ({}), join: joinLww },
  mv: { empty: emptyMv, join: joinMv },
  set: { empty: emptySet, join: joinSet },
  clset: { empty: emptyClset, join: joinClset },
  map: { empty: emptyMap, join: joinMap }
}

export const emptyOf = kind => {
  if (!KINDS[kind]) throw new Error(`crdt-join: no join for kind ${kind}`)
  return KINDS[kind].empty()
}
export const joinOf = (kind, state, delta) => {
  if (!KINDS[kind]) throw new Error(`crdt-join: no join for kind ${kind}`)
  return KINDS[kind].join(state, delta)
}

// A copy per object key, built from `crdt/delta` actions joined in the order given.
export function foldDeltas(actions) {
  let copies = new Map()
  for (let { key, kind, delta } of actions) {
    let copy = copies.get(key) ?? { kind, state: emptyOf(kind) }
    if (copy.kind !== kind) throw new Error(`crdt-join: ${key} is a ${copy.kind}, a delta says ${kind}`)
    copy.state = joinOf(kind, copy.state, delta)
    copies.set(key, copy)
  }
  return copies
}

// ---------------------------------------------------------------------------
// Normal form, to compare two copies of one object: the same document whatever the order of
// its entries or the runs of its contexts. Returns a string.
// ---------------------------------------------------------------------------

// JSON with every object's keys sorted.
export function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`
  if (value && typeof value === 'object') {
    let keys = Object.keys(value).sort()
    return `{${keys.map(k => `${JSON.stringify(k)}:${canonical(value[k])}`).join(',')}}`
  }
  return JSON.stringify(value)
}

const sortedEntries = list => [...list].sort((x, y) => {
  let a = canonical(x)
  let b = canonical(y)
  return a < b ? -1 : a > b ? 1 : 0
})
const normContext = c => joinContext(c, emptyContext())

function normValue(value) {
  let out = {}
  for (let [part, v] of Object.entries(value)) out[part] = part === 'map' ? normEntries(v) : sortedEntries(v)
  return out
}
function normEntries(entries) {
  return Object.fromEntries(Object.entries(entries).map(([k, v]) => [k, normValue(v)]))
}

export function normalize(kind, doc) {
  switch (kind) {
    case 'counter': {
      let nonZero = Object.entries(doc).filter(([, [p, n]]) => p !== 0 || n !== 0)
      return canonical(Object.fromEntries(nonZero))
    }
    case 'lww':
      return canonical(doc)
    case 'mv':
      return canonical({ values: sortedEntries(doc.values ?? []), context: normContext(doc.context) })
    case 'set':
      return canonical({ elems: sortedEntries(doc.elems ?? []), context: normContext(doc.context) })
    case 'clset':
      return canonical({ elems: sortedEntries(doc.elems ?? []) })
    case 'map':
      return canonical({ entries: normEntries(doc.entries ?? {}), context: normContext(doc.context) })
    default:
      throw new Error(`crdt-join: cannot normalise kind ${kind}`)
  }
}
