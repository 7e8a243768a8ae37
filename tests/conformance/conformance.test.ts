// Runs the upstream Durable Streams server conformance suite
// (@durable-streams/server-conformance-tests) against a running server.
//
// The server is started by scripts/conformance.sh, which passes its URL in.
// Environment:
//   DS_BASE_URL              base URL of the server, no trailing slash (required)
//   DS_LONG_POLL_TIMEOUT_MS  the server's long-poll timeout in ms (default 500)
//   DS_SUBSCRIPTIONS         "1" to enable the reserved subscription API tests
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

const rawBaseUrl = process.env.DS_BASE_URL
if (!rawBaseUrl) {
  throw new Error(
    `DS_BASE_URL is required (e.g. http://127.0.0.1:4437); ` +
      `use scripts/conformance.sh to start a server and run this suite`
  )
}
const baseUrl = rawBaseUrl.replace(/\/+$/, ``)

const rawTimeout = process.env.DS_LONG_POLL_TIMEOUT_MS
const longPollTimeoutMs =
  rawTimeout === undefined || rawTimeout === `` ? 500 : Number(rawTimeout)
if (!Number.isFinite(longPollTimeoutMs) || longPollTimeoutMs <= 0) {
  throw new Error(`DS_LONG_POLL_TIMEOUT_MS must be a positive number, got ${rawTimeout}`)
}

const subscriptions = process.env.DS_SUBSCRIPTIONS === `1`

runConformanceTests({ baseUrl, longPollTimeoutMs, subscriptions })
