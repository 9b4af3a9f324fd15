import react from '@vitejs/plugin-react';
import { defineConfig } from 'vite';
import { thirdPartyLicenses } from './licenses.js';

const licenses = thirdPartyLicenses();

export default defineConfig({
  // emporium serves the page at /graphql and the files of dist/ under /graphiql/.
  base: '/graphiql/',
  plugins: [react(), licenses.write],
  worker: {
    plugins: () => [licenses.collect],
  },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    sourcemap: false,
    // Every current browser has module preload: no polyfill in the bundle.
    modulePreload: { polyfill: false },
    // Monaco is big and loads at once anyway.
    chunkSizeWarningLimit: 6000,
  },
  // `npm run dev` serves the page at http://localhost:5173/graphiql/ against a node on :8000.
  server: {
    proxy: { '/graphql': { target: 'http://127.0.0.1:8000', ws: true } },
  },
  optimizeDeps: {
    exclude: ['graphiql/setup-workers/vite', '@graphiql/react/setup-workers/vite'],
  },
});
