// The dashboard page: signing in, uploads, files, usage, API keys and chat,
// all through the session cookie and the CSRF token.

import { api, setCsrf, whenUnauthorized } from './api.js';
import { uploadFiles } from './upload.js';
import { $, clear, confirmAction, el, formatBytes, formatCount, formatDate, showAlert } from './ui.js';

const TIER_ORDER = ['free', 'starter', 'professional', 'enterprise'];
const PAGE_SIZE = 20;
// A hint only (no secret): whether this browser probably holds a session,
// so a first visit does not start with a refused request.
const SIGNED_IN_HINT = 'intake.signed-in';
const NEAR_LIMIT = 0.8;

const state = {
  account: null,
  table: null, // GET /limits
  usage: null, // GET /usage
  cursor: null,
  chatFiles: new Set(),
};
// The search waits for typing to pause; signing out drops a pending one.
let searchTimer = null;

function report(container, error) {
  showAlert(container, error.message);
}

// ---- signing in and out ----------------------------------------------------

function showSignedOut(message) {
  state.account = null;
  clearTimeout(searchTimer);
  setCsrf(null);
  localStorage.removeItem(SIGNED_IN_HINT);
  $('loading').hidden = true;
  $('signed-in').hidden = true;
  $('who').hidden = true;
  $('signed-out').hidden = false;
  clear($('auth-alerts'));
  if (message) showAlert($('auth-alerts'), message);
  $('email').focus();
}

async function showSignedIn(session, focus) {
  state.account = session.account;
  setCsrf(session.csrf_token);
  localStorage.setItem(SIGNED_IN_HINT, '1');
  $('loading').hidden = true;
  $('signed-out').hidden = true;
  $('who-email').textContent = session.account.email;
  $('who-tier').textContent = session.account.tier.toUpperCase();
  $('who-tier').setAttribute('aria-label', `tier ${session.account.tier.toUpperCase()}`);
  $('who').hidden = false;
  $('signed-in').hidden = false;
  clear($('upload-list'));
  clear($('chat-log'));
  for (const id of ['global-alerts', 'files-alerts', 'usage-alerts', 'keys-alerts', 'chat-alerts']) clear($(id));
  $('new-key').hidden = true;
  $('new-key-value').value = '';
  // Nothing typed or ticked by whoever used the page before carries over.
  for (const id of ['message', 'search', 'category', 'key-name']) $(id).value = '';
  state.chatFiles.clear();
  if (focus) $('upload-title').focus();
  await Promise.all([loadUsage(), loadFiles(true)]);
  await loadKeys();
}

whenUnauthorized(() => {
  if (state.account) showSignedOut('Your session has ended. Log in again.');
});

async function logIn(email, password) {
  const session = await api('POST', '/auth/login', { email, password });
  $('password').value = '';
  await showSignedIn(session, true);
}

$('auth-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  clear($('auth-alerts'));
  try {
    await logIn($('email').value, $('password').value);
  } catch (error) {
    report($('auth-alerts'), error);
  }
});

$('signup').addEventListener('click', async () => {
  clear($('auth-alerts'));
  const email = $('email').value;
  const password = $('password').value;
  try {
    await api('POST', '/auth/signup', { email, password });
    await logIn(email, password);
  } catch (error) {
    report($('auth-alerts'), error);
  }
});

$('logout').addEventListener('click', async () => {
  // A search still waiting would run after the session has ended.
  clearTimeout(searchTimer);
  try {
    await api('POST', '/auth/logout');
  } catch (error) {
    if (error.status !== 401) {
      report($('global-alerts'), error);
      return;
    }
  }
  showSignedOut();
});

// ---- usage -----------------------------------------------------------------

