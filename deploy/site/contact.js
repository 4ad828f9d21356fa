// Optional enhancement of the example contact form. Without it the form posts normally and
// the contact executable answers with a whole page; with it the form is sent by fetch, the
// answer is shown in place (field errors next to their fields, everything else in the live
// region) and the CAPTCHA is fetched as JSON so that its id travels in the form rather than
// in the shared cookie, which another tab may have replaced. No frameworks, no external
// resources; a browser too old to run it simply keeps the plain form.
'use strict';
(() => {
  const form = document.getElementById('contact-form');
  const status = document.getElementById('form-status');
  if (!form || !status || !window.fetch || !window.URLSearchParams) return;
  const img = form.querySelector('.captcha img');
  const newImage = form.querySelector('.captcha a');
  const answer = form.elements.captcha;
  const button = form.querySelector('button[type="submit"]');
  // Our own few strings follow the page; the server's messages come localized because every
  // request names the page's language.
  const lang = /^de\b/i.test(document.documentElement.lang) ? 'de' : 'en';
  const T = {
    en: {
      sending: 'Sending your message…',
      thanks: 'Thank you!',
      failed: 'Your message was not sent.',
      network: 'The server could not be reached. Your message was not sent; please try again.',
      newImage: 'A new security image is shown.',
      noImage: 'A new security image could not be loaded. Please reload the page.',
    },
    de: {
      sending: 'Ihre Nachricht wird gesendet …',
      thanks: 'Vielen Dank!',
      failed: 'Ihre Nachricht wurde nicht gesendet.',
      network: 'Der Server war nicht erreichbar. Ihre Nachricht wurde nicht gesendet; bitte versuchen Sie es erneut.',
      newImage: 'Ein neues Sicherheitsbild wird angezeigt.',
      noImage: 'Es konnte kein neues Sicherheitsbild geladen werden. Bitte laden Sie die Seite neu.',
    },
  }[lang];
  let captchaUrl = img.getAttribute('src');
  // The challenge id goes in the form only once we know one: an empty `captcha_id` would
  // override the cookie that the plain image set.
  const idField = Object.assign(document.createElement('input'), {
    type: 'hidden', name: 'captcha_id', disabled: true,
  });
  form.appendChild(idField);
  // The status region takes the focus when there is no field to send the visitor to.
  status.tabIndex = -1;

  // A new paragraph per message, so that screen readers announce it even when its text is
  // the same as the last one.
  function say(text, state, focus) {
    const p = document.createElement('p');
    p.textContent = text;
    status.replaceChildren(p);
    status.dataset.state = state;
    if (focus) status.focus();
  }

  // Adds or removes `id` in the field's aria-describedby, keeping the ids already there.
  function describe(el, id, on) {
    const ids = (el.getAttribute('aria-describedby') || '').split(/\s+/)
      .filter((x) => x && x !== id);
    if (on) ids.unshift(id);
    if (ids.length) el.setAttribute('aria-describedby', ids.join(' '));
    else el.removeAttribute('aria-describedby');
  }

  function clearError(el) {
    document.getElementById(el.id + '-error')?.remove();
    el.removeAttribute('aria-invalid');
    describe(el, el.id + '-error', false);
  }

  function markInvalid(el, text) {
    clearError(el);
    el.insertAdjacentElement('afterend', Object.assign(document.createElement('span'), {
      id: el.id + '-error', className: 'field-error', textContent: text,
    }));
    el.setAttribute('aria-invalid', 'true');
    describe(el, el.id + '-error', true);
  }

  // Fetches a fresh challenge and shows it. When that fails the form falls back to the
  // challenge the cookie names; `quiet` is for the first load, where the plain image and its
  // cookie are still good and the visitor need not hear about it.
  async function loadCaptcha(quiet) {
    try {
      const r = await fetch(captchaUrl, {
        headers: { Accept: 'application/json', 'Accept-Language': lang },
        cache: 'no-store', credentials: 'same-origin',
      });
      const j = await r.json().catch(() => null);
      if (!r.ok || !j || !j.id) throw new Error((j && j.message) || T.noImage);
      Object.assign(img, { src: j.image, width: j.width, height: j.height });
      Object.assign(idField, { value: j.id, disabled: false });
      answer.value = '';
      return true;
    } catch (e) {
      idField.disabled = true;
      if (!quiet) say(e instanceof TypeError ? T.noImage : e.message, 'error', true);
      return false;
    }
  }

  newImage.addEventListener('click', async (ev) => {
    ev.preventDefault();
    if (await loadCaptcha()) say(T.newImage, 'info', false);
  });

  // A field the visitor changes is no longer marked as wrong.
  form.addEventListener('input', (ev) => {
    if (ev.target.getAttribute('aria-invalid') === 'true') clearError(ev.target);
  });

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (button.disabled) return;
    button.disabled = true;
    form.setAttribute('aria-busy', 'true');
    for (const el of form.querySelectorAll('[aria-invalid="true"]')) clearError(el);
    say(T.sending, 'busy', false);
    let r = null;
    let j = null;
    try {
      r = await fetch(form.action, {
        method: 'POST',
        headers: { Accept: 'application/json', 'Accept-Language': lang },
        body: new URLSearchParams(new FormData(form)),
        credentials: 'same-origin',
      });
      j = await r.json().catch(() => null);
    } catch {
      r = null;
    }
    button.disabled = false;
    form.removeAttribute('aria-busy');
    if (r && r.ok && j && j.ok) {
      form.reset();
      say(T.thanks + ' ' + j.message, 'ok', true);
      // A fresh challenge in case the visitor writes again; quietly, so that a failure to
      // get one never replaces the thanks (the next attempt would then fetch one).
      await loadCaptcha(true);
      return;
    }
    // A new image after every failed attempt, as the server's own error page does: the
    // visitor may have misread this one, and one simple rule beats guessing which failures
    // left the old challenge usable.
    const fields = Object.assign({}, j && j.fields);
    if (j && /^captcha_/.test(j.error)) fields.captcha = j.message;
    for (const [name, text] of Object.entries(fields)) {
      if (form.elements[name] && form.elements[name].id) markInvalid(form.elements[name], text);
    }
    let msg = T.network;
    if (r) msg = j && j.message ? j.message : T.failed + ' (HTTP ' + r.status + ')';
    say(msg, 'error', false);
    if (j && j.captcha) captchaUrl = j.captcha;
    if (!(await loadCaptcha())) return;
    const first = form.querySelector('[aria-invalid="true"]');
    if (first) first.focus();
    else status.focus();
  });

  loadCaptcha(true);
})();
