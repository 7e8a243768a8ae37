// End-to-end tests of the server with the official TypeScript client
// (@durable-streams/client), against the real release binary started by
// scripts/clients.sh (URL in DS_BASE_URL).
//
// Every test uses its own stream and asserts exact bytes / messages, offsets
// and the protocol mode the client really used (via RecordingFetch).
import { afterEach, describe, expect, it, vi } from "vitest"
import {
  DurableStream,
  FetchError,
  IdempotentProducer,
  StaleEpochError,
  stream,
  type ByteChunk,
  type JsonBatch,
  type TextChunk,
} from "@durable-streams/client"
import {
  RecordingFetch,
  freshStreamUrl,
  longPollTimeoutMs,
  sleep,
  waitFor,
} from "./helpers"

const OFFSET_RE = /^[0-9a-f]{16}_[0-9a-f]{16}$/

/** Resolves with `p`, or rejects after `ms` (so a hung session fails the test with a clear message). */
function within<T>(what: string, p: Promise<T>, ms = 10_000): Promise<T> {
  return Promise.race([
    p,
    new Promise<T>((_, reject) =>
      setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms)
    ),
  ])
}

async function headOffset(handle: DurableStream): Promise<string> {
  const head = await handle.head()
  expect(head.exists).toBe(true)
  if (!head.exists) throw new Error("unreachable")
  expect(head.offset).toMatch(OFFSET_RE)
  return head.offset!
}

/** The server's application/problem+json error body. */
function problem(err: FetchError): { status: number; code: string } {
  expect(err.headers["content-type"]).toMatch(/^application\/problem\+json/)
  return JSON.parse(err.text ?? "{}")
}

async function catchUpJson<T = unknown>(url: string): Promise<T[]> {
  const res = await stream<T>({ url, live: false })
  return res.json()
}

describe("create, append and catch-up read", () => {
  it("round-trips a text stream byte for byte and resumes from an offset", async () => {
    const url = freshStreamUrl("text")
    const handle = await DurableStream.create({ url, contentType: "text/plain" })

    const start = await headOffset(handle)
    expect(start).toBe("0000000000000000_0000000000000000")

    await handle.append("hello ")
    const mid = await headOffset(handle)
    await handle.append("wörld\n")
    const tail = await headOffset(handle)
    expect(mid > start).toBe(true)
    expect(tail > mid).toBe(true)

    const all = await stream({ url, live: false })
    expect(all.contentType).toMatch(/^text\/plain/)
    expect(await all.text()).toBe("hello wörld\n")
    expect(all.offset).toBe(tail)
    expect(all.upToDate).toBe(true)
    expect(all.streamClosed).toBe(false)

    // Resume from the offset after the first append: only the second one.
    const rest = await stream({ url, offset: mid, live: false })
    expect(await rest.text()).toBe("wörld\n")
    expect(rest.offset).toBe(tail)

    // Reading from the tail yields nothing and stays at the tail.
    const empty = await stream({ url, offset: tail, live: false })
    expect(await empty.text()).toBe("")
    expect(empty.offset).toBe(tail)
  })

  it("round-trips arbitrary bytes on a binary stream", async () => {
    const url = freshStreamUrl("bytes")
    const handle = await DurableStream.create({
      url,
      contentType: "application/octet-stream",
    })
    const payload = new Uint8Array(256 + 3)
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) & 0xff
    await handle.append(payload.subarray(0, 100))
    await handle.append(payload.subarray(100))

    const res = await stream({ url, live: false })
    expect(Buffer.from(await res.body())).toEqual(Buffer.from(payload))
  })

  it("create is idempotent for the same config and refuses a different one", async () => {
    const url = freshStreamUrl("create")
    await DurableStream.create({ url, contentType: "application/json" })
    // Same config again: fine.
    await DurableStream.create({ url, contentType: "application/json" })
    // Different content type: 409 from the server, surfaced as an error.
    const err = await DurableStream.create({ url, contentType: "text/plain" }).then(
      () => undefined,
      (e: unknown) => e
    )
    // The client's fetch wrapper turns every 4xx into a FetchError before its
    // own 409 mapping runs; the problem+json body says what went wrong.
    expect(err).toBeInstanceOf(FetchError)
    expect((err as FetchError).status).toBe(409)
    expect(problem(err as FetchError).code).toBe("CONFIG_MISMATCH")

    const connected = await DurableStream.connect({ url })
    expect(connected.contentType).toMatch(/^application\/json/)
  })

  it("keeps JSON message boundaries, including batched appends", async () => {
    const url = freshStreamUrl("json")
    const handle = await DurableStream.create({ url, contentType: "application/json" })

    await handle.append(JSON.stringify({ n: 1, text: "one" }))
    // Overlapping appends are batched by the client into one POST of a JSON array.
    await Promise.all([
      handle.append(JSON.stringify({ n: 2 })),
      handle.append(JSON.stringify([2.5, "array is one message"])),
      handle.append(JSON.stringify("three")),
      handle.append(JSON.stringify(null)),
    ])

    expect(await catchUpJson(url)).toEqual([
      { n: 1, text: "one" },
      { n: 2 },
      [2.5, "array is one message"],
      "three",
      null,
    ])
  })
})

