// The app shell: the token prompt, the connection and its status in the
// header bar, the tabs, sign out. Views are made anew for each sign-in.

import { WsgateClient } from '../../typescript/src/index.ts';
import type { ClientState, ConnectedInfo, WsgateError } from '../../typescript/src/index.ts';
import { Chat } from './chat.ts';
import { $, listen } from './dom.ts';
import { secondsLeft } from './format.ts';
import { EventsFeed } from './events.ts';
import { Overview } from './overview.ts';
import { devToken, session, wsUrl } from './session.ts';

type View = 'overview' | 'events' | 'chat';
const VIEWS: readonly View[] = ['overview', 'events', 'chat'];

/** SDK error codes that mean "this token will not do": back to the prompt. */
const TOKEN_ERRORS = new Set(['unauthorized', 'token_expired']);

interface Views {
  overview: Overview;
  events: EventsFeed;
  chat: Chat;
}

export class App {
  private client: WsgateClient | undefined;
  private views: Views | undefined;
  private offs: (() => void)[] = [];
  private retryTimer: number | undefined;
  private everConnected = false;

  private readonly stateEl = $('#conn-state');
  private readonly retryEl = $('#conn-retry');
  private readonly userEl = $('#conn-user');
  private readonly nodeEl = $('#conn-node');
  private readonly tokenInput = $<HTMLInputElement>('#token');
  private readonly loginError = $('#login-error');
  private readonly banner = $('#banner');
  private readonly bannerText = $('#banner-text');
  private readonly viewsEl = $('#views');

  start(): void {
    listen($('#login-form'), 'submit', (ev) => {
      ev.preventDefault();
      const token = this.tokenInput.value.trim();
      if (token) this.connect(token);
    });
    listen(this.tokenInput, 'input', () => {
      $('#dev-note').hidden = true;
    });
    listen($('#signout'), 'click', () => this.signOut());
    listen($('#banner-close'), 'click', () => this.hideBanner());
    for (const tab of Array.from(document.querySelectorAll<HTMLElement>('.tab[data-view]'))) {
      listen(tab, 'click', () => {
        const view = tab.dataset.view as View;
        if (location.hash !== `#${view}`) history.replaceState(null, '', `#${view}`);
        this.showView(view);
      });
    }
    listen(window, 'hashchange', () => this.showView(this.viewFromHash()));
    this.showView(this.viewFromHash());

    const token = session.token();
    if (token) this.connect(token);
    else this.showLogin();
  }

  private viewFromHash(): View {
    const name = location.hash.slice(1);
    return (VIEWS as readonly string[]).includes(name) ? (name as View) : 'overview';
  }

  private showView(view: View): void {
    document.body.dataset.view = view;
    for (const tab of Array.from(document.querySelectorAll<HTMLElement>('.tab[data-view]'))) {
      tab.setAttribute('aria-selected', String(tab.dataset.view === view));
    }
    for (const panel of Array.from(this.viewsEl.querySelectorAll<HTMLElement>('[data-panel]'))) {
      panel.hidden = panel.dataset.panel !== view;
    }
  }

  private showLogin(message?: string): void {
    document.body.dataset.mode = 'login';
    this.setState('idle');
    if (message) {
      this.loginError.textContent = message;
      this.loginError.hidden = false;
    } else {
      this.loginError.hidden = true;
    }
    if (!this.tokenInput.value) {
      void devToken().then((token) => {
        if (token && !this.tokenInput.value && document.body.dataset.mode === 'login') {
          this.tokenInput.value = token;
          $('#dev-note').hidden = false;
          $<HTMLButtonElement>('#connect').focus();
        }
      });
    }
    this.tokenInput.focus();
  }

