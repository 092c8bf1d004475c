// Entry point of /dashboard/app.js.
import { App } from './app.ts';

function boot(): void {
  new App().start();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot, { once: true });
else boot();
