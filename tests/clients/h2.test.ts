// HTTPS with HTTP/2 in headless Chromium: one page keeps 20 live
// EventSource streams to one origin open (over HTTP/1.1 a browser opens at
// most 6 connections per origin, so 14 would stall), and each receives its
// appends. The test starts its own server (`DS_BIN`, set by
// scripts/clients.sh) with a throwaway self-signed certificate made by
// `openssl`; Chromium trusts it through --ignore-certificate-errors-spki-list.
import { execFileSync, spawn, type ChildProcess } from "node:child_process"
import { mkdtemp, rm } from "node:fs/promises"
import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createInterface } from "node:readline"
import { chromium, type BrowserContext } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium"
const STREAMS = 20

let dir: string
let server: ChildProcess | undefined
let httpsOrigin: string
let pageServer: Server
let pageOrigin: string
let context: BrowserContext

/** The base64 SHA-256 of a certificate's SubjectPublicKeyInfo. */
function spkiHash(certPath: string): string {
  const pub = execFileSync("openssl", ["x509", "-in", certPath, "-pubkey", "-noout"])
  const der = execFileSync("openssl", ["pkey", "-pubin", "-outform", "der"], { input: pub })
  const digest = execFileSync("openssl", ["dgst", "-sha256", "-binary"], { input: der })
  return digest.toString("base64")
}

beforeAll(async () => {
  const bin = process.env.DS_BIN
  if (!bin) throw new Error("DS_BIN is not set: run through scripts/clients.sh")
  dir = await mkdtemp(join(tmpdir(), "ds-h2-"))
  const cert = join(dir, "cert.pem")
  const key = join(dir, "key.pem")
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    "-days", "2", "-keyout", key, "-out", cert,
  ], { stdio: "ignore" })

  server = spawn(bin, [
    "serve", "--bind", "127.0.0.1:0", "--storage", "memory", "--log-level", "warn",
    "--tls-cert", cert, "--tls-key", key,
  ], { stdio: ["ignore", "pipe", "inherit"] })
  const lines = createInterface({ input: server.stdout! })
  httpsOrigin = await new Promise<string>((resolve, reject) => {
    lines.once("line", (line) => {
      const m = line.match(/listening on (https:\/\/\S+)/)
      m ? resolve(m[1].replace(/\/+$/, "")) : reject(new Error(`unexpected first line: ${line}`))
    })
    server!.once("exit", (code) => reject(new Error(`server exited (${code})`)))
  })

  // A blank page on another origin: its EventSources are cross-origin.
  pageServer = createServer((_req, res) => {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" })
    res.end("<!doctype html><title>h2</title>")
  })
  await new Promise<void>((resolve) => pageServer.listen(0, "127.0.0.1", resolve))
  pageOrigin = `http://127.0.0.1:${(pageServer.address() as AddressInfo).port}`

  context = await chromium.launchPersistentContext(join(dir, "profile"), {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      `--ignore-certificate-errors-spki-list=${spkiHash(cert)}`,
    ],
  })
})

afterAll(async () => {
  await context?.close()
  await new Promise<void>((resolve) => (pageServer ? pageServer.close(() => resolve()) : resolve()))
  server?.kill("SIGTERM")
  if (dir) await rm(dir, { recursive: true, force: true })
})

describe("HTTPS + HTTP/2 in headless Chromium", () => {
  it(`keeps ${STREAMS} EventSource streams to one origin live, each receiving its appends`, async () => {
    const page = await context.newPage()
    const pageErrors: string[] = []
    page.on("pageerror", (e) => pageErrors.push(String(e)))
    // The protocol of every response from the stream server, as Chromium
    // saw it (a cross-origin resource timing entry hides it).
    const protocols: string[] = []
    const cdp = await context.newCDPSession(page)
    await cdp.send("Network.enable")
    cdp.on("Network.responseReceived", (e) => {
      if (e.response.url.startsWith(httpsOrigin)) protocols.push(e.response.protocol ?? "")
    })
    await page.goto(`${pageOrigin}/`)
    const base = `${httpsOrigin}/v1/stream/h2-${Date.now()}`

    // Create the streams and open one EventSource per stream, all from
    // the page (the browser trusts the certificate; node would not).
    await page.evaluate(
      async ({ base, n }) => {
        const w = window as unknown as { seen: string[][]; opened: number }
        w.seen = []
        w.opened = 0
        for (let i = 0; i < n; i++) {
          const res = await fetch(`${base}/s${i}`, {
            method: "PUT",
            headers: { "content-type": "text/plain" },
          })
          if (res.status !== 201) throw new Error(`PUT s${i}: ${res.status}`)
        }
        for (let i = 0; i < n; i++) {
          w.seen[i] = []
          const es = new EventSource(`${base}/s${i}?offset=-1&live=sse`)
          es.addEventListener("open", () => (w.opened += 1))
          es.addEventListener("data", (e) => w.seen[i].push((e as MessageEvent).data))
        }
      },
      { base, n: STREAMS }
    )
    await page.waitForFunction((n) => (window as unknown as { opened: number }).opened === n, STREAMS, {
      timeout: 15_000,
    })

    // Append to every stream while all 20 are open.
    await page.evaluate(
      async ({ base, n }) => {
        for (let i = 0; i < n; i++) {
          const res = await fetch(`${base}/s${i}`, {
            method: "POST",
            headers: { "content-type": "text/plain" },
            body: `message-${i}`,
          })
          if (res.status !== 204) throw new Error(`POST s${i}: ${res.status}`)
        }
      },
      { base, n: STREAMS }
    )
    await page.waitForFunction(
      (n) => {
        const seen = (window as unknown as { seen: string[][] }).seen
        return seen.length === n && seen.every((s, i) => s.join("").includes(`message-${i}`))
      },
      STREAMS,
      { timeout: 15_000 }
    )
    const seen = await page.evaluate(() => (window as unknown as { seen: string[][] }).seen)
    seen.forEach((s, i) => expect(s.join("")).toBe(`message-${i}`))
    // Every answer (20 PUTs, 20 SSE streams, 20 POSTs) came over HTTP/2.
    expect(protocols.length).toBeGreaterThanOrEqual(3 * STREAMS)
    expect(new Set(protocols)).toEqual(new Set(["h2"]))
    expect(pageErrors).toEqual([])
    await page.close()
  })
})
