// The Proxy Protocol (/v1/proxy) with real clients: the official TypeScript
// client reads a proxied SSE token stream, its session is cut, and a new
// session resumes from the offset it had reached; headless Chromium reads a
// proxied token stream cross-origin with a plain EventSource. The upstream is
// a tiny local token generator; scripts/clients.sh starts the server with
// the proxy on and http://127.0.0.1:*/* allowlisted.
import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { mkdtemp, rm } from "node:fs/promises"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { stream, type TextChunk } from "@durable-streams/client"
import { chromium, type BrowserContext } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { baseUrl, waitFor } from "./helpers"

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium"

let upstream: Server
let upstreamOrigin: string
/** Requests the upstream got for each path (with its query). */
const asked = new Map<string, number>()

/** `data: tokI\n\n` for I in 0..n. */
function tokens(n: number): string {
  return Array.from({ length: n }, (_, i) => `data: tok${i}\n\n`).join("")
}

beforeAll(async () => {
  upstream = createServer((req, res) => {
    asked.set(req.url ?? "/", (asked.get(req.url ?? "/") ?? 0) + 1)
    const u = new URL(req.url ?? "/", "http://x")
    const n = Number(u.searchParams.get("n") ?? "5")
    const ms = Number(u.searchParams.get("ms") ?? "10")
    res.writeHead(200, { "content-type": "text/event-stream" })
    let i = 0
    const tick = setInterval(() => {
      if (i >= n) {
        clearInterval(tick)
        res.end()
        return
      }
      res.write(`data: tok${i++}\n\n`)
    }, ms)
    res.on("close", () => clearInterval(tick))
  })
  await new Promise<void>((resolve) => upstream.listen(0, "127.0.0.1", resolve))
  upstreamOrigin = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`
})

afterAll(async () => {
  await new Promise<void>((resolve) => (upstream ? upstream.close(() => resolve()) : resolve()))
})

/** POSTs to /v1/proxy and returns the absolute pre-signed URL. */
async function proxied(path: string): Promise<string> {
  const res = await fetch(`${baseUrl()}/v1/proxy`, {
    method: "POST",
    headers: { "upstream-url": `${upstreamOrigin}${path}`, "upstream-method": "GET" },
  })
  expect(res.status).toBe(201)
  expect(res.headers.get("upstream-content-type")).toBe("text/event-stream")
  return new URL(res.headers.get("location")!, baseUrl()).toString()
}

describe("the proxy with the TypeScript client", () => {
  it("reads a proxied token stream, is cut off, and resumes from its offset", async () => {
    const n = 80
    const path = `/sse?n=${n}&ms=15`
    const url = await proxied(path)
    const first = await stream({ url, live: "long-poll" })
    const before: TextChunk[] = []
    first.subscribeText((c) => {
      before.push(c)
    })
    await waitFor("the first tokens", () => before.map((c) => c.text).join("").includes("tok10"))
    first.cancel()
    const cutAt = before.at(-1)!
    const seen = before.map((c) => c.text).join("")
    expect(cutAt.streamClosed).toBe(false)

    const rest = await stream({ url, offset: cutAt.offset, live: "long-poll" })
    const after: TextChunk[] = []
    rest.subscribeText((c) => {
      after.push(c)
    })
    await waitFor("the end of the proxied stream", () => after.some((c) => c.streamClosed), 20_000)
    // Nothing lost, nothing repeated, and the upstream was asked once.
    expect(seen + after.map((c) => c.text).join("")).toBe(tokens(n))
    expect(asked.get(path)).toBe(1)
  })
})

describe("the proxy with EventSource in headless Chromium", () => {
  let profileDir: string
  let context: BrowserContext

  beforeAll(async () => {
    profileDir = await mkdtemp(join(tmpdir(), "ds-chromium-proxy-"))
    context = await chromium.launchPersistentContext(profileDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
    })
  })

  afterAll(async () => {
    await context?.close()
    if (profileDir) await rm(profileDir, { recursive: true, force: true })
  })

  it("reads a proxied token stream to its end, cross-origin", async () => {
    const n = 30
    const url = await proxied(`/sse?n=${n}&ms=20`)
    const page = await context.newPage()
    // A page of another origin (the upstream's): the EventSource is a CORS request.
    await page.goto(`${upstreamOrigin}/sse?n=0`)
    const got = await page.evaluate(
      (src) =>
        new Promise<string>((resolve, reject) => {
          const parts: string[] = []
          const es = new EventSource(src)
          es.addEventListener("data", (e) => parts.push((e as MessageEvent).data))
          es.addEventListener("control", (e) => {
            if (JSON.parse((e as MessageEvent).data).streamClosed) {
              es.close()
              resolve(parts.join("\n"))
            }
          })
          setTimeout(() => reject(new Error(`no end; got ${parts.join("|")}`)), 15_000)
        }),
      `${url}&offset=-1&live=sse`
    )
    let at = 0
    for (let i = 0; i < n; i++) {
      const next = got.indexOf(`tok${i}`, at)
      expect(next, `tok${i} in order`).toBeGreaterThanOrEqual(at)
      at = next
    }
    await page.close()
  })
})
