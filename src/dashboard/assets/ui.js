// Small DOM helpers: building elements without innerHTML (no injection from
// filenames or API text), formatting figures, alerts and confirmations.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (id) => document.getElementById(id);

const UNITS = ['B', 'KB', 'MB', 'GB', 'TB'];

// Binary units, as the tier table counts them (1 MB = 1,048,576 bytes).
export function formatBytes(n) {
  if (n === null || n === undefined) return 'unlimited';
  let value = Number(n);
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const digits = unit === 0 || value >= 10 || Number.isInteger(value) ? 0 : 1;
  return `${value.toFixed(digits)} ${UNITS[unit]}`;
}

export const formatCount = (n) => Number(n).toLocaleString('en');

export function formatDate(iso, withTime = false) {
  const date = new Date(iso);
  const options = { year: 'numeric', month: 'short', day: 'numeric' };
  if (withTime) Object.assign(options, { hour: '2-digit', minute: '2-digit' });
  return date.toLocaleString(undefined, options);
}

// An alert (role=alert, read out at once) with a dismiss button.
export function showAlert(container, message) {
  const text = el('span', { class: 'alert-text', text: message });
  const box = el('div', { role: 'alert', class: 'alert' }, text);
  const dismiss = el('button', {
    type: 'button',
    class: 'dismiss',
    'aria-label': 'Dismiss',
    text: '×',
    onclick: () => box.remove(),
  });
  box.append(dismiss);
  container.append(box);
  return box;
}

export function clear(container) {
  container.replaceChildren();
}

// A modal confirmation; resolves true when the user confirms.
export function confirmAction(message, okLabel) {
  const dialog = $('confirm');
  $('confirm-text').textContent = message;
  $('confirm-ok').textContent = okLabel;
  const opener = document.activeElement;
  return new Promise((resolve) => {
    dialog.addEventListener(
      'close',
      () => {
        if (opener && opener.isConnected) opener.focus();
        resolve(dialog.returnValue === 'ok');
      },
      { once: true },
    );
    dialog.returnValue = '';
    dialog.showModal();
    $('confirm-ok').focus();
  });
}
