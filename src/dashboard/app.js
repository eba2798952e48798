// taskq dashboard: plain DOM, no framework, nothing fetched from elsewhere. Every value from
// the server is put on the page with textContent (never as HTML), so task payloads cannot
// inject script. Views poll the JSON API once a second while shown.
'use strict';

const state = { token: sessionStorage.getItem('taskq.token') || '', timer: null, view: '' };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k === 'style') e.style.cssText = v;  // CSSOM: allowed under the CSP (attributes are not)
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function flash(text, ok) {
  const f = document.getElementById('flash');
  f.textContent = text;
  f.className = ok ? 'flash ok' : 'flash';
  f.hidden = !text;
  if (text) setTimeout(() => { if (f.textContent === text) f.hidden = true; }, 4000);
}

async function api(method, path, body) {
  const headers = {};
  if (state.token) headers['Authorization'] = 'Bearer ' + state.token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (res.status === 401) document.getElementById('token-box').hidden = false;
  if (!res.ok) {
    const msg = data && data.error ? data.error.message : res.status + ' ' + res.statusText;
    throw new Error(msg);
  }
  return data;
}

async function act(method, path, what) {
  try {
    await api(method, path);
    flash(what + ': done', true);
  } catch (e) {
    flash(what + ': ' + e.message, false);
  }
  refresh();
}

function badge(status) { return el('span', { class: 'badge ' + status }, status); }
function when(t) { return t ? new Date(t).toLocaleString() : '—'; }
function json(v) { return v === null || v === undefined ? 'null' : JSON.stringify(v, null, 2); }

// --- views -------------------------------------------------------------------------------

