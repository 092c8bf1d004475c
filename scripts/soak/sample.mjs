// sample.mjs — the soak's sampler: every --every seconds (or once, --once),
// one CSV row per server node with what the kernel says about the process
// (/proc: RSS, threads, CPU, open file descriptors by kind), what the
// server says about itself (/metrics, /ws/stats), Redis's memory and key
// count (two-node mode), and the load generator's counters (its --stats
// JSON) and own RSS/CPU.
//
// The file descriptors are classified so that "back to baseline" can be
// checked per kind: a client socket (accepted on the node's port) must
// not outlive its client, while a store connection (SQLite files, a
// PostgreSQL socket) may legitimately stay open in the pool.
//
// usage: node sample.mjs --config FILE [--once] [--phase NAME]
//   config (JSON, written by soak.sh): {csv, t0, every, phaseFile, statsFile,
//   loadPidFile, apiKey, redis: {host, port, db} | null,
//   nodes: [{name, pidFile, http, port}]}

import { readFileSync, readdirSync, readlinkSync, existsSync, appendFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';

const argv = process.argv.slice(2);
const opt = (k) => {
  const i = argv.indexOf('--' + k);
  return i < 0 ? undefined : argv[i + 1] ?? true;
};
const cfg = JSON.parse(readFileSync(opt('config'), 'utf8'));
const once = argv.includes('--once');

const COLUMNS = [
  't_s', 'time', 'phase', 'node',
  'rss_kib', 'threads', 'cpu_pct',
  'fds', 'fds_client', 'fds_listen', 'fds_store', 'fds_redis', 'fds_other',
  'm_connections_active', 'm_connections_accepted', 'm_publications', 'm_deliveries', 'm_runs',
  'm_errors', 'm_disconnects', 'm_broker_errors', 'm_storage_errors', 'm_tasks',
  'stats_connections', 'stats_users',
  'redis_used_memory', 'redis_keys',
  'c_clients_open', 'c_connects', 'c_publishes', 'c_api_publishes', 'c_deliveries', 'c_cross_node',
  'c_runs_completed', 'c_errors', 'c_gaps', 'c_lat_p50_ms', 'c_lat_p99_ms',
  'load_rss_kib', 'load_cpu_pct',
];

const read = (f) => {
  try {
    return readFileSync(f, 'utf8');
  } catch {
    return undefined;
  }
};
const pidOf = (file) => {
  const s = read(file);
  return s ? Number(s.trim()) : undefined;
};

function procStatus(pid) {
  const s = read(`/proc/${pid}/status`);
  if (!s) return {};
  const field = (k) => Number((s.match(new RegExp(`^${k}:\\s+(\\d+)`, 'm')) ?? [])[1]);
  return { rss_kib: field('VmRSS'), threads: field('Threads') };
}

/** utime + stime in clock ticks (USER_HZ = 100 on Linux). */
function cpuTicks(pid) {
  const s = read(`/proc/${pid}/stat`);
  if (!s) return undefined;
  const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return Number(rest[11]) + Number(rest[12]);
}

/** socket inode → {lport, rport, state} from the kernel's TCP tables. */
function tcpTable() {
  const map = new Map();
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    const text = read(f);
    if (!text) continue;
    for (const line of text.split('\n').slice(1)) {
      const c = line.trim().split(/\s+/);
      if (c.length < 10) continue;
      const port = (a) => parseInt(a.split(':').pop(), 16);
      map.set(c[9], { lport: port(c[1]), rport: port(c[2]), state: c[3] });
    }
  }
  return map;
}

function fdCounts(pid, node, tcp) {
  const out = { fds: 0, fds_client: 0, fds_listen: 0, fds_store: 0, fds_redis: 0, fds_other: 0 };
  let names;
  try {
    names = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return out;
  }
  for (const fd of names) {
    let target;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue; // closed meanwhile
    }
    out.fds++;
    const sock = target.match(/^socket:\[(\d+)\]$/);
    const t = sock && tcp.get(sock[1]);
    if (t && t.state === '0A') out.fds_listen++;
    else if (t && t.lport === node.port) out.fds_client++;
    else if (t && t.rport === 6379) out.fds_redis++;
    else if (t && t.rport === 5432) out.fds_store++;
    else if (/\.db(-wal|-shm|-journal)?$/.test(target)) out.fds_store++;
    else out.fds_other++;
  }
  return out;
}

/** GET without keep-alive (agent: false), so the sampler leaves no socket
 * open in the server between samples. */
function get(url, headers = {}) {
  return new Promise((resolve) => {
    const req = http.get(url, { agent: false, headers, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve(res.statusCode === 200 ? body : undefined));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(undefined));
  });
}

