// Browser end-to-end test: examples/tail.html in headless Chromium (driven by
// playwright-core), served from a different origin than the stream server, so
// the page's EventSource is a real cross-origin request (CORS).
import { mkdtemp, readFile, rm } from "node:fs/promises"
import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { chromium, type BrowserContext, type Page } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { freshStreamUrl } from "./helpers"

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..")
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium"

let pageServer: Server
let pageOrigin: string
let profileDir: string
let context: BrowserContext

beforeAll(async () => {
  // Tiny static server for the example page (and nothing else).
  const html = await readFile(join(ROOT, "examples", "tail.html"))
  pageServer = createServer((req, res) => {
    const path = new URL(req.url ?? "/", "http://x").pathname
    if (path === "/tail.html") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" })
      res.end(html)
    } else if (path === "/favicon.ico") {
      res.writeHead(204).end()
    } else {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found")
    }
  })
  await new Promise<void>((resolve) => pageServer.listen(0, "127.0.0.1", resolve))
  pageOrigin = `http://127.0.0.1:${(pageServer.address() as AddressInfo).port}`

  profileDir = await mkdtemp(join(tmpdir(), "ds-chromium-"))
  context = await chromium.launchPersistentContext(profileDir, {
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
    ],
  })
})

afterAll(async () => {
  await context?.close()
  await new Promise<void>((resolve) => (pageServer ? pageServer.close(() => resolve()) : resolve()))
  if (profileDir) await rm(profileDir, { recursive: true, force: true })
})

async function append(url: string, body: unknown[]): Promise<void> {
  const res = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  })
  expect(res.status).toBe(204)
}

async function messagesIn(page: Page): Promise<string[]> {
  return page.locator("#messages li").allTextContents()
}

describe("examples/tail.html in headless Chromium", () => {
  it("shows appended messages live, in order, and stops at EOF", async () => {
    const streamUrl = freshStreamUrl("browser")
    const streamOrigin = new URL(streamUrl).origin
    expect(streamOrigin).not.toBe(pageOrigin)

    const created = await fetch(streamUrl, {
      method: "PUT",
      headers: { "content-type": "application/json" },
    })
    expect(created.status).toBe(201)
    // Written before the page opens: arrives in the SSE catch-up.
    await append(streamUrl, [{ n: 1, text: "before the page" }, "plain string"])

    const page = await context.newPage()
    const pageErrors: string[] = []
    const consoleErrors: string[] = []
    page.on("pageerror", (e) => pageErrors.push(String(e)))
    page.on("console", (m) => {
      if (m.type() === "error") consoleErrors.push(m.text())
    })
    const streamRequests: string[] = []
    const sseResponses: Array<{ status: number; headers: Record<string, string> }> = []
    page.on("request", (r) => {
      if (r.url().startsWith(streamUrl)) streamRequests.push(r.url())
    })
    page.on("response", async (r) => {
      if (r.url().startsWith(streamUrl)) {
        sseResponses.push({ status: r.status(), headers: await r.allHeaders() })
      }
    })

    try {
      await page.goto(`${pageOrigin}/tail.html?stream=${encodeURIComponent(streamUrl)}`)
      await page.waitForSelector('body[data-state="live"]', { timeout: 10_000 })
      await page.waitForFunction(() => document.querySelectorAll("#messages li").length === 2, null, {
        timeout: 10_000,
      })

      // Appended while the page is tailing.
      await append(streamUrl, [{ n: 2, text: "<b>not markup</b>" }])
      await page.waitForFunction(() => document.querySelectorAll("#messages li").length === 3, null, {
        timeout: 10_000,
      })
      await append(streamUrl, [{ n: 3 }, { n: 4, text: "ünïcødé ✓" }, [5, "array message"]])
      await page.waitForFunction(() => document.querySelectorAll("#messages li").length === 6, null, {
        timeout: 10_000,
      })
      expect(await page.evaluate(() => document.body.dataset.state)).toBe("live")

      const closed = await fetch(streamUrl, { method: "POST", headers: { "stream-closed": "true" } })
      expect(closed.status).toBe(204)
      await page.waitForSelector('body[data-state="closed"]', { timeout: 10_000 })

      expect(await messagesIn(page)).toEqual([
        JSON.stringify({ n: 1, text: "before the page" }),
        "plain string",
        JSON.stringify({ n: 2, text: "<b>not markup</b>" }),
        JSON.stringify({ n: 3 }),
        JSON.stringify({ n: 4, text: "ünïcødé ✓" }),
        JSON.stringify([5, "array message"]),
      ])
      // Text, not markup.
      expect(await page.locator("#messages b").count()).toBe(0)
      expect(await page.locator("#status").textContent()).toBe("closed: 6 messages")

      // One SSE connection, cross-origin, allowed by CORS.
      expect(streamRequests).toHaveLength(1)
      const sseUrl = new URL(streamRequests[0]!)
      expect(sseUrl.searchParams.get("offset")).toBe("-1")
      expect(sseUrl.searchParams.get("live")).toBe("sse")
      expect(sseResponses).toHaveLength(1)
      expect(sseResponses[0]!.status).toBe(200)
      expect(sseResponses[0]!.headers["content-type"]).toMatch(/^text\/event-stream/)
      expect([pageOrigin, "*"]).toContain(sseResponses[0]!.headers["access-control-allow-origin"])

      // After EOF the page stays closed: no reconnect (the page's reconnect
      // delay is 1 s), the list does not change.
      await page.waitForTimeout(1_500)
      expect(streamRequests).toHaveLength(1)
      expect(await page.evaluate(() => document.body.dataset.state)).toBe("closed")
      expect(await messagesIn(page)).toHaveLength(6)

      expect(pageErrors).toEqual([])
      expect(consoleErrors).toEqual([])
    } finally {
      await page.close()
    }
  })
})