const views = {
  async overview(view) {
    const [o, h, q] = await Promise.all([api('GET', '/api/overview'), api('GET', '/api/history'), api('GET', '/api/queues')]);
    view.replaceChildren();
    view.append(el('h2', {}, 'Tasks by status'));
    const cards = el('div', { class: 'cards', id: 'counts' });
    for (const [k, v] of Object.entries(o.counts.total))
      cards.append(el('div', { class: 'card', 'data-status': k }, el('div', { class: 'n' }, v), el('div', { class: 'l' }, k)));
    view.append(cards);
    view.append(el('h2', {}, 'Throughput (per ' + (h.interval_ms / 1000) + ' s)'));
    view.append(chart(h.points));
    view.append(el('div', { class: 'legend' },
      el('span', {}, el('span', { class: 'sw', style: 'background:#1a7f37' }), 'succeeded'),
      el('span', {}, el('span', { class: 'sw', style: 'background:#c62828' }), 'failed'),
      el('span', {}, el('span', { class: 'sw', style: 'background:#3056d3' }), 'enqueued')));
    view.append(el('h2', {}, 'Queue depth'));
    view.append(queueTable(q.queues, false));
    view.append(el('p', { class: 'muted' },
      'Since this process started: ' + o.counters.enqueued + ' enqueued, ' + o.counters.succeeded +
      ' succeeded, ' + o.counters.failed + ' failed. Wait p50 ' + o.latency_ms.wait_p50.toFixed(1) +
      ' ms, run p50 ' + o.latency_ms.run_p50.toFixed(1) + ' ms.' + (o.read_only ? ' Read-only.' : '')));
  },

  async tasks(view, params) {
    const filters = ['status', 'type', 'queue', 'label', 'q', 'created_after'];
    let form = document.getElementById('task-filters');
    if (!form) {
      view.replaceChildren();
      form = el('form', { class: 'filters', id: 'task-filters' });
      const status = el('select', { name: 'status', id: 'f-status' }, el('option', { value: '' }, 'any status'));
      for (const s of ['pending', 'running', 'succeeded', 'failed', 'cancelled', 'dropped']) status.append(el('option', { value: s }, s));
      form.append(el('label', {}, 'Status', status));
      for (const [name, label, ph] of [['type', 'Type', ''], ['queue', 'Queue', ''], ['label', 'Label', 'key=value'],
                                       ['q', 'Search payload / metadata', 'text'], ['created_after', 'Created after', '2026-01-31T00:00:00Z']])
        form.append(el('label', {}, label, el('input', { name, id: 'f-' + name, placeholder: ph })));
      form.append(el('button', { type: 'submit', class: 'primary', id: 'f-apply' }, 'Filter'));
      form.append(el('button', { type: 'button', id: 'bulk-retry', onclick: () => bulk('bulk-retry') }, 'Retry matching'));
      form.append(el('button', { type: 'button', class: 'danger', id: 'bulk-delete', onclick: () => bulk('bulk-delete') }, 'Delete matching'));
      form.addEventListener('submit', (ev) => {
        ev.preventDefault();
        const p = new URLSearchParams();
        for (const f of filters) { const v = form.elements[f].value.trim(); if (v) p.set(f, v); }
        location.hash = '#/tasks?' + p.toString();
      });
      for (const f of filters) if (params.get(f)) form.elements[f].value = params.get(f);
      view.append(form, el('div', { id: 'task-list' }));
    }
    const p = new URLSearchParams();
    for (const f of filters) if (params.get(f)) p.set(f, params.get(f));
    if (params.get('cursor')) p.set('cursor', params.get('cursor'));
    const data = await api('GET', '/api/tasks?' + p.toString());
    const table = el('table', { id: 'tasks' }, el('tr', {}, ...['id', 'type', 'queue', 'status', 'attempt', 'created', 'progress', 'last error'].map(h => el('th', {}, h))));
    for (const t of data.tasks) {
      const row = el('tr', { class: 'link', 'data-id': t.id, onclick: () => { location.hash = '#/task/' + encodeURIComponent(t.id); } },
        el('td', { class: 'mono' }, t.id), el('td', {}, t.type), el('td', {}, t.queue), el('td', {}, badge(t.status)),
        el('td', {}, t.attempt + '/' + t.max_attempts), el('td', {}, when(t.created_at)),
        el('td', { class: 'mono' }, t.progress === null ? '' : JSON.stringify(t.progress)), el('td', {}, t.last_error));
      table.append(row);
    }
    const list = document.getElementById('task-list');
    const more = data.next_cursor
      ? el('button', { id: 'next-page', onclick: () => { const q = new URLSearchParams(p); q.set('cursor', data.next_cursor); location.hash = '#/tasks?' + q.toString(); } }, 'Next page')
      : null;
    list.replaceChildren(table, el('p', { class: 'muted' }, data.tasks.length + ' shown, ' + data.scanned + ' examined'), more || '');

    async function bulk(kind) {
      const q = new URLSearchParams();
      for (const f of filters) { const v = form.elements[f].value.trim(); if (v) q.set(f, v); }
      if (kind === 'bulk-delete' && !confirm('Delete every task matching the filter?')) return;
      try {
        const r = await api('POST', '/api/tasks/' + kind + '?' + q.toString());
        flash((r.retried || r.deleted).length + ' tasks ' + (r.retried ? 'retried' : 'deleted') + (r.failed.length ? ', ' + r.failed.length + ' refused' : ''), true);
      } catch (e) { flash(e.message, false); }
      refresh();
    }
  },

  async task(view, params, id) {
    const t = await api('GET', '/api/tasks/' + encodeURIComponent(id));
    view.replaceChildren();
    view.append(el('h2', {}, 'Task ', el('span', { class: 'mono', id: 'task-id' }, t.id), ' ', badge(t.status)));
    const path = '/api/tasks/' + encodeURIComponent(t.id);
    const running = t.status === 'pending' || t.status === 'running';
    view.append(el('div', { class: 'actions' },
      el('button', { id: 'cancel', disabled: running ? null : '', onclick: () => act('POST', path + '/cancel', 'Cancel') }, 'Cancel'),
      el('button', { id: 'retry', disabled: running ? '' : null, onclick: () => act('POST', path + '/retry', 'Retry') }, 'Retry'),
      el('button', { id: 'delete', class: 'danger', disabled: t.status === 'running' ? '' : null,
                     onclick: async () => { await act('DELETE', path, 'Delete'); location.hash = '#/tasks'; } }, 'Delete'),
      el('a', { href: '#/tasks' }, 'back to tasks')));
    const grid = el('div', { class: 'grid', id: 'task-fields' });
    const rows = [['type', t.type], ['queue', t.queue], ['status', t.status], ['attempt', t.attempt + ' of ' + t.max_attempts],
                  ['priority', t.priority], ['labels', JSON.stringify(t.labels)], ['created', when(t.created_at)],
                  ['available', when(t.available_at)], ['started', when(t.started_at)], ['finished', when(t.finished_at)],
                  ['last heartbeat', when(t.heartbeat_at)], ['last error', t.last_error || '—']];
    for (const [k, v] of rows) grid.append(el('div', { class: 'k' }, k), el('div', { 'data-field': k }, v));
    view.append(grid);
    view.append(el('h2', {}, 'Progress'));
    const pct = progressPercent(t.progress);
    if (pct !== null) view.append(el('div', { class: 'progress' }, el('div', { style: 'width:' + pct + '%' })));
    view.append(el('pre', { id: 'progress' }, json(t.progress)));
    view.append(el('h2', {}, 'Payload'), el('pre', { id: 'payload' }, json(t.payload)));
    view.append(el('h2', {}, 'Metadata'), el('pre', { id: 'metadata' }, json(t.metadata)));
    view.append(el('h2', {}, 'Result'), el('pre', { id: 'result' }, json(t.result)));
    view.append(el('h2', {}, 'Run log'));
    const log = el('table', { id: 'run-log' }, el('tr', {}, el('th', {}, 'at'), el('th', {}, 'message')));
    for (const e of t.log) log.append(el('tr', {}, el('td', {}, when(e.at)), el('td', {}, e.message)));
    view.append(log);
  },

  async queues(view) {
    const q = await api('GET', '/api/queues');
    view.replaceChildren(el('h2', {}, 'Queues'), queueTable(q.queues, true));
  },

  async schedules(view) {
    let s;
    try { s = await api('GET', '/api/schedules'); } catch (e) { view.replaceChildren(el('p', { class: 'muted' }, e.message)); return; }
    const table = el('table', { id: 'schedules' }, el('tr', {}, ...['name', 'type', 'timing', 'next due', 'last fired', 'runs', 'state', ''].map(h => el('th', {}, h))));
    for (const x of s.schedules) {
      const path = '/api/schedules/' + encodeURIComponent(x.name);
      const timing = x.cron ? x.cron + ' (' + x.time_zone + ')' : x.every_ms ? 'every ' + (x.every_ms / 1000) + ' s' : 'at ' + when(x.at);
      table.append(el('tr', { 'data-name': x.name },
        el('td', {}, x.name), el('td', {}, x.type), el('td', { class: 'mono' }, timing), el('td', {}, when(x.next_due)),
        el('td', {}, when(x.last_fired)), el('td', {}, x.counts.fired + x.counts.manual), el('td', {}, x.paused ? 'paused' : 'active'),
        el('td', {},
          el('button', { class: 'toggle', onclick: () => act('POST', path + (x.paused ? '/resume' : '/pause'), x.paused ? 'Resume' : 'Pause') }, x.paused ? 'Resume' : 'Pause'), ' ',
          el('button', { class: 'run-now', onclick: () => act('POST', path + '/run', 'Run now') }, 'Run now'))));
    }
    view.replaceChildren(el('h2', {}, 'Schedules'), table);
  },
};