function meter(id, label, used, limit, text, note) {
  const labelId = `meter-${id}-label`;
  const ratio = limit ? Math.min(1, used / limit) : 0;
  const fill = el('div', { class: 'fill' });
  fill.style.width = `${Math.round(ratio * 100)}%`;
  const bar = el(
    'div',
    {
      role: 'meter',
      id: `meter-${id}`,
      class: `meter${ratio >= NEAR_LIMIT ? ' near' : ''}`,
      'aria-labelledby': labelId,
      'aria-valuemin': 0,
      'aria-valuemax': limit ?? Math.max(used, 1),
      'aria-valuenow': used,
      'aria-valuetext': text,
    },
    el('div', { class: 'track' }, fill),
    el('span', { class: 'meter-text', text }),
  );
  return {
    ratio,
    label,
    node: el(
      'div',
      { class: 'meter-block' },
      el('span', { id: labelId, class: 'meter-label', text: label }),
      bar,
      el('p', { class: 'meter-note', text: note }),
    ),
  };
}

const LIMIT_ROWS = [
  ['requests_per_minute', 'API requests per minute', formatCount],
  ['concurrent_uploads', 'Concurrent uploads', formatCount],
  ['batch_size', 'Files in one batch', formatCount],
  ['max_image_bytes', 'Largest image', formatBytes],
  ['max_document_bytes', 'Largest document', formatBytes],
  ['max_video_bytes', 'Largest video', formatBytes],
  ['storage_bytes', 'Storage', formatBytes],
  ['ai_descriptions_per_month', 'AI descriptions per month', formatCount],
  ['chat_messages_per_month', 'Chat messages per month', formatCount],
  ['api_keys', 'API keys', (v) => (v ? 'yes' : 'no')],
];

function renderLimits() {
  const { limits, tier } = state.usage;
  const row = state.table.tiers[tier];
  const body = $('limits-table').tBodies[0];
  body.replaceChildren(
    ...LIMIT_ROWS.map(([key, label, format]) => {
      const custom = row && JSON.stringify(row[key]) !== JSON.stringify(limits[key]);
      return el(
        'tr',
        {},
        el('th', { scope: 'row', text: label }),
        el('td', { text: format(limits[key]) + (custom ? ` (custom; ${tier.toUpperCase()} tier: ${format(row[key])})` : '') }),
      );
    }),
    el(
      'tr',
      {},
      el('th', { scope: 'row', text: 'Streaming upload cap' }),
      el('td', { text: `${formatBytes(state.table.stream_max_file_bytes)} (larger files upload resumably)` }),
    ),
  );
  $('limits-title').textContent = `Your limits (${tier.toUpperCase()})`;
}

// The next tier that lifts a limit, for the upgrade hint.
function betterTier(key, current) {
  const tier = state.usage.tier;
  for (const name of TIER_ORDER.slice(TIER_ORDER.indexOf(tier) + 1)) {
    const value = state.table.tiers[name]?.[key];
    if (value === null || value > current) return [name, value];
  }
  return null;
}

