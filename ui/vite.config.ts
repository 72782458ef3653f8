import { defineConfig } from "vite";

// The build is embedded in the hoistway binary (crates/hoistway-ui); `npm run dev` serves the
// sources with the API (and its OpenAPI document) proxied to a local `hoistway serve` on port 8080.
export default defineConfig({
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: {
    target: "es2022",
    sourcemap: false,
    chunkSizeWarningLimit: 300,
  },
  server: {
    proxy: { "/v1": "http://127.0.0.1:8080", "/oauth": "http://127.0.0.1:8080", "/openapi.json": "http://127.0.0.1:8080" },
  },
});