describe("IdempotentProducer", () => {
  it("a retried request (lost response) is acknowledged but stored once", async () => {
    const url = freshStreamUrl("producer-retry")
    const handle = await DurableStream.create({ url, contentType: "application/json" })

    // Simulate a network that loses every producer response: each producer
    // POST is sent, its response thrown away, and the identical request sent
    // again (what a retrying client/proxy does). The producer only ever sees
    // the answer to the retry.
    const pairs: Array<{
      seq: string
      closing: boolean
      first: number
      retry: number
      retryHeaders: Headers
    }> = []
    const replayingFetch: typeof fetch = async (input, init) => {
      const headers = new Headers(init?.headers)
      const seq = headers.get("producer-seq")
      if (init?.method !== "POST" || seq === null) return fetch(input, init)
      const first = await fetch(input, init)
      await first.arrayBuffer()
      const retry = await fetch(input, init)
      pairs.push({
        seq,
        closing: headers.get("stream-closed") === "true",
        first: first.status,
        retry: retry.status,
        retryHeaders: retry.headers,
      })
      return retry
    }

    const errors: Error[] = []
    const producer = new IdempotentProducer(handle, "retrying-writer", {
      fetch: replayingFetch,
      maxInFlight: 1,
      onError: (e) => errors.push(e),
    })

    producer.append(JSON.stringify({ i: 0 }))
    producer.append(JSON.stringify({ i: 1 }))
    producer.append(JSON.stringify({ i: 2 }))
    await producer.flush()
    producer.append(JSON.stringify({ i: 3 }))
    producer.append(JSON.stringify({ i: 4 }))
    await producer.flush()
    expect(errors).toEqual([])
    expect(producer.nextSeq).toBe(2)

    // Each batch: the original is stored (200), the retry is a duplicate
    // (204) echoing the seq it duplicates.
    expect(pairs.map(({ seq, closing, first, retry }) => ({ seq, closing, first, retry }))).toEqual([
      { seq: "0", closing: false, first: 200, retry: 204 },
      { seq: "1", closing: false, first: 200, retry: 204 },
    ])
    expect(pairs[0]!.retryHeaders.get("producer-seq")).toBe("0")
    expect(pairs[1]!.retryHeaders.get("producer-seq")).toBe("1")

    expect(await catchUpJson(url)).toEqual([{ i: 0 }, { i: 1 }, { i: 2 }, { i: 3 }, { i: 4 }])

    // The close goes through the same lossy network: the retried close is
    // answered as a duplicate of the closing request, not as an error.
    const tailBeforeClose = await headOffset(handle)
    const { finalOffset } = await producer.close()
    expect(finalOffset).toBe(tailBeforeClose)
    expect(pairs[2]).toMatchObject({ seq: "2", closing: true, retry: 204 })
    expect(pairs[2]!.retryHeaders.get("stream-closed")).toBe("true")
    // close() is idempotent on the producer as well.
    expect(await producer.close()).toEqual({ finalOffset })

    const head = await handle.head()
    expect(head).toMatchObject({ exists: true, streamClosed: true, offset: finalOffset })
    expect(await catchUpJson(url)).toEqual([{ i: 0 }, { i: 1 }, { i: 2 }, { i: 3 }, { i: 4 }])
  })

  it("close with a final message survives a retried close: stored once, then EOF", async () => {
    const url = freshStreamUrl("producer-close-retry")
    const handle = await DurableStream.create({ url, contentType: "application/json" })
    const seen: Array<{ seq: string | null; first: number; retry: number; closed: string | null }> = []
    const producer = new IdempotentProducer(handle, "closer", {
      maxInFlight: 1,
      // Every producer request is sent twice; the first answer is lost.
      fetch: async (input, init) => {
        const first = await fetch(input, init)
        await first.arrayBuffer()
        const retry = await fetch(input, init)
        seen.push({
          seq: new Headers(init?.headers).get("producer-seq"),
          first: first.status,
          retry: retry.status,
          closed: retry.headers.get("stream-closed"),
        })
        return retry
      },
    })
    producer.append(JSON.stringify("body"))
    await producer.flush()
    const { finalOffset } = await producer.close(JSON.stringify({ done: true }))

    expect(seen).toEqual([
      { seq: "0", first: 200, retry: 204, closed: null },
      { seq: "1", first: 200, retry: 204, closed: "true" },
    ])
    const res = await stream({ url, live: false })
    expect(await res.json()).toEqual(["body", { done: true }])
    expect(res.streamClosed).toBe(true)
    expect(res.offset).toBe(finalOffset)
  })

  it("a restarted producer replaying already-acknowledged seqs does not duplicate data", async () => {
    const url = freshStreamUrl("producer-replay")
    const handle = await DurableStream.create({ url, contentType: "text/plain" })

    const first = new IdempotentProducer(handle, "replayer", { maxInFlight: 1 })
    first.append("alpha;")
    await first.flush()
    first.append("beta;")
    await first.flush()
    await first.detach()
    expect(await stream({ url, live: false }).then((r) => r.text())).toBe("alpha;beta;")

    // Same id and epoch, fresh sequence counter: a process that crashed
    // after sending but before persisting its seq, and replays from seq 0.
    const replayErrors: Error[] = []
    const statuses: number[] = []
    const replay = new IdempotentProducer(handle, "replayer", {
      maxInFlight: 1,
      onError: (e) => replayErrors.push(e),
      fetch: async (input, init) => {
        const res = await fetch(input, init)
        statuses.push(res.status)
        return res
      },
    })
    replay.append("alpha;")
    await replay.flush()
    replay.append("beta;")
    await replay.flush()
    // Next seq (2) is new data.
    replay.append("gamma;")
    await replay.flush()
    expect(replayErrors).toEqual([])
    expect(statuses).toEqual([204, 204, 200])
    expect(await stream({ url, live: false }).then((r) => r.text())).toBe("alpha;beta;gamma;")
  })

  it("pipelined fire-and-forget appends arrive exactly once, in order", async () => {
    const url = freshStreamUrl("producer-pipeline")
    const handle = await DurableStream.create({ url, contentType: "application/json" })
    const errors: Error[] = []
    const producer = new IdempotentProducer(handle, "pipeliner", {
      lingerMs: 0,
      maxInFlight: 5,
      onError: (e) => errors.push(e),
    })
    const expected: unknown[] = []
    for (let i = 0; i < 200; i++) {
      const msg = { i, pad: "x".repeat(i % 17) }
      expected.push(msg)
      producer.append(JSON.stringify(msg))
      if (i % 10 === 9) await sleep(1) // let several batches go out concurrently
    }
    await producer.flush()
    expect(errors).toEqual([])
    expect(producer.nextSeq).toBeGreaterThan(1)
    expect(await catchUpJson(url)).toEqual(expected)
  })

  it("fences a stale epoch; autoClaim takes over with a higher epoch", async () => {
    const url = freshStreamUrl("producer-fence")
    const handle = await DurableStream.create({ url, contentType: "application/json" })

    const oldErrors: Error[] = []
    const old = new IdempotentProducer(handle, "owner", {
      epoch: 0,
      onError: (e) => oldErrors.push(e),
    })
    old.append(JSON.stringify("old-1"))
    await old.flush()

    const successor = new IdempotentProducer(handle, "owner", { epoch: 1 })
    successor.append(JSON.stringify("new-1"))
    await successor.flush()

    // The zombie writes again: refused with 403, reported as StaleEpochError.
    old.append(JSON.stringify("zombie"))
    await old.flush().catch(() => {})
    expect(oldErrors).toHaveLength(1)
    expect(oldErrors[0]).toBeInstanceOf(StaleEpochError)
    expect((oldErrors[0] as StaleEpochError).currentEpoch).toBe(1)

    // An auto-claiming producer learns the current epoch from the 403 and
    // claims the next one.
    const claimer = new IdempotentProducer(handle, "owner", { epoch: 0, autoClaim: true })
    claimer.append(JSON.stringify("claimed-1"))
    await claimer.flush()
    expect(claimer.epoch).toBe(2)

    expect(await catchUpJson(url)).toEqual(["old-1", "new-1", "claimed-1"])
  })
})

