// Optional enhancement of the example contact form. Without it the form posts normally and
// the contact executable answers with a whole page; with it the form is sent by fetch, the
// answer is shown in place (field errors next to their fields, everything else in the live
// region) and the challenge's id travels in the form rather than in the shared cookie,
// which another tab may replace: the id of the page's own image is copied from the cookie
// once the image has loaded (one challenge per page view), later ones come as JSON. Under
// a proof-of-work policy (config spam.challenge) pow-worker.js solves the challenge's puzzle
// in the background, with visible progress. No frameworks, no external resources; a
// browser too old to run it simply keeps the plain form.
'use strict';
(() => {
  const form = document.getElementById('contact-form');
  const status = document.getElementById('form-status');
  if (!form || !status || !window.fetch || !window.URLSearchParams) return;
  const img = form.querySelector('.captcha img');
  const audio = form.querySelector('.captcha-audio audio');
  // A page from before 0.2 has a link instead of the button; updates never replace an
  // operator's pages, so both must work.
  const newImage = form.querySelector('button[name="fw_action"]') || form.querySelector('.captcha a');
  const workerUrl = new URL('pow-worker.js', document.currentScript.src);
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
      working: 'Security check running in the background…',
      workDone: 'Security check done.',
      workDoneNoTyping: 'Security check done: you need not type the characters.',
      finishing: 'Finishing the security check…',
      audioFailed: 'The recording could not be played. Choose “Show a new image” for new characters.',
    },
    de: {
      sending: 'Ihre Nachricht wird gesendet …',
      thanks: 'Vielen Dank!',
      failed: 'Ihre Nachricht wurde nicht gesendet.',
      network: 'Der Server war nicht erreichbar. Ihre Nachricht wurde nicht gesendet; bitte versuchen Sie es erneut.',
      newImage: 'Ein neues Sicherheitsbild wird angezeigt.',
      noImage: 'Es konnte kein neues Sicherheitsbild geladen werden. Bitte laden Sie die Seite neu.',
      working: 'Sicherheitsprüfung läuft im Hintergrund …',
      workDone: 'Sicherheitsprüfung erledigt.',
      workDoneNoTyping: 'Sicherheitsprüfung erledigt: Sie müssen die Zeichen nicht abtippen.',
      finishing: 'Die Sicherheitsprüfung wird abgeschlossen …',
      audioFailed: 'Die Aufnahme konnte nicht abgespielt werden. Wählen Sie „Neues Bild anzeigen“ für neue Zeichen.',
    },
  }[lang];
  let captchaUrl = img.getAttribute('src');
  // The challenge id goes in the form only once we know one: an empty `captcha_id` would
  // override the cookie that the plain image set.
  const idField = Object.assign(document.createElement('input'), {
    type: 'hidden', name: 'captcha_id', disabled: true,
  });
  form.appendChild(idField);
  const powField = Object.assign(document.createElement('input'), {
    type: 'hidden', name: 'pow', disabled: true,
  });
  form.appendChild(powField);
  // The puzzle's progress, shown under the answer field while the worker runs.
  const powStatus = Object.assign(document.createElement('p'), { className: 'pow-status', hidden: true });
  powStatus.setAttribute('aria-live', 'polite');
  const powText = document.createElement('span');
  const powBar = Object.assign(document.createElement('progress'), { max: 100, value: 0 });
  powBar.setAttribute('aria-label', T.working);
  powStatus.append(powText, powBar);
  answer.insertAdjacentElement('afterend', powStatus);
  let work = null; // { worker, done: Promise<boolean> } for the current challenge
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

  const cookie = (name) =>
    document.cookie.split(/;\s*/).find((c) => c.startsWith(name + '='))?.slice(name.length + 1);

  // Starts the puzzle of challenge `id` (`bits` leading zero bits) in a worker; under
  // "pow-or-image" the typed characters are then optional. A worker that cannot start
  // leaves the form as it is: the characters still pass.
  function startWork(id, bits, policy) {
    if (work) work.worker.terminate();
    work = null;
    for (const k of ['ms', 'tried', 'bits']) delete powStatus.dataset[k];
    powField.disabled = true;
    answer.required = true;
    powStatus.hidden = true;
    if (!bits || !window.Worker) return;
    let worker;
    try {
      worker = new Worker(workerUrl);
    } catch {
      return;
    }
    const expected = 2 ** bits;
    powText.textContent = T.working;
    powBar.hidden = false;
    powBar.value = 0;
    powStatus.hidden = false;
    const done = new Promise((resolve) => {
      worker.onmessage = (ev) => {
        if (ev.data.progress) {
          // The expected number of tries is 2^bits; the bar stops short of the end until
          // the answer is found.
          powBar.value = Math.min(95, (100 * ev.data.progress) / expected);
          return;
        }
        // What the work cost, for whoever looks (the browser test reports it).
        Object.assign(powStatus.dataset, { ms: ev.data.ms, tried: ev.data.tried, bits });
        Object.assign(powField, { value: ev.data.nonce, disabled: false });
        powBar.hidden = true;
        if (policy === 'pow-or-image') {
          answer.required = false;
          powText.textContent = T.workDoneNoTyping;
        } else {
          powText.textContent = T.workDone;
        }
        worker.terminate();
        resolve(true);
      };
      worker.onerror = () => {
        powStatus.hidden = true;
        resolve(false);
      };
    });
    work = { worker, done };
    worker.postMessage({ id, bits });
  }

  // Points the form, the recording and the puzzle at challenge `id`.
  function bind(id, bits, policy) {
    Object.assign(idField, { value: id, disabled: false });
    if (audio) {
      const u = new URL(captchaUrl, location.href);
      u.search = new URLSearchParams({ audio: '1', id, lang }).toString();
      audio.src = u.toString();
    }
    startWork(id, bits, policy);
  }

  // The page's own image: its challenge is the one its answer's cookie names. Read once the
  // image has loaded, before another tab's image can replace the cookie.
  function bindPageImage() {
    const id = cookie('fw_captcha');
    if (!id) return;
    const [bits, policy] = (cookie('fw_pow') || '').split('.');
    bind(id, Number(bits) || 0, policy);
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
      bind(j.id, j.pow ? j.pow.bits : 0, j.policy);
      answer.value = '';
      return true;
    } catch (e) {
      idField.disabled = true;
      if (!quiet) say(e instanceof TypeError ? T.noImage : e.message, 'error', true);
      return false;
    }
  }

  newImage?.addEventListener('click', async (ev) => {
    ev.preventDefault();
    if (await loadCaptcha()) say(T.newImage, 'info', false);
  });

  if (audio) audio.addEventListener('error', () => say(T.audioFailed, 'error', false));

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
    if (work && powField.disabled) {
      say(T.finishing, 'busy', false);
      await work.done;
    }
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

  if (img.complete && img.naturalWidth) bindPageImage();
  else img.addEventListener('load', bindPageImage, { once: true });
})();