async function loadUsage() {
  try {
    if (!state.table) state.table = await api('GET', '/limits');
    state.usage = await api('GET', '/usage');
  } catch (error) {
    report($('usage-alerts'), error);
    return;
  }
  const { limits, usage } = state.usage;
  const resets = (at) => `Resets ${formatDate(at)}`;
  const storageUsed = usage.storage_bytes.used;
  const meters = [
    [
      'storage_bytes',
      formatBytes,
      meter(
        'storage',
        'Storage',
        storageUsed,
        limits.storage_bytes,
        `${formatBytes(storageUsed)} of ${formatBytes(limits.storage_bytes)} used`,
        usage.storage_bytes.reserved
          ? `${formatBytes(usage.storage_bytes.reserved)} held by uploads in progress. Deleting files frees space.`
          : 'Does not reset: deleting files frees space.',
      ),
    ],
    [
      'ai_descriptions_per_month',
      formatCount,
      meter(
        'ai',
        'AI descriptions',
        usage.ai_descriptions.used,
        limits.ai_descriptions_per_month,
        `${formatCount(usage.ai_descriptions.used)} of ${formatCount(limits.ai_descriptions_per_month)} used this month`,
        resets(usage.ai_descriptions.resets_at),
      ),
    ],
    [
      'chat_messages_per_month',
      formatCount,
      meter(
        'chat',
        'Chat messages',
        usage.chat_messages.used,
        limits.chat_messages_per_month,
        `${formatCount(usage.chat_messages.used)} of ${formatCount(limits.chat_messages_per_month)} used this month`,
        resets(usage.chat_messages.resets_at),
      ),
    ],
    [
      'concurrent_uploads',
      formatCount,
      meter(
        'concurrent',
        'Concurrent uploads',
        usage.concurrent_uploads.active,
        limits.concurrent_uploads,
        `${formatCount(usage.concurrent_uploads.active)} of ${formatCount(limits.concurrent_uploads)} in progress`,
        'Right now; each upload request holds one.',
      ),
    ],
  ];
  $('meters').replaceChildren(...meters.map(([, , m]) => m.node));
  const near = meters.filter(([, , m]) => m.ratio >= NEAR_LIMIT);
  const hint = $('upgrade-hint');
  if (near.length) {
    const [key, format, m] = near[0];
    const better = betterTier(key, limits[key]);
    hint.textContent =
      `${m.label} is at ${Math.round(m.ratio * 100)}% of your limit.` +
      (better ? ` ${better[0].toUpperCase()} allows ${better[1] === null ? 'unlimited' : format(better[1])}; ask your administrator to upgrade.` : '');
    hint.hidden = false;
  } else {
    hint.hidden = true;
  }
  renderLimits();
  const batch = limits.batch_size;
  $('upload-hint').textContent =
    `Up to ${formatBytes(state.table.stream_max_file_bytes)} a file streams through intake, ${batch} files a request; ` +
    `larger files upload resumably, with pause and resume. Images up to ${formatBytes(limits.max_image_bytes)}, ` +
    `documents up to ${formatBytes(limits.max_document_bytes)}, videos up to ${formatBytes(limits.max_video_bytes)}.`;
}

// ---- uploads ---------------------------------------------------------------

async function startUpload(fileList) {
  const files = [...fileList];
  if (!files.length) return;
  if (!state.usage) await loadUsage();
  if (!state.usage) return;
  const upload = uploadFiles(files, {
    list: $('upload-list'),
    batchSize: state.usage.limits.batch_size,
    streamMax: state.table.stream_max_file_bytes,
  });
  // The concurrent-uploads meter shows the slots these uploads hold.
  setTimeout(() => state.account && loadUsage(), 300);
  await upload;
  await Promise.all([loadUsage(), loadFiles(true)]);
}

$('files-input').addEventListener('change', async (event) => {
  const input = event.target;
  const files = [...input.files];
  input.value = '';
  await startUpload(files);
});

const drop = $('drop');
for (const type of ['dragenter', 'dragover']) {
  drop.addEventListener(type, (event) => {
    event.preventDefault();
    drop.classList.add('over');
  });
}
for (const type of ['dragleave', 'drop']) {
  drop.addEventListener(type, () => drop.classList.remove('over'));
}
drop.addEventListener('drop', (event) => {
  event.preventDefault();
  startUpload(event.dataTransfer.files);
});
// A file dropped beside the zone would otherwise replace the page.
for (const type of ['dragover', 'drop']) window.addEventListener(type, (event) => event.preventDefault());

// ---- files -----------------------------------------------------------------

const CATEGORY_ICON = { image: 'IMG', document: 'DOC', video: 'VID' };