describe("live reads", () => {
  it("SSE (JSON): receives appends made while reading, then EOF on close", async () => {
    const url = freshStreamUrl("sse-json")
    const handle = await DurableStream.create({ url, contentType: "application/json" })
    await handle.append(JSON.stringify({ seq: 1 }))

    const rec = new RecordingFetch()
    const res = await stream<{ seq: number }>({ url, live: "sse", fetch: rec.fetch })
    const batches: JsonBatch<{ seq: number }>[] = []
    res.subscribeJson((batch) => {
      batches.push(batch)
    })
    const items = () => batches.flatMap((b) => b.items)

    await waitFor("the catch-up batch", () => items().length === 1)
    // Wait until the SSE connection is open before appending.
    await waitFor("an open SSE connection", () => rec.live("sse").some((r) => r.status === 200))

    await handle.append(JSON.stringify({ seq: 2 }))
    await waitFor("message 2 over SSE", () => items().length === 2)
    await Promise.all([
      handle.append(JSON.stringify({ seq: 3 })),
      handle.append(JSON.stringify({ seq: 4 })),
    ])
    await waitFor("messages 3 and 4 over SSE", () => items().length === 4)
    expect(batches.at(-1)!.upToDate).toBe(true)
    expect(batches.at(-1)!.streamClosed).toBe(false)

    const { finalOffset } = await handle.close()
    await within("the streamClosed batch", waitFor("streamClosed", () => batches.some((b) => b.streamClosed)))
    await within("the SSE session ending after EOF", res.closed)

    expect(items()).toEqual([{ seq: 1 }, { seq: 2 }, { seq: 3 }, { seq: 4 }])
    const last = batches.at(-1)!
    expect(last.streamClosed).toBe(true)
    expect(last.offset).toBe(finalOffset)
    expect(res.streamClosed).toBe(true)
    expect(res.offset).toBe(finalOffset)

    // It really was SSE: live requests were live=sse only, never long-poll.
    expect(rec.live("sse").length).toBeGreaterThanOrEqual(1)
    expect(rec.live("long-poll")).toEqual([])
    for (const r of rec.live("sse")) {
      expect(r.responseHeaders?.get("content-type")).toMatch(/^text\/event-stream/)
    }
  })

  it("SSE (text): multi-line text arrives intact", async () => {
    const url = freshStreamUrl("sse-text")
    const handle = await DurableStream.create({ url, contentType: "text/plain; charset=utf-8" })
    await handle.append("line one\nline two\n")

    const rec = new RecordingFetch()
    const res = await stream({ url, live: "sse", fetch: rec.fetch })
    const chunks: TextChunk[] = []
    res.subscribeText((c) => {
      chunks.push(c)
    })
    const text = () => chunks.map((c) => c.text).join("")

    await waitFor("catch-up text", () => text() === "line one\nline two\n")
    await waitFor("an open SSE connection", () => rec.live("sse").some((r) => r.status === 200))
    await handle.append("data: not an event\n\nevent: control\n")
    await handle.append("tail ✓")
    await waitFor("live text", () => text().endsWith("tail ✓"))

    await handle.close()
    await waitFor("the streamClosed chunk", () => chunks.some((c) => c.streamClosed))
    await within("the SSE session ending after EOF", res.closed)
    expect(text()).toBe("line one\nline two\ndata: not an event\n\nevent: control\ntail ✓")
    expect(chunks.at(-1)!.streamClosed).toBe(true)
    expect(rec.live("long-poll")).toEqual([])
  })

  it("SSE (binary): base64-encoded events decode to the exact bytes", async () => {
    const url = freshStreamUrl("sse-binary")
    const handle = await DurableStream.create({ url, contentType: "application/octet-stream" })
    const part1 = new Uint8Array([0, 1, 2, 0xff, 0xfe, 0x0a, 0x0d, 0x3a])
    const part2 = new Uint8Array([0x0d, 0x0a, 0x00, 0x80, 0x7f])
    await handle.append(part1)

    const rec = new RecordingFetch()
    const res = await stream({ url, live: "sse", fetch: rec.fetch })
    const chunks: ByteChunk[] = []
    res.subscribeBytes((c) => {
      chunks.push(c)
    })
    const bytes = () => Buffer.concat(chunks.map((c) => Buffer.from(c.data)))

    await waitFor("catch-up bytes", () => bytes().length === part1.length)
    await waitFor("an open SSE connection", () => rec.live("sse").some((r) => r.status === 200))
    await handle.append(part2)
    await waitFor("live bytes", () => bytes().length === part1.length + part2.length)
    await handle.close()
    await waitFor("the streamClosed chunk", () => chunks.some((c) => c.streamClosed))
    await within("the SSE session ending after EOF", res.closed)

    expect(bytes()).toEqual(Buffer.concat([part1, part2]))
    const sse = rec.live("sse").find((r) => r.status === 200)!
    expect(sse.responseHeaders?.get("stream-sse-data-encoding")).toBe("base64")
  })

  it("long-poll: survives an empty poll, receives appends made while waiting, then EOF", async () => {
    const url = freshStreamUrl("long-poll")
    const handle = await DurableStream.create({ url, contentType: "text/plain" })
    await handle.append("first;")

    const rec = new RecordingFetch()
    const res = await stream({ url, live: "long-poll", fetch: rec.fetch })
    const chunks: TextChunk[] = []
    res.subscribeText((c) => {
      chunks.push(c)
    })
    const text = () => chunks.map((c) => c.text).join("")
    await waitFor("catch-up text", () => text() === "first;")

    // Let at least one long-poll time out with 204 (no data), then append
    // while the next one is waiting.
    await waitFor(
      "a long-poll that timed out with 204",
      () => rec.live("long-poll").some((r) => r.status === 204),
      longPollTimeoutMs() * 3 + 5_000
    )
    await waitFor("a waiting long-poll", () =>
      rec.live("long-poll").some((r) => r.status === undefined)
    )
    const waiting = rec.live("long-poll").find((r) => r.status === undefined)!
    await handle.append("second;")
    await waitFor("the appended text", () => text() === "first;second;")
    // The append answered the request that was already waiting.
    expect(waiting.status).toBe(200)

    await waitFor("another waiting long-poll", () =>
      rec.live("long-poll").some((r) => r.status === undefined)
    )
    await handle.append("third")
    await waitFor("the appended text", () => text() === "first;second;third")

    const { finalOffset } = await handle.close()
    await waitFor("the streamClosed chunk", () => chunks.some((c) => c.streamClosed))
    await within("the long-poll session ending after EOF", res.closed)
    expect(text()).toBe("first;second;third")
    expect(chunks.at(-1)!.streamClosed).toBe(true)
    expect(res.streamClosed).toBe(true)
    expect(res.offset).toBe(finalOffset)
    expect(rec.live("sse")).toEqual([])
    // Each long-poll carried the offset the previous answer gave.
    for (const r of rec.live("long-poll")) {
      expect(r.url.searchParams.get("offset")).toMatch(OFFSET_RE)
    }
  })
})