function progressPercent(p) {
  if (p === null || typeof p !== 'object') return typeof p === 'number' && p >= 0 && p <= 100 ? p : null;
  if (typeof p.percent === 'number') return Math.max(0, Math.min(100, p.percent));
  if (typeof p.done === 'number' && typeof p.total === 'number' && p.total > 0) return Math.max(0, Math.min(100, 100 * p.done / p.total));
  return null;
}

function queueTable(queues, actions) {
  const table = el('table', { id: 'queues' }, el('tr', {}, ...['queue', 'ready', 'delayed', 'leased', 'pending', 'running', 'failed', 'oldest pending', 'mean wait', 'state', actions ? '' : null].filter(h => h !== null).map(h => el('th', {}, h))));
  for (const q of queues) {
    const path = '/api/queues/' + encodeURIComponent(q.name);
    table.append(el('tr', { 'data-queue': q.name },
      el('td', {}, q.name), el('td', {}, q.ready), el('td', {}, q.delayed), el('td', {}, q.leased),
      el('td', {}, q.counts.pending), el('td', {}, q.counts.running), el('td', {}, q.counts.failed),
      el('td', {}, q.oldest_pending_age_s === null ? '—' : q.oldest_pending_age_s.toFixed(1) + ' s'),
      el('td', {}, q.mean_wait_ms === null ? '—' : q.mean_wait_ms.toFixed(1) + ' ms'),
      el('td', { class: 'queue-state' }, q.paused ? 'paused' : 'active'),
      actions ? el('td', {}, el('button', { class: 'toggle', onclick: () => act('POST', path + (q.paused ? '/resume' : '/pause'), q.paused ? 'Resume' : 'Pause') }, q.paused ? 'Resume' : 'Pause')) : null));
  }
  return table;
}

