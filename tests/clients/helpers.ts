// Shared helpers for the real-client end-to-end tests.
import { randomUUID } from "node:crypto"

/** Base URL of the running server (set by scripts/clients.sh). */
export function baseUrl(): string {
  const url = process.env.DS_BASE_URL
  if (!url) {
    throw new Error(
      "DS_BASE_URL is not set: run these tests through scripts/clients.sh " +
        "or point DS_BASE_URL at a running durable-streams server"
    )
  }
  return url.replace(/\/+$/, "")
}

/** A fresh stream URL nobody else uses. */
export function freshStreamUrl(label: string): string {
  return `${baseUrl()}/v1/stream/clients/${label}-${randomUUID()}`
}

/** Server long-poll timeout the server was started with (scripts/clients.sh). */
export function longPollTimeoutMs(): number {
  return Number(process.env.DS_LONG_POLL_TIMEOUT_MS ?? "1000")
}

/** Poll `check` until it returns true, or fail after `timeoutMs`. */
export async function waitFor(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 10_000
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    }
    await new Promise((r) => setTimeout(r, 20))
  }
}

export const sleep = (ms: number) =>
  new Promise<void>((r) => setTimeout(r, ms))

/** One request observed by a RecordingFetch. */
export interface Recorded {
  method: string
  url: URL
  headers: Headers
  /** Response status, or undefined while the request is still in flight. */
  status?: number
  responseHeaders?: Headers
}

/**
 * A fetch wrapper that records every request the client makes (method, URL,
 * request headers, response status), so tests can assert which protocol
 * mode the client really used.
 */
export class RecordingFetch {
  readonly requests: Recorded[] = []

  readonly fetch: typeof globalThis.fetch = async (input, init) => {
    const asRequest = input instanceof Request ? input : undefined
    const rec: Recorded = {
      method: (init?.method ?? asRequest?.method ?? "GET").toUpperCase(),
      url: new URL(asRequest?.url ?? String(input)),
      headers: new Headers(init?.headers ?? asRequest?.headers),
    }
    this.requests.push(rec)
    const res = await globalThis.fetch(input, init)
    rec.status = res.status
    rec.responseHeaders = res.headers
    return res
  }

  /** GET requests whose `live` query parameter equals `mode`. */
  live(mode: string | null): Recorded[] {
    return this.requests.filter(
      (r) => r.method === "GET" && r.url.searchParams.get("live") === mode
    )
  }
}