describe("close and EOF", () => {
  it("after close: appends fail with the final offset, readers see EOF at once", async () => {
    const url = freshStreamUrl("eof")
    const handle = await DurableStream.create({ url, contentType: "application/json" })
    await handle.append(JSON.stringify("only"))
    const tail = await headOffset(handle)

    const { finalOffset } = await handle.close({ body: JSON.stringify("last") })
    expect(finalOffset).toMatch(OFFSET_RE)
    expect(finalOffset > tail).toBe(true)
    // A plain close is idempotent and reports the same final offset.
    expect(await handle.close()).toEqual({ finalOffset })

    const err = await handle.append(JSON.stringify("too late")).then(
      () => undefined,
      (e: unknown) => e
    )
    // 409 with Stream-Closed and the final offset. (Client 0.2.7 surfaces it
    // as a FetchError rather than StreamClosedError: its backoff wrapper
    // throws on any 4xx before the StreamClosedError mapping is reached.)
    expect(err).toBeInstanceOf(FetchError)
    const closedErr = err as FetchError
    expect(closedErr.status).toBe(409)
    expect(closedErr.headers["stream-closed"]).toBe("true")
    expect(closedErr.headers["stream-next-offset"]).toBe(finalOffset)
    expect(problem(closedErr).code).toBe("STREAM_CLOSED")
    // The data is unchanged.
    expect(await catchUpJson(url)).toEqual(["only", "last"])

    expect(await handle.head()).toMatchObject({ exists: true, streamClosed: true, offset: finalOffset })

    // Catch-up reader: all data, then EOF.
    const catchUp = await stream({ url, live: false })
    expect(await catchUp.json()).toEqual(["only", "last"])
    expect(catchUp.streamClosed).toBe(true)
    expect(catchUp.offset).toBe(finalOffset)

    // Live readers starting at the tail of a closed stream end immediately
    // (no waiting for the long-poll timeout, no SSE keep-alive).
    for (const live of ["long-poll", "sse"] as const) {
      const started = Date.now()
      const res = await stream({ url, offset: finalOffset, live })
      const seen: JsonBatch[] = []
      res.subscribeJson((b) => {
        seen.push(b)
      })
      // (Client 0.2.7 may resolve `closed` just before it delivers the
      // final batch to the subscriber, so wait for both.)
      await waitFor(`the ${live} streamClosed batch`, () => seen.some((b) => b.streamClosed), 5_000)
      await within(`a ${live} reader at the tail ending`, res.closed, 5_000)
      expect(Date.now() - started).toBeLessThan(longPollTimeoutMs())
      expect(seen.flatMap((b) => b.items)).toEqual([])
      expect(res.streamClosed).toBe(true)
    }

    // A live reader from the start gets everything, then EOF.
    const fromStart = await stream({ url, live: "sse" })
    const batches: JsonBatch[] = []
    fromStart.subscribeJson((b) => {
      batches.push(b)
    })
    await waitFor("the streamClosed batch", () => batches.some((b) => b.streamClosed), 5_000)
    await within("an SSE reader from the start ending", fromStart.closed, 5_000)
    expect(batches.flatMap((b) => b.items)).toEqual(["only", "last"])
    expect(batches.at(-1)!.offset).toBe(finalOffset)
  })
})

