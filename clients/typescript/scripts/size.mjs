// size.mjs — bundle src/index.ts the way an application would (esbuild,
// minified, ESM) and print the bytes shipped: minified and gzipped (zlib
// level 9).
import { build } from 'esbuild';
import { gzipSync } from 'node:zlib';

const out = await build({
  entryPoints: [new URL('../src/index.ts', import.meta.url).pathname],
  bundle: true,
  minify: true,
  format: 'esm',
  target: 'es2020',
  write: false,
});
const code = out.outputFiles[0].contents;
const gz = gzipSync(code, { level: 9 });
console.log(`minified: ${code.length} bytes`);
console.log(`gzipped:  ${gz.length} bytes`);
