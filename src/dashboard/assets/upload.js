// The uploader: one function per upload path.
//
//   streamBatch  files up to the streaming cap, in batches of at most the
//                tier's batch size, one request per batch
//   resumable    larger files through /upload/tus (tus 1.0) with
//                tus-js-client, pausable and resumable, also after a reload
//                (choosing the same file again picks up where it stopped)

import { api, csrfHeaders, networkError, noteStatus, problemOf } from './api.js';
import { el, formatBytes } from './ui.js';
// One file's row in the upload list: name, progress bar, state, alert.
class Item {
  constructor(file, list) {
    this.file = file;
    this.paused = false;
    this.state = el('span', { class: 'upload-state', text: 'Waiting' });
    this.fill = el('div', { class: 'fill' });
    this.bar = el(
      'div',
      {
        role: 'progressbar',
        class: 'bar',
        'aria-label': file.name,
        'aria-valuemin': 0,
        'aria-valuemax': 100,
        'aria-valuenow': 0,
      },
      this.fill,
    );
    this.controls = el('span', { class: 'upload-controls' });
    this.row = el(
      'li',
      { class: 'upload' },
      el(
        'div',
        { class: 'upload-head' },
        el('span', { class: 'upload-name', text: file.name }),
        el('span', { class: 'upload-size', text: formatBytes(file.size) }),
        this.state,
        this.controls,
      ),
      this.bar,
    );
    list.prepend(this.row);
  }

  progress(fraction) {
    const pct = Math.max(0, Math.min(100, Math.floor(fraction * 100)));
    if (String(pct) === this.bar.getAttribute('aria-valuenow')) return;
    this.bar.setAttribute('aria-valuenow', pct);
    this.fill.style.width = `${pct}%`;
    if (!this.paused) this.state.textContent = `${pct}%`;
  }

  setState(text) {
    this.state.textContent = text;
  }

  control(label, action) {
    const button = el('button', {
      type: 'button',
      class: 'small secondary',
      'aria-label': `${label} ${this.file.name}`,
      text: label,
      onclick: action,
    });
    this.controls.append(button);
    return button;
  }

  done() {
    this.controls.replaceChildren();
    this.progress(1);
    this.setState('Uploaded');
    this.row.classList.add('ok');
  }

  // A failure replaces the bar with an alert naming the file and the detail.
  fail(error) {
    this.controls.replaceChildren();
    this.bar.remove();
    this.setState('Failed');
    this.row.classList.add('failed');
    // The problem's code rides along for scripts (and tests) that branch on it.
    const attrs = { role: 'alert', class: 'alert' };
    if (error.code) attrs['data-code'] = error.code;
    this.row.append(el('div', attrs, `${this.file.name}: ${error.message}`));
  }
}

// Sends one XHR and settles with it; `onProgress(loaded, total)` follows the
// request body. Resolves with the XHR whatever its status.
function send(xhr, body, onProgress) {
  return new Promise((resolve, reject) => {
    xhr.upload.addEventListener('progress', (e) => {
      if (e.lengthComputable) onProgress(e.loaded, e.total);
    });
    xhr.addEventListener('load', () => resolve(xhr));
    xhr.addEventListener('error', () => reject(networkError()));
    xhr.addEventListener('abort', () => reject(Object.assign(new Error('aborted'), { aborted: true })));
    xhr.send(body);
  });
}

// A batch through /upload/stream-batch: one multipart request, each file's
// bar following its own share of the body.
async function streamBatch(items) {
  const form = new FormData();
  const starts = [];
  let total = 0;
  for (const item of items) {
    form.append('files', item.file, item.file.name);
    starts.push(total);
    total += item.file.size;
    item.setState('Uploading');
  }
  const xhr = new XMLHttpRequest();
  xhr.open('POST', '/upload/stream-batch');
  for (const [k, v] of Object.entries(csrfHeaders())) xhr.setRequestHeader(k, v);
  let answer;
  try {
    answer = await send(xhr, form, (loaded, sent) => {
      // The body holds the files in order plus a little multipart framing.
      const bytes = (loaded * total) / sent;
      items.forEach((item, i) => {
        const size = item.file.size || 1;
        // 99 at most until the server has recorded the file.
        item.progress(Math.min(0.99, (bytes - starts[i]) / size));
      });
    });
  } catch (error) {
    items.forEach((item) => item.fail(error));
    return;
  }
  if (answer.status !== 200) {
    noteStatus(answer.status);
    const error = problemOf(answer.status, answer.responseText);
    items.forEach((item) => item.fail(error));
    return;
  }
  const body = JSON.parse(answer.responseText);
  for (const result of body.results) {
    const item = items[result.index];
    if (!item) continue;
    if (result.file) item.done();
    else item.fail(problemOf(result.status, JSON.stringify(result.error)));
  }
}

