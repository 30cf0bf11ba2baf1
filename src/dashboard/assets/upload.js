// The uploader: one function per upload path, so another path (tus, for
// resumable uploads) is one more function and one more branch in routeFor.
//
//   streamBatch       files up to the streaming cap, in batches of at most
//                     the tier's batch size, one request per batch
//   presignedSingle   larger files, one PUT to the presigned URL (the local
//                     folder backend, which supports nothing else)
//   presignedMultipart larger files on S3: parts in parallel, pausable at
//                     part boundaries, then completion

import { api, csrfHeaders, networkError, noteStatus, problemOf } from './api.js';
import { el, formatBytes } from './ui.js';

const PARALLEL_PARTS = 4;

// Headers a page may not set itself; the browser sends the right ones.
const FORBIDDEN_HEADERS = new Set(['content-length', 'host', 'connection']);

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
    this.row.append(
      el('div', { role: 'alert', class: 'alert' }, `${this.file.name}: ${error.message}`),
    );
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

// PUTs bytes to a presigned URL with progress; resolves with the XHR.
function put(url, headers, body, onProgress) {
  const xhr = new XMLHttpRequest();
  xhr.open('PUT', url);
  for (const [k, v] of Object.entries(headers || {})) {
    if (!FORBIDDEN_HEADERS.has(k.toLowerCase())) xhr.setRequestHeader(k, v);
  }
  const done = send(xhr, body, onProgress).then((answer) => {
    if (answer.status < 200 || answer.status >= 300) {
      throw problemOf(answer.status, answer.responseText);
    }
    return answer;
  });
  return { xhr, done };
}

// The local-folder backend's URLs point back to intake itself: sent to the
// page's own origin, whatever host name the server believes it has.
function sameOriginIfLocal(url, storage) {
  if (storage !== 'fs') return url;
  const parsed = new URL(url, window.location.href);
  return parsed.pathname + parsed.search;
}

async function issue(item, multipart) {
  const file = item.file;
  return api('POST', '/upload/presigned', {
    filename: file.name,
    content_type: file.type || 'application/octet-stream',
    size: file.size,
    multipart,
  });
}

// Ends an upload that will not finish, so its slot and reservation are
// given back at once rather than at expiry.
function abandon(uploadId) {
  api('DELETE', `/upload/presigned/${uploadId}`).catch(() => {});
}

async function presignedSingle(item, ctx) {
  const issued = await issue(item, false);
  item.setState('Uploading');
  const request = put(sameOriginIfLocal(issued.url, ctx.storage), issued.headers, item.file, (loaded, total) =>
    item.progress(Math.min(0.99, loaded / total)),
  );
  item.control('Cancel', () => request.xhr.abort());
  try {
    await request.done;
  } catch (error) {
    abandon(issued.upload_id);
    throw error.aborted ? new Error('cancelled') : error;
  }
  item.setState('Checking');
  await api('POST', `/upload/presigned/${issued.upload_id}/complete`, {});
}

async function presignedMultipart(item, ctx) {
  const issued = await issue(item, true);
  const size = item.file.size;
  const parts = issued.parts.map((p) => {
    const start = (p.part_number - 1) * issued.part_size;
    return { ...p, start, end: Math.min(size, start + issued.part_size), loaded: 0, etag: null, request: null };
  });
  const report = () => item.progress(Math.min(0.99, parts.reduce((n, p) => n + p.loaded, 0) / size));
  item.setState('Uploading');
  const finished = new Promise((resolve, reject) => {
    let failed = false;
    const pump = () => {
      if (failed) return;
      if (parts.every((p) => p.etag)) {
        resolve();
        return;
      }
      let active = parts.filter((p) => p.request).length;
      while (!item.paused && active < PARALLEL_PARTS) {
        const part = parts.find((p) => !p.etag && !p.request);
        if (!part) break;
        active += 1;
        const url = sameOriginIfLocal(part.url, ctx.storage);
        part.request = put(url, {}, item.file.slice(part.start, part.end), (loaded) => {
          part.loaded = Math.min(loaded, part.end - part.start);
          report();
        });
        part.request.done.then(
          (xhr) => {
            part.request = null;
            part.etag = xhr.getResponseHeader('ETag');
            part.loaded = part.end - part.start;
            if (!part.etag) {
              failed = true;
              reject(new Error('storage did not expose the part’s ETag header (its CORS rule must expose ETag)'));
              return;
            }
            pump();
          },
          (error) => {
            part.request = null;
            part.loaded = 0;
            report();
            if (error.aborted && !item.cancelled) {
              pump();
              return;
            }
            if (!failed) {
              failed = true;
              parts.forEach((p) => p.request && p.request.xhr.abort());
              reject(error.aborted ? new Error('cancelled') : error);
            }
          },
        );
      }
    };
    // Pausing drops the parts in flight; resuming sends them again, so at
    // most one part's worth per connection is re-sent.
    const pause = item.control('Pause', () => {
      item.paused = !item.paused;
      pause.textContent = item.paused ? 'Resume' : 'Pause';
      pause.setAttribute('aria-label', `${item.paused ? 'Resume' : 'Pause'} ${item.file.name}`);
      if (item.paused) {
        item.setState('Paused');
        parts.forEach((p) => p.request && p.request.xhr.abort());
      } else {
        item.setState('Uploading');
        pump();
      }
    });
    item.control('Cancel', () => {
      item.cancelled = true;
      item.paused = false;
      if (parts.some((p) => p.request)) parts.forEach((p) => p.request && p.request.xhr.abort());
      else if (!failed) {
        failed = true;
        reject(new Error('cancelled'));
      }
    });
    pump();
  });
  try {
    await finished;
  } catch (error) {
    abandon(issued.upload_id);
    throw error;
  }
  item.controls.replaceChildren();
  item.setState('Checking');
  await api('POST', `/upload/presigned/${issued.upload_id}/complete`, {
    parts: parts.map((p) => ({ part_number: p.part_number, etag: p.etag })),
  });
}

// Which path a file takes.
export function routeFor(file, ctx) {
  if (file.size <= ctx.streamMax) return 'stream';
  return ctx.storage === 's3' ? 'multipart' : 'single';
}

const LARGE_PATHS = { single: presignedSingle, multipart: presignedMultipart };

// Uploads `files`; ctx = { list, batchSize, streamMax, storage }. Streaming
// batches and large files go in two lanes at once, each one request at a
// time, so an upload holds at most two of the account's slots.
export async function uploadFiles(files, ctx) {
  const small = [];
  const large = [];
  for (const file of files) {
    const item = new Item(file, ctx.list);
    (routeFor(file, ctx) === 'stream' ? small : large).push(item);
  }
  const batches = [];
  for (let i = 0; i < small.length; i += ctx.batchSize) batches.push(small.slice(i, i + ctx.batchSize));
  const streaming = (async () => {
    for (const batch of batches) await streamBatch(batch);
  })();
  const presigned = (async () => {
    for (const item of large) {
      try {
        await LARGE_PATHS[routeFor(item.file, ctx)](item, ctx);
        item.done();
      } catch (error) {
        item.fail(error);
      }
    }
  })();
  await Promise.all([streaming, presigned]);
}
