import { defineConfig } from "vite";

// No React plugin: esbuild compiles TSX on its own, and fast refresh is a development nicety that would
// bring Babel in. `npm run dev` forwards the API to a running `agentserver up` (port 8080 by default).
const api = process.env.AGENTSERVER_URL ?? "http://127.0.0.1:8080";

export default defineConfig({
  esbuild: { jsx: "automatic" },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsDir: "assets",
    rollupOptions: {
      // react-router marks its modules "use client" for server components; meaningless in a static bundle.
      onwarn(warning, warn) {
        if (warning.code !== "MODULE_LEVEL_DIRECTIVE") warn(warning);
      },
    },
  },
  server: { proxy: { "/api": api, "/config.json": api } },
});