// tus-js-client (vendored from npm: see docs/dashboard.md), loaded by the
// page as a classic script before this module, so it is `window.tus`.
const tus = window.tus;

// Statuses worth another try: none (the connection broke), an offset that
// moved under us (409: tus-js-client asks with HEAD and goes on from
// there), the upload still held by the request a pause broke off (423),
// and a server or proxy hiccup. Never a refusal such as 507.
const RETRY_STATUSES = new Set([0, 409, 423, 500, 502, 503, 504]);

function tusStatus(error) {
  return error.originalResponse ? error.originalResponse.getStatus() : 0;
}

function tusProblem(error) {
  const response = error.originalResponse;
  if (!response) return networkError();
  noteStatus(response.getStatus());
  return problemOf(response.getStatus(), response.getBody());
}

// intake answers a creation with an absolute Location built from
// PUBLIC_BASE_URL; the page sends it to its own origin instead, so the
// session cookie goes along whatever host name the page was opened under.
class SameOriginStack {
  constructor() {
    this.inner = new tus.DefaultHttpStack();
  }

  createRequest(method, url) {
    const parsed = new URL(url, window.location.href);
    return this.inner.createRequest(method, parsed.pathname + parsed.search);
  }

  getName() {
    return 'intake-same-origin';
  }
}

async function resumable(item) {
  if (!tus || !tus.isSupported) throw new Error('this browser cannot send resumable uploads');
  const file = item.file;
  let settle;
  const finished = new Promise((resolve, reject) => {
    settle = { resolve, reject };
  });
  const upload = new tus.Upload(file, {
    endpoint: '/upload/tus',
    httpStack: new SameOriginStack(),
    metadata: { filename: file.name, filetype: file.type || 'application/octet-stream' },
    // One PATCH for the whole file: intake keeps every byte of a broken
    // body, so a pause loses nothing and nothing is sent twice.
    retryDelays: [0, 1000, 3000, 5000],
    onShouldRetry: (error) => RETRY_STATUSES.has(tusStatus(error)),
    removeFingerprintOnSuccess: true,
    onBeforeRequest: (request) => {
      for (const [k, v] of Object.entries(csrfHeaders())) request.setHeader(k, v);
    },
    onProgress: (sent, total) => item.progress(Math.min(0.99, sent / total)),
    onSuccess: () => settle.resolve(),
    onError: (error) => settle.reject(tusProblem(error)),
  });
  const previous = await upload.findPreviousUploads();
  if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
  item.setState(previous.length ? 'Resuming' : 'Uploading');
  const pause = item.control('Pause', () => {
    item.paused = !item.paused;
    const label = item.paused ? 'Resume' : 'Pause';
    pause.textContent = label;
    pause.setAttribute('aria-label', `${label} ${file.name}`);
    if (item.paused) {
      item.setState(`Paused at ${item.bar.getAttribute('aria-valuenow')}%`);
      upload.abort();
    } else {
      item.setState('Uploading');
      upload.start();
    }
  });
  item.control('Cancel', () => {
    // Terminating gives back the upload's slot and reservation at once.
    upload.abort(true).catch(() => {});
    settle.reject(new Error('cancelled'));
  });
  upload.start();
  await finished;
}

// Uploads `files`; ctx = { list, batchSize, streamMax }. Streaming batches
// and resumable uploads go in two lanes at once, each one upload at a time,
// so a drop holds at most two of the account's slots.
export async function uploadFiles(files, ctx) {
  const small = [];
  const large = [];
  for (const file of files) {
    const item = new Item(file, ctx.list);
    (file.size <= ctx.streamMax ? small : large).push(item);
  }
  const batches = [];
  for (let i = 0; i < small.length; i += ctx.batchSize) batches.push(small.slice(i, i + ctx.batchSize));
  const streaming = (async () => {
    for (const batch of batches) await streamBatch(batch);
  })();
  const resumables = (async () => {
    for (const item of large) {
      try {
        await resumable(item);
        item.done();
      } catch (error) {
        item.fail(error);
      }
    }
  })();
  await Promise.all([streaming, resumables]);
}