function chart(points) {
  const W = 720, H = 180, P = 28;
  const s = svg('svg', { class: 'chart', id: 'chart', width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  const max = Math.max(1, ...points.map(p => Math.max(p.succeeded, p.failed, p.enqueued)));
  s.append(svg('line', { x1: P, y1: H - P, x2: W - 4, y2: H - P, stroke: '#cdd2da' }));
  const label = svg('text', { x: 2, y: 14, 'font-size': 11, fill: '#667085' });
  label.textContent = String(max);
  s.append(label);
  if (points.length === 0) {
    const t = svg('text', { x: W / 2 - 80, y: H / 2, 'font-size': 12, fill: '#667085' });
    t.textContent = 'collecting the first interval…';
    s.append(t);
    return s;
  }
  const step = (W - P - 8) / Math.max(1, points.length - 1);
  for (const [key, color] of [['enqueued', '#3056d3'], ['succeeded', '#1a7f37'], ['failed', '#c62828']]) {
    const d = points.map((p, i) => `${i ? 'L' : 'M'}${(P + i * step).toFixed(1)},${(H - P - (H - 2 * P) * p[key] / max).toFixed(1)}`).join(' ');
    s.append(svg('path', { d, fill: 'none', stroke: color, 'stroke-width': 2, class: 'series-' + key }));
  }
  return s;
}

// --- routing and polling -----------------------------------------------------------------

async function refresh() {
  const hash = location.hash || '#/overview';
  const [route, query] = hash.slice(2).split('?');
  const params = new URLSearchParams(query || '');
  const parts = route.split('/');
  const name = parts[0] === 'task' ? 'task' : parts[0];
  const view = document.getElementById('view');
  if (state.view !== hash) { view.replaceChildren(); state.view = hash; }
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.id === 'nav-' + (name === 'task' ? 'tasks' : name));
  const fn = views[name] || views.overview;
  try {
    await fn(view, params, decodeURIComponent(parts.slice(1).join('/')));
    document.getElementById('status').textContent = 'updated ' + new Date().toLocaleTimeString();
  } catch (e) {
    document.getElementById('status').textContent = 'error: ' + e.message;
  }
}

function start() {
  document.getElementById('token').value = state.token;
  document.getElementById('token-save').addEventListener('click', () => {
    state.token = document.getElementById('token').value;
    sessionStorage.setItem('taskq.token', state.token);
    document.getElementById('token-box').hidden = true;
    refresh();
  });
  window.addEventListener('hashchange', refresh);
  refresh();
  // Live updates: re-read the current view every second (the task list keeps its form).
  state.timer = setInterval(() => { if (!document.hidden) refresh(); }, 1000);
}

document.addEventListener('DOMContentLoaded', start);
