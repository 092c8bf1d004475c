// tokencheck.test.mjs — where the HTTP token check asks (no server): TLS is
// never dropped, the path prefix before /ws is kept, relative URLs resolve
// against the page, anything else gets no check.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { tokenCheckUrl, httpUrl } from '../dist/tokencheck.js';

test('tokenCheckUrl: wss/https → https, ws/http → http, same host and port', () => {
  assert.equal(tokenCheckUrl('wss://gw.example/ws'), 'https://gw.example/api/threads?limit=1');
  assert.equal(tokenCheckUrl('https://gw.example/ws'), 'https://gw.example/api/threads?limit=1');
  assert.equal(tokenCheckUrl('ws://127.0.0.1:8080/ws'), 'http://127.0.0.1:8080/api/threads?limit=1');
  assert.equal(tokenCheckUrl('http://127.0.0.1:8080/ws'), 'http://127.0.0.1:8080/api/threads?limit=1');
  assert.equal(tokenCheckUrl('WSS://GW.example:8443/ws'), 'https://gw.example:8443/api/threads?limit=1');
});

test('tokenCheckUrl: the path prefix is kept, only a trailing /ws replaced; query, fragment, user info dropped', () => {
  assert.equal(tokenCheckUrl('wss://h:8443/gw/ws'), 'https://h:8443/gw/api/threads?limit=1');
  assert.equal(tokenCheckUrl('wss://h/a/ws/b/ws/'), 'https://h/a/ws/b/api/threads?limit=1');
  assert.equal(tokenCheckUrl('ws://user:pw@h/ws?x=1#y'), 'http://h/api/threads?limit=1');
});

test('tokenCheckUrl: relative URLs resolve against the base (the page)', () => {
  assert.equal(tokenCheckUrl('/ws', 'https://app.example/dashboard/'), 'https://app.example/api/threads?limit=1');
  assert.equal(tokenCheckUrl('gw/ws', 'https://app.example/x/page'), 'https://app.example/x/gw/api/threads?limit=1');
  assert.equal(tokenCheckUrl('/ws', 'http://localhost:8080/'), 'http://localhost:8080/api/threads?limit=1');
  assert.equal(tokenCheckUrl('wss://other.example/ws', 'http://app.example/'), 'https://other.example/api/threads?limit=1');
  assert.equal(tokenCheckUrl('/ws'), undefined, 'relative without a base: no check');
});

test('tokenCheckUrl: no check for other schemes or a path that does not end in /ws', () => {
  for (const u of ['ftp://h/ws', 'ws+unix:/tmp/s.sock:/ws', 'file:///ws', 'wss://h/socket', 'wss://h/wsx', 'wss://h/', 'wss://h', 'not a url'])
    assert.equal(tokenCheckUrl(u), undefined, u);
});

test('httpUrl (the tokenCheckUrl option): http(s) only, resolved against the base', () => {
  assert.equal(httpUrl('https://h/check'), 'https://h/check');
  assert.equal(httpUrl('/gw/api/threads?limit=1', 'https://app.example/x'), 'https://app.example/gw/api/threads?limit=1');
  assert.equal(httpUrl('/relative'), undefined);
  assert.equal(httpUrl('ws://h/x'), undefined);
  assert.equal(httpUrl('javascript:alert(1)'), undefined);
});
