// Bundles the dashboard into crates/server/assets/dashboard/ (served by the
// binary at /dashboard): exactly index.html, app.js and app.css.
// Minified, no sourcemap, deterministic: the same sources give the same
// bytes (CI rebuilds and diffs). `node build.mjs --check` builds in memory
// and exits 1 when the committed files differ.
import * as esbuild from 'esbuild';
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const outDir = join(here, '..', '..', 'crates', 'server', 'assets', 'dashboard');
const check = process.argv.includes('--check');

const js = await esbuild.build({
  absWorkingDir: here,
  entryPoints: ['src/main.ts'],
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: ['chrome111', 'firefox115', 'safari16.4'],
  minify: true,
  sourcemap: false,
  legalComments: 'eof',
  charset: 'utf8',
  treeShaking: true,
  write: false,
  logLevel: 'warning',
  outfile: 'app.js',
});
if (js.outputFiles.length !== 1) throw new Error(`expected one output file, got ${js.outputFiles.length}`);

const cssSource =
  (await readFile(join(here, 'node_modules', 'uplot', 'dist', 'uPlot.min.css'), 'utf8')) +
  '\n' +
  (await readFile(join(here, 'style.css'), 'utf8'));
const css = await esbuild.transform(cssSource, {
  loader: 'css',
  minify: true,
  legalComments: 'none',
  charset: 'utf8',
  target: ['chrome111', 'firefox115', 'safari16.4'],
});

const html = await readFile(join(here, 'index.html'), 'utf8');
// The page must work under the server's CSP (no inline script or style).
if (/<script(?![^>]*\bsrc=)[^>]*>/i.test(html) || /<style/i.test(html) || /\sstyle=/i.test(html)) {
  throw new Error('index.html: inline <script>, <style> or style="" would be blocked by the CSP');
}

const files = new Map([
  ['index.html', Buffer.from(html, 'utf8')],
  ['app.js', Buffer.from(js.outputFiles[0].contents)],
  ['app.css', Buffer.from(css.code, 'utf8')],
]);

if (check) {
  let stale = false;
  const present = await readdir(outDir).catch(() => []);
  for (const name of present) {
    if (!files.has(name)) {
      console.error(`dashboard: unexpected file ${name} in ${outDir}`);
      stale = true;
    }
  }
  for (const [name, bytes] of files) {
    const old = await readFile(join(outDir, name)).catch(() => null);
    if (!old || !old.equals(bytes)) {
      console.error(`dashboard: ${name} is not the build of the sources (run npm run build in clients/dashboard)`);
      stale = true;
    }
  }
  if (stale) process.exit(1);
  console.log('dashboard: the committed bundle matches the sources');
} else {
  await mkdir(outDir, { recursive: true });
  for (const name of await readdir(outDir)) {
    if (!files.has(name)) await rm(join(outDir, name), { recursive: true, force: true });
  }
  for (const [name, bytes] of files) await writeFile(join(outDir, name), bytes);
  for (const [name, bytes] of files) console.log(`${name.padEnd(10)} ${String(bytes.length).padStart(7)} bytes`);
}