  private connect(token: string): void {
    this.teardown();
    session.setToken(token);
    this.tokenInput.value = '';
    this.loginError.hidden = true;
    this.hideBanner();
    document.body.dataset.mode = 'app';
    this.everConnected = false;

    // A fixed token, not getToken: () => token, which near exp would have
    // the SDK "refresh" with the same token again and again. At exp the
    // server closes the connection and the SDK reports token_expired: back
    // to the prompt.
    const client = new WsgateClient({ url: wsUrl(), token });
    this.client = client;
    exposeForTests(client);
    const views: Views = { overview: new Overview(), events: new EventsFeed(), chat: new Chat() };
    this.views = views;
    this.viewsEl.replaceChildren(views.overview.el, views.events.el, views.chat.el);
    this.showView(this.viewFromHash());
    views.overview.onNode = (node) => {
      this.nodeEl.textContent = node;
    };

    this.offs.push(
      client.on('state', (s: ClientState) => this.setState(s)),
      client.on('connected', (info: ConnectedInfo) => {
        this.everConnected = true;
        this.userEl.textContent = info.user;
        this.stopCountdown();
        this.hideBanner();
        void views.chat.connected(client, info.user);
      }),
      // A refused token is reported by the SDK as an `error` (below): in a
      // browser it asks the server over HTTP after a failed handshake.
      client.on('disconnected', (d) => {
        if (client !== this.client) return;
        if (d.reconnecting && typeof d.delayMs === 'number') this.startCountdown(Date.now() + d.delayMs);
        else this.stopCountdown();
        if (this.everConnected && d.code !== 1000) this.showBanner(`Connection lost (${d.code}${d.reason ? `: ${d.reason}` : ''}); reconnecting…`);
      }),
      client.on('error', (e: WsgateError) => {
        if (client !== this.client) return;
        if (TOKEN_ERRORS.has(e.code)) this.refuse(e.message || e.code);
        else this.showBanner(`${e.code}: ${e.message}`);
      }),
    );
    views.overview.start(client);
    views.events.start(client);
    client.connect();
  }

  /** The token was refused: back to the prompt with the reason. */
  private refuse(reason: string): void {
    this.teardown();
    session.signOut();
    this.showLogin(`The server refused the token: ${reason}`);
  }

  private signOut(): void {
    this.teardown();
    session.signOut();
    this.tokenInput.value = '';
    $('#dev-note').hidden = true;
    this.showLogin();
  }

  private teardown(): void {
    for (const off of this.offs) off();
    this.offs = [];
    this.stopCountdown();
    if (this.views) {
      this.views.overview.stop();
      this.views.events.stop();
      this.views.chat.stop();
      this.views = undefined;
    }
    this.viewsEl.replaceChildren();
    this.client?.close();
    this.client = undefined;
    exposeForTests(undefined);
    this.userEl.textContent = '–';
    this.nodeEl.textContent = '–';
  }

  private setState(state: ClientState): void {
    this.stateEl.textContent = state;
    this.stateEl.dataset.state = state;
    if (state === 'connected') this.stopCountdown();
  }

  private startCountdown(deadline: number): void {
    this.stopCountdown();
    const tick = (): void => {
      this.retryEl.textContent = `retry in ${secondsLeft(deadline)}`;
    };
    tick();
    this.retryEl.hidden = false;
    this.retryTimer = window.setInterval(() => {
      if (Date.now() >= deadline) this.stopCountdown();
      else tick();
    }, 250);
  }

  private stopCountdown(): void {
    window.clearInterval(this.retryTimer);
    this.retryTimer = undefined;
    this.retryEl.hidden = true;
  }

  private showBanner(text: string): void {
    this.bannerText.textContent = text;
    this.banner.hidden = false;
  }

  private hideBanner(): void {
    this.banner.hidden = true;
  }
}

/**
 * Under automation only (navigator.webdriver: Playwright, WebDriver), the
 * client goes on window.__wsgate for tests/browser/dashboard.mjs, which
 * checks the SDK's subscriptions (switching threads must not pile them up).
 */
function exposeForTests(client: WsgateClient | undefined): void {
  if (!navigator.webdriver) return;
  (window as unknown as { __wsgate?: { client: WsgateClient } }).__wsgate = client ? { client } : undefined;
}
