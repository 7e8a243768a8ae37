// nginx in front as a shared cache (the README recipe: proxy_cache +
// proxy_cache_lock): concurrent identical reads reach the server once.
// Counted on the server's own /metrics, fetched directly. The test starts
// its own server (`DS_BIN`) and nginx (`NGINX_PATH`, Debian's package;
// scripts/clients.sh installs it when root).
import { spawn, type ChildProcess } from "node:child_process"
import { mkdtemp, mkdir, rm, writeFile } from "node:fs/promises"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createInterface } from "node:readline"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { waitFor } from "./helpers"

const NGINX = process.env.NGINX_PATH ?? "/usr/sbin/nginx"

let dir: string
let server: ChildProcess | undefined
let nginx: ChildProcess | undefined
let direct: string
let cached: string

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
events { worker_connections 1024; }
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
async function upstreamGets(status: number): Promise<number> {
  const text = await (await fetch(`${direct}/metrics`)).text()
  const line = `ds_http_requests_total{method="GET",route="stream",status="${status}"} `
  const found = text.split("\n").find((l) => l.startsWith(line))
  return found ? Number(found.slice(line.length)) : 0
}

beforeAll(async () => {
  const bin = process.env.DS_BIN
  if (!bin) throw new Error("DS_BIN is not set: run through scripts/clients.sh")
  dir = await mkdtemp(join(tmpdir(), "ds-nginx-"))
  server = spawn(bin, [
    "serve", "--bind", "127.0.0.1:0", "--storage", "memory", "--log-level", "warn",
    "--long-poll-timeout", "5s",
  ], { stdio: ["ignore", "pipe", "inherit"] })
  const lines = createInterface({ input: server.stdout! })
  direct = await new Promise<string>((resolve, reject) => {
    lines.once("line", (line) => {
      const m = line.match(/listening on (http:\/\/\S+)/)
      m ? resolve(m[1].replace(/\/+$/, "")) : reject(new Error(`unexpected first line: ${line}`))
    })
    server!.once("exit", (code) => reject(new Error(`server exited (${code})`)))
  })
  const port = await freePort()
  await mkdir(join(dir, "cache"))
  await writeFile(join(dir, "nginx.conf"), nginxConf(dir, new URL(direct).host, port))
  nginx = spawn(NGINX, ["-p", dir, "-c", join(dir, "nginx.conf"), "-e", join(dir, "error.log")], {
    stdio: ["ignore", "inherit", "inherit"],
  })
  cached = `http://127.0.0.1:${port}`
  await waitFor("nginx to answer", async () => {
    try {
      return (await fetch(`${cached}/healthz`)).status === 200
    } catch {
      return false
    }
  })
})

afterAll(async () => {
  nginx?.kill("SIGQUIT")
  server?.kill("SIGTERM")
  if (process.env.DS_KEEP_NGINX_LOG !== "1" && dir) {
    await rm(dir, { recursive: true, force: true })
  }
})

describe("nginx proxy_cache in front", () => {
  it("collapses 50 concurrent identical catch-up reads into one upstream read", async () => {
    const path = `/v1/stream/nginx-${Date.now()}`
    const put = await fetch(`${direct}${path}`, {
      method: "PUT",
      headers: { "content-type": "text/plain" },
      body: "cached bytes",
    })
    expect(put.status).toBe(201)
    const before = await upstreamGets(200)
    const answers = await Promise.all(
      Array.from({ length: 50 }, () => fetch(`${cached}${path}?offset=-1`))
    )
    const bodies = await Promise.all(answers.map((r) => r.text()))
    expect(answers.map((r) => r.status)).toEqual(Array(50).fill(200))
    expect(new Set(bodies)).toEqual(new Set(["cached bytes"]))
    expect(answers.filter((r) => r.headers.get("x-cache-status") === "MISS")).toHaveLength(1)
    expect(await upstreamGets(200)).toBe(before + 1)
    // Later readers are served from the cache too.
    const again = await fetch(`${cached}${path}?offset=-1`)
    expect(again.headers.get("x-cache-status")).toBe("HIT")
    expect(await upstreamGets(200)).toBe(before + 1)
  })

  it("collapses 20 waiting long-polls into one upstream long-poll", async () => {
    const path = `/v1/stream/nginx-lp-${Date.now()}`
    const put = await fetch(`${direct}${path}`, {
      method: "PUT",
      headers: { "content-type": "text/plain" },
    })
    expect(put.status).toBe(201)
    const tail = put.headers.get("stream-next-offset")!
    const before = await upstreamGets(200)
    const url = `${cached}${path}?offset=${tail}&live=long-poll`
    const polls = Array.from({ length: 20 }, () => fetch(url))
    await new Promise((r) => setTimeout(r, 500))
    const post = await fetch(`${direct}${path}`, {
      method: "POST",
      headers: { "content-type": "text/plain" },
      body: "news",
    })
    expect(post.status).toBe(204)
    const answers = await Promise.all(polls)
    const bodies = await Promise.all(answers.map((r) => r.text()))
    expect(answers.map((r) => r.status)).toEqual(Array(20).fill(200))
    expect(new Set(bodies)).toEqual(new Set(["news"]))
    expect(await upstreamGets(200)).toBe(before + 1)
  })
})
