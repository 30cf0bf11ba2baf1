// The dashboard's only way to the API: the session cookie, plus the CSRF
// token on requests that change state. The token lives in memory only; a
// reloaded page gets it again from GET /auth/session.

let csrfToken = null;
let onUnauthorized = () => {};

export function setCsrf(token) {
  csrfToken = token;
}

export function csrfHeaders() {
  return csrfToken ? { 'X-CSRF-Token': csrfToken } : {};
}

// Called when a request finds the session gone, so the page can sign out.
export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

// An API answer that was not a success; `message` is the problem's detail.
export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && problem.detail) || `the request failed (HTTP ${status})`);
    this.status = status;
    this.code = problem && problem.code;
    this.problem = problem;
  }
}

export const networkError = () =>
  new ApiError(0, { detail: 'the server could not be reached; check the connection and try again' });

// A problem from any answer body, whatever parsed.
export function problemOf(status, text) {
  try {
    const body = JSON.parse(text);
    if (body && typeof body === 'object') return new ApiError(status, body);
  } catch {
    // not JSON: fall through
  }
  return new ApiError(status, null);
}

export function noteStatus(status) {
  if (status === 401) onUnauthorized();
}

export async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && method !== 'HEAD') Object.assign(headers, csrfHeaders());
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw networkError();
  }
  if (resp.status === 204) return null;
  const text = await resp.text();
  if (!resp.ok) {
    noteStatus(resp.status);
    throw problemOf(resp.status, text);
  }
  return text ? JSON.parse(text) : null;
}