describe("README example", () => {
  afterEach(() => {
    vi.restoreAllMocks()
  })

  // Keep in sync with "Browser and TypeScript clients" in README.md (only
  // the URL differs).
  it("runs as documented", async () => {
    const logged: string[] = []
    vi.spyOn(console, "log").mockImplementation((...args: unknown[]) => {
      logged.push(args.map(String).join(" "))
    })
    const errors = vi.spyOn(console, "error")

    const url = freshStreamUrl("readme")
    // --- README snippet ---
    const handle = await DurableStream.create({ url, contentType: "application/json" })

    // Exactly-once writes: retries are deduplicated by (producer id, epoch, seq).
    const producer = new IdempotentProducer(handle, "writer-1", { onError: console.error })
    producer.append(JSON.stringify({ text: "hello" }))
    await producer.flush()

    // Catch up, then follow live over SSE (or live: "long-poll") until the stream closes.
    const res = await stream<{ text: string }>({ url, live: "sse" })
    res.subscribeJson((batch) => {
      for (const message of batch.items) console.log(message.text)
      if (batch.streamClosed) console.log("EOF")
    })

    await producer.close() // closes the stream: readers see streamClosed
    // --- end of snippet ---

    await waitFor("EOF to be logged", () => logged.includes("EOF"))
    await within("the session ending", res.closed)
    expect(logged).toEqual(["hello", "EOF"])
    expect(errors).not.toHaveBeenCalled()
  })
})
