import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Retries would hide flakiness; every failure must be real.
    retry: 0,
  },
})
