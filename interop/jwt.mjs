// Minimal HS256 JWT sign/verify with node:crypto only (no dependencies).
// Used by lib.mjs (to mint client tokens) and reference-server.mjs (to check them).
import { createHmac, timingSafeEqual } from 'node:crypto'

export const DEFAULT_SECRET = 'interop-secret'

export function jwtSecret() {
  return process.env.RHIZOME_JWT_SECRET || DEFAULT_SECRET
}

function b64url(input) {
  return Buffer.from(input).toString('base64url')
}

function hmac(secret, data) {
  return createHmac('sha256', secret).update(data).digest()
}

// payload is an object, e.g. { sub: 'alice', exp: 1700000000 }
export function signJwt(payload, secret = jwtSecret()) {
  let head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))
  let body = b64url(JSON.stringify(payload))
  let sig = hmac(secret, `${head}.${body}`).toString('base64url')
  return `${head}.${body}.${sig}`
}

// Returns the payload if the signature is valid, alg is HS256 and `exp`
// (mandatory, seconds since epoch) lies in the future; otherwise null.
export function verifyJwt(token, secret = jwtSecret(), nowSeconds = Date.now() / 1000) {
  if (typeof token !== 'string') return null
  let parts = token.split('.')
  if (parts.length !== 3) return null
  let [head, body, sig] = parts
  let header, payload
  try {
    header = JSON.parse(Buffer.from(head, 'base64url').toString('utf8'))
    payload = JSON.parse(Buffer.from(body, 'base64url').toString('utf8'))
  } catch {
    return null
  }
  if (!header || header.alg !== 'HS256') return null
  let expected = hmac(secret, `${head}.${body}`)
  let given = Buffer.from(sig, 'base64url')
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null
  if (!payload || typeof payload !== 'object') return null
  if (typeof payload.exp !== 'number' || payload.exp <= nowSeconds) return null
  return payload
}
