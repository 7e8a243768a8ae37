// nginx in front as a shared cache (the README recipe: proxy_cache +
// proxy_cache_lock): 1,000 identical catch-up reads reach the server once,
// 1,000 long-pollers at one offset and cursor reach it about once per
// append, every client ends with exactly the stream's bytes, and with auth
// on the cache never hands one token's answer to another. Counted on the
// server's own /metrics, fetched directly. The test starts its own servers
// (`DS_BIN`) and nginx (`NGINX_PATH`, Debian's package; scripts/clients.sh
// installs it when root).
import { spawn, type ChildProcess } from "node:child_process"
import { createHmac } from "node:crypto"
import { mkdtemp, mkdir, rm, writeFile } from "node:fs/promises"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createInterface } from "node:readline"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { waitFor } from "./helpers"

const NGINX = process.env.NGINX_PATH ?? "/usr/sbin/nginx"

const CLIENTS = 1000

/** One server with nginx in front: `direct` is the server, `cached` nginx. */
interface Pair {
  direct: string
  cached: string
  stop: () => Promise<void>
}
const pairs: Pair[] = []

async function freePort(): Promise<number> {
  const s = createServer()
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve))
  const port = (s.address() as { port: number }).port
  await new Promise<void>((resolve) => s.close(() => resolve()))
  return port
}

/** The nginx configuration of the README recipe, with every path in `dir`. */
function nginxConf(dir: string, upstream: string, port: number): string {
  return `
daemon off;
# One process as the test's user (as root, workers would drop to nobody and
# lose access to the private temp dir).
master_process off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 8192; }
worker_rlimit_nofile 16384;
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;

  proxy_cache_path ${dir}/cache levels=1:2 keys_zone=streams:10m max_size=1g inactive=10m;
  upstream durable_streams { server ${upstream}; keepalive 32; }

  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://durable_streams;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      # Long-polls and SSE stay open; SSE answers carry X-Accel-Buffering: no.
      proxy_read_timeout 1h;
      proxy_cache streams;
      proxy_cache_key $request_uri;
      # One request per URL goes upstream; the others wait for its answer.
      proxy_cache_lock on;
      proxy_cache_lock_timeout 10s;
      proxy_cache_use_stale updating;
      add_header X-Cache-Status $upstream_cache_status always;
    }
  }
}
`
}

/** The server's count of `GET` stream reads answered `status`. */
async function upstreamGets(p: Pair, status: number, token?: string): Promise<number> {
  const headers = token ? { authorization: `Bearer ${token}` } : undefined
  const text = await (await fetch(`${p.direct}/metrics`, { headers })).text()
  const line = `ds_http_requests_total{method="GET",route="stream",status="${status}"} `
  const found = text.split("\n").find((l) => l.startsWith(line))
  return found ? Number(found.slice(line.length)) : 0
}

/** Starts a memory server with `args` and nginx in front of it. */
async function startPair(args: string[]): Promise<Pair> {
  const bin = process.env.DS_BIN
  if (!bin) throw new Error("DS_BIN is not set: run through scripts/clients.sh")
  const dir = await mkdtemp(join(tmpdir(), "ds-nginx-"))
  const server = spawn(bin, [
    "serve", "--bind", "127.0.0.1:0", "--storage", "memory", "--log-level", "warn",
    "--long-poll-timeout", "10s", ...args,
  ], { stdio: ["ignore", "pipe", "inherit"] })
  let nginx: ChildProcess | undefined
  const stop = async () => {
    nginx?.kill("SIGQUIT")
    server.kill("SIGTERM")
    if (process.env.DS_KEEP_NGINX_LOG !== "1") await rm(dir, { recursive: true, force: true })
  }
  try {
    const lines = createInterface({ input: server.stdout! })
    const direct = await new Promise<string>((resolve, reject) => {
      lines.once("line", (line) => {
        const m = line.match(/listening on (http:\/\/\S+)/)
        m ? resolve(m[1].replace(/\/+$/, "")) : reject(new Error(`unexpected first line: ${line}`))
      })
      server.once("exit", (code) => reject(new Error(`server exited (${code})`)))
    })
    const port = await freePort()
    await mkdir(join(dir, "cache"))
    await writeFile(join(dir, "nginx.conf"), nginxConf(dir, new URL(direct).host, port))
    nginx = spawn(NGINX, ["-p", dir, "-c", join(dir, "nginx.conf"), "-e", join(dir, "error.log")], {
      stdio: ["ignore", "inherit", "inherit"],
    })
    const cached = `http://127.0.0.1:${port}`
    await waitFor("nginx to answer", async () => {
      try {
        return (await fetch(`${cached}/healthz`)).status === 200
      } catch {
        return false
      }
    })
    const pair = { direct, cached, stop }
    pairs.push(pair)
    return pair
  } catch (e) {
    await stop()
    throw e
  }
}

