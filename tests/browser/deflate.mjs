// A real browser on /ws: Debian's Chromium, driven by playwright-core, opens
// the page the Rust test serves, which connects with the subprotocol token
// transport and (where the server agrees) permessage-deflate.
//
// usage: node deflate.mjs PAGE_URL WS_URL TOKEN
// Prints one JSON line per event for the Rust test (crates/server/tests/it/browser.rs):
//   {"event":"subscribed","extensions":…,"protocol":…}
//   {"event":"message","data":…}     a publication the test made
//   {"event":"pong","id":"big"}      the reply to a 4 KiB command
//   {"event":"error",…}              anything unexpected; exit code 1
import { chromium } from 'playwright-core';

const [pageUrl, wsUrl, token] = process.argv.slice(2);
if (!token) {
  console.error('usage: node deflate.mjs PAGE_URL WS_URL TOKEN');
  process.exit(2);
}
const out = (obj) => console.log(JSON.stringify(obj));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
let failed = false;
try {
  const page = await browser.newPage();
  const done = new Promise((resolve) => page.exposeFunction('finish', resolve));
  await page.exposeFunction('report', (obj) => {
    if (obj.event === 'error') failed = true;
    out(obj);
  });
  await page.goto(pageUrl);
  await page.evaluate(([url, token]) => {
    const ws = new WebSocket(url, ['wsgate.v1.json', 'bearer.' + token]);
    const timer = setTimeout(() => {
      window.report({ event: 'error', reason: 'timeout' });
      window.finish();
    }, 20000);
    const stop = () => { clearTimeout(timer); ws.close(1000); window.finish(); };
    let gotMessage = false;
    let gotPong = false;
    ws.onerror = () => { window.report({ event: 'error', reason: 'socket error' }); stop(); };
    ws.onclose = (e) => {
      if (!(gotMessage && gotPong)) {
        window.report({ event: 'error', reason: 'closed', code: e.code });
        stop();
      }
    };
    ws.onmessage = (e) => {
      const frame = JSON.parse(e.data);
      switch (frame.type) {
        case 'connected':
          ws.send(JSON.stringify({ type: 'subscribe', id: 's', payload: { channel: 'browser' } }));
          break;
        case 'subscribed':
          window.report({ event: 'subscribed', extensions: ws.extensions, protocol: ws.protocol });
          // 4 KiB of text: the browser compresses it when deflate is agreed.
          ws.send(JSON.stringify({ type: 'ping', id: 'big', payload: { pad: 'word '.repeat(800) } }));
          break;
        case 'pong':
          gotPong = true;
          window.report({ event: 'pong', id: frame.id });
          break;
        case 'message':
          gotMessage = true;
          window.report({ event: 'message', data: frame.payload.data });
          break;
        case 'error':
          window.report({ event: 'error', reason: frame.payload });
          stop();
          return;
      }
      if (gotMessage && gotPong) stop();
    };
  }, [wsUrl, token]);
  await done;
} catch (e) {
  failed = true;
  out({ event: 'error', reason: String(e) });
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