function download(file) {
  // The browser follows the answer (bytes or a redirect to storage) as a
  // download: the content is always served as an attachment.
  const link = el('a', { href: `/files/${file.id}/content`, download: file.filename, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
}

async function describe(file, row, button) {
  button.disabled = true;
  const cell = row.querySelector('.desc');
  cell.textContent = 'Describing…';
  try {
    const answer = await api('POST', `/files/${file.id}/describe`);
    file.description = answer.description;
    cell.textContent = answer.description;
    await loadUsage();
  } catch (error) {
    cell.textContent = file.description || '';
    showAlert($('files-alerts'), `${file.filename}: ${error.message}`);
  } finally {
    button.disabled = false;
  }
}

async function remove(file, row) {
  const ok = await confirmAction(`Delete ${file.filename}? This cannot be undone.`, 'Delete');
  if (!ok) return;
  try {
    await api('DELETE', `/files/${file.id}`);
  } catch (error) {
    showAlert($('files-alerts'), `${file.filename}: ${error.message}`);
    return;
  }
  state.chatFiles.delete(file.id);
  row.remove();
  $('files-status').textContent = `Deleted ${file.filename}.`;
  $('files-empty').hidden = $('files-body').rows.length > 0;
  $('search').focus();
  await loadUsage();
}

function fileRow(file) {
  const thumb =
    file.category === 'image'
      ? el('img', { src: `/files/${file.id}/content`, alt: '', loading: 'lazy', width: 48, height: 48, class: 'thumb' })
      : el('span', { class: 'thumb icon', 'aria-hidden': 'true', text: CATEGORY_ICON[file.category] || '' });
  const row = el('tr', { 'data-id': file.id });
  const chatBox = el('input', {
    type: 'checkbox',
    id: `chat-${file.id}`,
    checked: state.chatFiles.has(file.id),
    onchange: (event) => {
      if (event.target.checked) state.chatFiles.add(file.id);
      else state.chatFiles.delete(file.id);
    },
  });
  const describeButton = el('button', {
    type: 'button',
    class: 'small secondary',
    'aria-label': `Describe ${file.filename}`,
    text: 'Describe',
  });
  describeButton.addEventListener('click', () => describe(file, row, describeButton));
  row.append(
    el('td', { class: 'cell-thumb' }, thumb),
    el(
      'td',
      { class: 'cell-name', 'data-label': 'Name' },
      el('span', { class: 'filename', text: file.filename }),
      el('p', { class: 'desc', text: file.description || '' }),
    ),
    el('td', { 'data-label': 'Category', text: file.category }),
    el('td', { 'data-label': 'Size', text: formatBytes(file.size) }),
    el('td', { 'data-label': 'Date' }, el('time', { datetime: file.created_at, text: formatDate(file.created_at, true) })),
    el(
      'td',
      { class: 'cell-actions' },
      el(
        'div',
        { class: 'actions' },
        el('button', {
        type: 'button',
        class: 'small',
        'aria-label': `Download ${file.filename}`,
        text: 'Download',
        onclick: () => download(file),
      }),
      describeButton,
      el('button', {
        type: 'button',
        class: 'small danger',
        'aria-label': `Delete ${file.filename}`,
        text: 'Delete',
        onclick: () => remove(file, row),
      }),
      el('span', { class: 'chat-pick' }, chatBox, el('label', { for: `chat-${file.id}`, text: 'Use in chat' })),
      ),
    ),
  );
  return row;
}

let listRequest = 0;

async function loadFiles(fresh) {
  const mine = ++listRequest;
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  const q = $('search').value.trim();
  const category = $('category').value;
  if (q) params.set('q', q);
  if (category) params.set('category', category);
  if (!fresh && state.cursor) params.set('cursor', state.cursor);
  let page;
  try {
    page = await api('GET', `/files?${params}`);
  } catch (error) {
    report($('files-alerts'), error);
    return;
  }
  // A later search has started: this answer is stale.
  if (mine !== listRequest) return;
  const body = $('files-body');
  const rows = page.files.map(fileRow);
  if (fresh) body.replaceChildren(...rows);
  else body.append(...rows);
  state.cursor = page.next_cursor;
  $('load-more').hidden = !page.next_cursor;
  $('files-empty').hidden = body.rows.length > 0;
  $('files-status').textContent = fresh && (q || category) ? `${body.rows.length}${page.next_cursor ? '+' : ''} matching files.` : '';
}

$('search').addEventListener('input', () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => loadFiles(true), 250);
});
$('category').addEventListener('change', () => loadFiles(true));
$('load-more').addEventListener('click', () => loadFiles(false));