/** An HS256 JWT with `scope`, valid for an hour. */
function jwt(secret: string, sub: string, scope: string): string {
  const enc = (v: object) => Buffer.from(JSON.stringify(v)).toString("base64url")
  const head = enc({ alg: "HS256", typ: "JWT" })
  const body = enc({ sub, scope, exp: Math.floor(Date.now() / 1000) + 3600 })
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url")
  return `${head}.${body}.${sig}`
}

/**
 * Reads `path` from `offset` through the cache as the protocol tells a
 * client to (section 10): a cached chunk's `Stream-Up-To-Date` may be old,
 * so it reads on until the answer at the tail itself, which is empty and
 * `no-cache` (revalidated by every cache). Returns the bytes and the tail.
 */
async function catchUp(base: string, path: string, offset: string, headers?: Record<string, string>) {
  let text = ""
  for (;;) {
    const r = await fetch(`${base}${path}?offset=${offset}`, { headers })
    expect(r.status).toBe(200)
    const chunk = await r.text()
    text += chunk
    offset = r.headers.get("stream-next-offset")!
    if (chunk === "" && r.headers.get("stream-up-to-date") === "true") {
      expect(r.headers.get("cache-control")).toBe("no-cache")
      return { text, offset }
    }
  }
}

let open: Pair
let authed: Pair
const SECRET = "nginx-test-secret-0123456789abcdef"
const WRITER = "nginx-writer"

beforeAll(async () => {
  open = await startPair([])
  // The second server has auth on: static tokens for the writer, JWTs
  // (HS256) for readers, and one public glob (the settings' DS_* variables;
  // the child takes the environment at spawn).
  const auth: Record<string, string> = {
    DS_AUTH_ENABLED: "true",
    DS_AUTH_WRITE_TOKENS: WRITER,
    DS_AUTH_READ_TOKENS: WRITER,
    DS_AUTH_JWT_HS256_SECRET: SECRET,
    DS_AUTH_PUBLIC_STREAMS: "public/**",
  }
  Object.assign(process.env, auth)
  try {
    authed = await startPair([])
  } finally {
    for (const k of Object.keys(auth)) delete process.env[k]
  }
}, 60_000)

afterAll(async () => {
  for (const p of pairs) await p.stop()
})