function parseMetrics(text) {
  const m = {};
  if (!text) return m;
  const sum = (re) => {
    let total;
    for (const line of text.split('\n')) {
      if (line.startsWith('#')) continue;
      const match = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/);
      if (match && re.test(match[1] + (match[2] ?? ''))) total = (total ?? 0) + Number(match[3]);
    }
    return total;
  };
  m.m_connections_active = sum(/^wsgate_connections_active$/);
  m.m_connections_accepted = sum(/^wsgate_connections_total\{.*result="accepted"/);
  m.m_publications = sum(/^wsgate_publications_total/);
  m.m_deliveries = sum(/^wsgate_deliveries_total/);
  m.m_runs = sum(/^wsgate_agent_runs_total/);
  m.m_errors = sum(/^wsgate_errors_total/);
  m.m_disconnects = sum(/^wsgate_disconnects_total/);
  m.m_broker_errors = sum(/^wsgate_broker_errors_total/);
  m.m_storage_errors = sum(/^wsgate_storage_errors_total/);
  // wsgate exposes no task count today; if a gauge of live tasks appears
  // (any wsgate_* name with "task" that is not a counter or histogram
  // part), it is picked up here.
  m.m_tasks = sum(/^wsgate_\w*task\w*(?<!_total|_bucket|_sum|_count|_created)(\{.*\})?$/);
  return m;
}

/** DBSIZE of the soak's DB and INFO memory, over a bare RESP connection. */
function redisInfo(r) {
  return new Promise((resolve) => {
    const sock = net.connect(r.port, r.host);
    let data = '';
    const done = () => {
      sock.destroy();
      const keys = data.match(/\r\n:(\d+)\r\n/);
      const mem = data.match(/used_memory:(\d+)/);
      resolve({ redis_keys: keys ? Number(keys[1]) : undefined, redis_used_memory: mem ? Number(mem[1]) : undefined });
    };
    sock.setTimeout(3000, done);
    sock.on('error', done);
    sock.on('close', done);
    sock.on('data', (d) => (data += d));
    sock.on('connect', () => sock.write(`SELECT ${r.db}\r\nDBSIZE\r\nINFO memory\r\nQUIT\r\n`));
  });
}

const csvCell = (v) => (v === undefined || v === null || Number.isNaN(v) ? '' : String(v));
if (!existsSync(cfg.csv)) appendFileSync(cfg.csv, COLUMNS.join(',') + '\n');

let last; // previous CPU readings, for cpu_pct
function cpuNow(pids) {
  return { at: Date.now(), ticks: Object.fromEntries(pids.filter(Boolean).map((p) => [p, cpuTicks(p)])) };
}
const cpuPct = (pid, prev, now) =>
  prev && pid && prev.ticks[pid] !== undefined && now.ticks[pid] !== undefined
    ? Math.round(((now.ticks[pid] - prev.ticks[pid]) / 100 / ((now.at - prev.at) / 1000)) * 1000) / 10
    : undefined;

async function sampleOnce(phase) {
  const pids = cfg.nodes.map((n) => pidOf(n.pidFile));
  const loadPid = cfg.loadPidFile ? pidOf(cfg.loadPidFile) : undefined;
  if (!last) {
    // First sample: measure CPU over one second.
    last = cpuNow([...pids, loadPid]);
    await new Promise((r) => setTimeout(r, 1000));
  }
  const now = cpuNow([...pids, loadPid]);
  const tcp = tcpTable();
  // The kernel's view first, before this sampler's own HTTP requests open
  // sockets in the servers.
  const kernel = cfg.nodes.map((node, i) => ({ ...procStatus(pids[i]), ...fdCounts(pids[i], node, tcp) }));
  const stats = JSON.parse(read(cfg.statsFile) ?? '{}');
  const loadAlive = loadPid && existsSync(`/proc/${loadPid}`);
  const load = loadAlive ? procStatus(loadPid) : {};
  const redis = cfg.redis ? await redisInfo(cfg.redis) : {};
  const time = new Date();
  const rows = [];
  for (const [i, node] of cfg.nodes.entries()) {
    const metrics = parseMetrics(await get(`${node.http}/metrics`));
    const ws = JSON.parse((await get(`${node.http}/ws/stats`, { 'X-API-Key': cfg.apiKey })) ?? '{}');
    const row = {
      t_s: Math.round((time.getTime() - cfg.t0) / 100) / 10,
      time: time.toISOString(),
      phase,
      node: node.name,
      ...kernel[i],
      cpu_pct: cpuPct(pids[i], last, now),
      ...metrics,
      stats_connections: ws.connections,
      stats_users: ws.users,
      ...redis,
      c_clients_open: stats.clients_open_by_node?.[node.name],
      c_connects: stats.connects,
      c_publishes: stats.publishes,
      c_api_publishes: stats.api_publishes,
      c_deliveries: stats.deliveries,
      c_cross_node: stats.cross_node_deliveries,
      c_runs_completed: stats.runs_completed,
      c_errors: stats.errors,
      c_gaps: stats.delivery_gaps,
      c_lat_p50_ms: stats.latency_ms?.p50,
      c_lat_p99_ms: stats.latency_ms?.p99,
      load_rss_kib: load.rss_kib,
      load_cpu_pct: loadAlive ? cpuPct(loadPid, last, now) : undefined,
    };
    rows.push(COLUMNS.map((c) => csvCell(row[c])).join(','));
  }
  appendFileSync(cfg.csv, rows.join('\n') + '\n');
  last = now;
}

if (once) {
  await sampleOnce(opt('phase') ?? 'once');
} else {
  // Aligned to the period from t0, whatever a sample takes.
  for (;;) {
    const phase = (read(cfg.phaseFile) ?? 'load').trim();
    await sampleOnce(phase);
    const every = cfg.every * 1000;
    await new Promise((r) => setTimeout(r, every - ((Date.now() - cfg.t0) % every)));
  }
}