// ---- API keys --------------------------------------------------------------

async function loadKeys() {
  const paid = Boolean(state.usage && state.usage.limits.api_keys);
  $('keys-free').hidden = paid;
  $('keys-paid').hidden = !paid;
  if (!paid) return;
  let list;
  try {
    list = await api('GET', '/api-keys');
  } catch (error) {
    report($('keys-alerts'), error);
    return;
  }
  $('keys-body').replaceChildren(
    ...list.api_keys.map((key) =>
      el(
        'tr',
        {},
        el('td', { 'data-label': 'Name', text: key.name }),
        el('td', { 'data-label': 'Key' }, el('code', { text: `${key.prefix}…` })),
        el('td', { 'data-label': 'Last used', text: key.last_used_at ? formatDate(key.last_used_at, true) : 'never' }),
        el(
          'td',
          { class: 'cell-actions' },
          el('button', {
            type: 'button',
            class: 'small danger',
            'aria-label': `Revoke ${key.name}`,
            text: 'Revoke',
            onclick: () => revokeKey(key),
          }),
        ),
      ),
    ),
  );
  $('keys-empty').hidden = list.api_keys.length > 0;
}

async function revokeKey(key) {
  const ok = await confirmAction(`Revoke the key “${key.name}”? Programs using it stop working at once.`, 'Revoke');
  if (!ok) return;
  try {
    await api('DELETE', `/api-keys/${key.id}`);
  } catch (error) {
    report($('keys-alerts'), error);
    return;
  }
  $('new-key').hidden = true;
  $('new-key-value').value = '';
  await loadKeys();
  $('key-name').focus();
}

$('key-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  clear($('keys-alerts'));
  const name = $('key-name').value.trim();
  if (!name) {
    showAlert($('keys-alerts'), 'Give the key a name.');
    return;
  }
  try {
    const created = await api('POST', '/api-keys', { name });
    $('new-key-value').value = created.key;
    $('copy-status').textContent = '';
    $('new-key').hidden = false;
    $('key-name').value = '';
    $('new-key-value').focus();
    $('new-key-value').select();
  } catch (error) {
    report($('keys-alerts'), error);
    return;
  }
  await loadKeys();
});

$('copy-key').addEventListener('click', async () => {
  const input = $('new-key-value');
  try {
    await navigator.clipboard.writeText(input.value);
    $('copy-status').textContent = 'Copied.';
  } catch {
    // No clipboard permission: leave it selected for the keyboard.
    input.focus();
    input.select();
    $('copy-status').textContent = 'Selected: press Ctrl+C (⌘C) to copy.';
  }
});

// ---- chat ------------------------------------------------------------------

$('chat-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  clear($('chat-alerts'));
  const message = $('message').value.trim();
  if (!message) {
    showAlert($('chat-alerts'), 'Write a message first.');
    return;
  }
  const body = { message };
  if (state.chatFiles.size) body.file_ids = [...state.chatFiles].slice(0, 10);
  $('send').disabled = true;
  try {
    const answer = await api('POST', '/chat', body);
    $('chat-log').prepend(
      el(
        'article',
        { class: 'exchange' },
        el('p', { class: 'you' }, el('strong', { text: 'You: ' }), message),
        el('p', { class: 'reply' }, el('strong', { text: 'Reply: ' }), answer.reply),
        el('p', { class: 'model', text: `model ${answer.model}` }),
      ),
    );
    $('message').value = '';
    await loadUsage();
  } catch (error) {
    report($('chat-alerts'), error);
  } finally {
    $('send').disabled = false;
  }
});

// ---- start -----------------------------------------------------------------

async function start() {
  if (!localStorage.getItem(SIGNED_IN_HINT)) {
    showSignedOut();
    return;
  }
  try {
    await showSignedIn(await api('GET', '/auth/session'), false);
  } catch {
    showSignedOut();
  }
}

start();