describe("nginx proxy_cache in front", () => {
  it(`collapses ${CLIENTS} concurrent identical catch-up reads into one upstream read`, async () => {
    const path = `/v1/stream/nginx-${Date.now()}`
    const put = await fetch(`${open.direct}${path}`, {
      method: "PUT",
      headers: { "content-type": "text/plain" },
      body: "cached bytes",
    })
    expect(put.status).toBe(201)
    const before = await upstreamGets(open, 200)
    const answers = await Promise.all(
      Array.from({ length: CLIENTS }, () => fetch(`${open.cached}${path}?offset=-1`))
    )
    const bodies = await Promise.all(answers.map((r) => r.text()))
    expect(answers.map((r) => r.status)).toEqual(Array(CLIENTS).fill(200))
    expect(new Set(bodies)).toEqual(new Set(["cached bytes"]))
    expect(answers.filter((r) => r.headers.get("x-cache-status") === "MISS")).toHaveLength(1)
    expect(await upstreamGets(open, 200)).toBe(before + 1)
    const again = await fetch(`${open.cached}${path}?offset=-1`)
    expect(again.headers.get("x-cache-status")).toBe("HIT")
    expect(await upstreamGets(open, 200)).toBe(before + 1)

    // Nothing stale past the tail: after an append, a reader that starts
    // from the cached chunk (still saying up to date) reaches the new bytes,
    // because the empty answer at the old tail is no-cache and nginx
    // revalidates it.
    expect((await catchUp(open.cached, path, "-1")).text).toBe("cached bytes")
    const post = await fetch(`${open.direct}${path}`, {
      method: "POST",
      headers: { "content-type": "text/plain" },
      body: " and more",
    })
    expect(post.status).toBe(204)
    const ends = await Promise.all(
      Array.from({ length: 20 }, () => catchUp(open.cached, path, "-1"))
    )
    expect(new Set(ends.map((e) => e.text))).toEqual(new Set(["cached bytes and more"]))
  }, 60_000)

  it(`collapses ${CLIENTS} long-pollers at one offset and cursor into about one upstream poll per append`, async () => {
    const path = `/v1/stream/nginx-lp-${Date.now()}`
    const put = await fetch(`${open.direct}${path}`, {
      method: "PUT",
      headers: { "content-type": "text/plain" },
    })
    expect(put.status).toBe(201)
    const tail = put.headers.get("stream-next-offset")!
    // Every client follows the chain of answers: offset and cursor from the
    // last one, as the protocol says.
    const clients = Array.from({ length: CLIENTS }, () => ({ next: `offset=${tail}`, text: "" }))
    const perAppend: number[] = []
    const appends = ["one ", "two ", "three"]
    for (const chunk of appends) {
      const before = await upstreamGets(open, 200)
      const polls = clients.map(async (c) => {
        const r = await fetch(`${open.cached}${path}?${c.next}&live=long-poll`)
        expect(r.status).toBe(200)
        c.text += await r.text()
        const cursor = r.headers.get("stream-cursor")
        c.next = `offset=${r.headers.get("stream-next-offset")}` + (cursor ? `&cursor=${cursor}` : "")
      })
      await new Promise((r) => setTimeout(r, 700))
      const post = await fetch(`${open.direct}${path}`, {
        method: "POST",
        headers: { "content-type": "text/plain" },
        body: chunk,
      })
      expect(post.status).toBe(204)
      await Promise.all(polls)
      perAppend.push((await upstreamGets(open, 200)) - before)
    }
    expect(new Set(clients.map((c) => c.text))).toEqual(new Set([appends.join("")]))
    // A handful at most per append (normally one: the lock holds the rest).
    for (const n of perAppend) {
      expect(n).toBeGreaterThanOrEqual(1)
      expect(n).toBeLessThanOrEqual(3)
    }
  }, 90_000)

  it("with auth on, never hands one token's answer to a token without the scope", async () => {
    const path = `/v1/stream/team-a/notes-${Date.now()}`
    const put = await fetch(`${authed.direct}${path}`, {
      method: "PUT",
      headers: { "content-type": "text/plain", authorization: `Bearer ${WRITER}` },
      body: "secret of team a",
    })
    expect(put.status).toBe(201)
    const alice = jwt(SECRET, "alice", "read:team-a/**")
    const bob = jwt(SECRET, "bob", "read:team-b/**")
    const url = `${authed.cached}${path}?offset=-1`

    const a = await fetch(url, { headers: { authorization: `Bearer ${alice}` } })
    expect(a.status).toBe(200)
    expect(await a.text()).toBe("secret of team a")
    expect(a.headers.get("cache-control")).toContain("private")
    for (const headers of [{ authorization: `Bearer ${bob}` }, undefined]) {
      const r = await fetch(url, { headers })
      expect(r.status).toBe(headers ? 403 : 401)
      expect(await r.text()).not.toContain("secret of team a")
    }
    // The same holds when the token comes as access_token (EventSource) and
    // the URL differs only by it: each answer is the server's own.
    const viaQuery = await fetch(`${url}&access_token=${bob}`)
    expect(viaQuery.status).toBe(403)
    // Alice's answers were never stored: each of her reads reaches us.
    const before = await upstreamGets(authed, 200, WRITER)
    for (let i = 0; i < 3; i++) {
      const r = await fetch(url, { headers: { authorization: `Bearer ${alice}` } })
      expect(r.status).toBe(200)
      expect(r.headers.get("x-cache-status")).not.toBe("HIT")
      await r.text()
    }
    expect(await upstreamGets(authed, 200, WRITER)).toBe(before + 3)

    // A stream configured public is cacheable again: one upstream read.
    const pub = `/v1/stream/public/news-${Date.now()}`
    expect((await fetch(`${authed.direct}${pub}`, {
      method: "PUT",
      headers: { "content-type": "text/plain", authorization: `Bearer ${WRITER}` },
      body: "for everyone",
    })).status).toBe(201)
    const start = await upstreamGets(authed, 200, WRITER)
    const reads = await Promise.all(
      Array.from({ length: 50 }, () => fetch(`${authed.cached}${pub}?offset=-1`))
    )
    expect(new Set(await Promise.all(reads.map((r) => r.text())))).toEqual(new Set(["for everyone"]))
    expect(await upstreamGets(authed, 200, WRITER)).toBe(start + 1)
  }, 60_000)
})
