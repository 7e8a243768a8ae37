import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: [`conformance.test.ts`],
    // Some tests wait for TTL/expiry or long-poll timeouts.
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // One server, one suite file: no need for parallel workers.
    fileParallelism: false,
    passWithNoTests: false,
  },
})
