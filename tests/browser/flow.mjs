// Drives Debian's Chromium (never a downloaded browser) through the example contact page
// the way visitors use it, for tests/browser.rs: once with scripts off (the plain form and
// the executables' own pages), once with contact.js on the English page and once on the
// German page. It learns CAPTCHA answers only from the `X-Formwarden-Test-Answer` header that
// test builds add to the captcha response, as a visitor's eyes would from the image.
//
// Usage: node flow.mjs --base http://127.0.0.1:PORT [--marker TEXT] [--shots DIR]
//        [--only nojs,js,de,audio | pow] [--pow-runs N]
// `pow` needs a site with spam.challenge = "pow-or-image"; the others one with "image".
// Environment: FW_CHROMIUM overrides /usr/bin/chromium; FW_FLOW_TIMEOUT (seconds, default
// 150) bounds the whole run.
//
// Prints one flat JSON object: facts per scenario (HTTP statuses of the contact POSTs, the
// texts shown, where the focus went) plus `failures`, the checks that did not hold, so that
// the Rust test can assert on the facts and show every failure at once. Exits 1 only when
// the flow itself could not run to its end (the object then has `error`).

import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const { values: opt } = parseArgs({
  options: {
    base: { type: 'string' },
    marker: { type: 'string', default: 'fw-browser-test' },
    shots: { type: 'string' },
    only: { type: 'string', default: 'nojs,js,de,audio' },
    'pow-runs': { type: 'string', default: '5' },
    runs: { type: 'string', default: '3' },
    alphabet: { type: 'string' },
  },
});
if (!opt.base) {
  console.error('usage: node flow.mjs --base URL [--marker TEXT] [--shots DIR] [--only LIST]');
  process.exit(2);
}
const base = opt.base.replace(/\/+$/, '');
const executablePath = process.env.FW_CHROMIUM || '/usr/bin/chromium';
// The flags that keep Chromium from reaching for Google's services, which this machine's
// closed network refuses many times a second; the user-data-dir is a fresh one per scenario.
const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--autoplay-policy=no-user-gesture-required',
];
const out = { failures: [] };

// A hung browser must not hang the test suite: past the deadline, report and leave.
setTimeout(() => {
  out.failures = out.failures.join('\n');
  out.error = 'flow.mjs timed out';
  console.log(JSON.stringify(out, null, 1));
  process.exit(1);
}, 1000 * Number(process.env.FW_FLOW_TIMEOUT || 150)).unref();

function check(key, ok, detail) {
  if (!ok) out.failures.push(`${key}: ${detail}`);
}

// A wrong answer of the same length that differs at every position, also ignoring case.
const wrong = (a) => [...a].map((c) => (c.toUpperCase() === 'Z' ? 'Y' : 'Z')).join('');
const isContactPost = (r) =>
  new URL(r.url()).pathname === '/cgi-bin/contact' && r.request().method() === 'POST';

async function withBrowser(name, javaScriptEnabled, fn) {
  const dir = mkdtempSync(join(tmpdir(), 'fw-chromium-'));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath, headless: true, args: ARGS, javaScriptEnabled,
    // An English browser everywhere: the German page must get German answers because its
    // script says so, not because the browser happens to prefer German.
    locale: 'en-US', viewport: { width: 820, height: 1000 },
  });
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(15000);
    await fn(page, context, track(page));
  } finally {
    await context.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

// Every captcha answer seen, by challenge id (from the picture's cookie or the recording's
// query), every captcha request, and every contact POST with its status.
function track(page) {
  const t = { answers: new Map(), posts: [], captchaGets: 0, audio: [] };
  page.on('response', async (resp) => {
    const url = new URL(resp.url());
    const path = url.pathname;
    if (path === '/cgi-bin/captcha') {
      t.captchaGets++;
      const h = await resp.allHeaders().catch(() => ({}));
      let id = /fw_captcha=([^;\s]+)/.exec(h['set-cookie'] || '')?.[1];
      if (url.searchParams.has('audio')) {
        id = url.searchParams.get('id');
        t.audio.push({ status: resp.status(), type: h['content-type'] || '', id });
      }
      if (id && h['x-formwarden-test-answer']) t.answers.set(id, h['x-formwarden-test-answer']);
    } else if (isContactPost(resp)) {
      const h = await resp.request().allHeaders().catch(() => ({}));
      t.posts.push({
        status: resp.status(), lang: h['accept-language'] || '', accept: h.accept || '',
        body: new URLSearchParams(resp.request().postData() || ''),
      });
    }
  });
  return t;
}

// The answer for challenge `id`; the header arrives with the response, which may be a
// moment after the page already shows the image.
async function answerFor(t, id) {
  for (let i = 0; i < 100 && !t.answers.has(id); i++) await new Promise((r) => setTimeout(r, 50));
  if (!t.answers.has(id)) throw new Error(`no test answer seen for challenge ${id}`);
  return t.answers.get(id);
}

// The plain form's challenge is the one its cookie names.
async function cookieId(context) {
  const c = (await context.cookies()).find((k) => k.name === 'fw_captcha');
  if (!c) throw new Error('no fw_captcha cookie');
  return c.value;
}

// The script's challenge is the one in its hidden field; waits until it differs from `prev`.
async function scriptId(page, prev) {
  await page.waitForFunction((p) => {
    const f = document.querySelector('input[name="captcha_id"]');
    return f && !f.disabled && f.value && f.value !== p;
  }, prev);
  return page.locator('input[name="captcha_id"]').inputValue();
}

async function fill(page, fields) {
  for (const [name, value] of Object.entries(fields)) await page.fill(`[name="${name}"]`, value);
}

async function shot(page, name) {
  if (opt.shots) await page.screenshot({ path: join(opt.shots, `${name}.png`), fullPage: true });
}

// A submit that navigates: waits for the POST's answer and for the new page to load.
async function submitPlain(page) {
  const [resp] = await Promise.all([
    page.waitForResponse(isContactPost), page.waitForEvent('load'),
    page.click('button[type="submit"]'),
  ]);
  return resp.status();
}

// A submit that stays on the page: waits for the POST's answer and the script's new state.
async function submitScript(page, prevId) {
  const [resp] = await Promise.all([
    page.waitForResponse(isContactPost), page.click('button[type="submit"]'),
  ]);
  const id = await scriptId(page, prevId);
  const state = await page.evaluate(() => ({
    live: document.getElementById('form-status').textContent.trim(),
    liveState: document.getElementById('form-status').dataset.state || '',
    focus: document.activeElement?.id || '',
    invalid: [...document.querySelectorAll('[aria-invalid="true"]')].map((e) => e.name).join(','),
  }));
  return { http: resp.status(), id, ...state };
}

// The inline error of field `id`: its text, and whether the field points at it.
const inlineError = (page, id) => page.evaluate((id) => {
  const el = document.getElementById(id);
  const err = document.getElementById(`${id}-error`);
  return {
    text: err ? err.textContent : '',
    described: (el.getAttribute('aria-describedby') || '').split(/\s+/).includes(`${id}-error`),
  };
}, id);

const scenarios = {
  async nojs() {
    await withBrowser('nojs', false, async (page, context, t) => {
      const first = await page.goto(`${base}/`);
      out['nojs.page_status'] = first.status();
      out['nojs.script_ran'] = (await page.locator('input[name="captcha_id"]').count()) > 0;
      const id1 = await cookieId(context);
      // "Show a new image" posts the form back: a new challenge, and nothing typed is lost.
      await fill(page, {
        name: 'Ada Lovelace', email: 'ada@example.net', subject: 'Plain form',
        message: `Sent without JavaScript.\n${opt.marker}-nojs`,
      });
      const [again] = await Promise.all([
        page.waitForResponse(isContactPost), page.waitForEvent('load'),
        page.click('button[name="fw_action"]'),
      ]);
      out['nojs.new_image_status'] = again.status();
      const id2 = await cookieId(context);
      out['nojs.new_image_changed'] = id2 !== id1;
      out['nojs.new_image_kept'] = [await page.inputValue('[name="name"]'),
        await page.inputValue('[name="message"]')].join('|');
      await page.fill('[name="captcha"]', wrong(await answerFor(t, id2)));
      out['nojs.wrong_status'] = await submitPlain(page);
      out['nojs.wrong_h1'] = await page.locator('h1').innerText();
      out['nojs.wrong_text'] = await page.locator('main').innerText();
      out['nojs.wrong_kept_name'] = await page.inputValue('[name="name"]');
      out['nojs.wrong_alert'] = await page.locator('[role="alert"]').innerText();
      const id3 = await cookieId(context);
      out['nojs.wrong_new_challenge'] = id3 !== id2;
      out['nojs.wrong_image_alt'] = await page.locator('img').getAttribute('alt');
      await shot(page, 'nojs-error');
      await page.fill('[name="captcha"]', await answerFor(t, id3));
      out['nojs.ok_status'] = await submitPlain(page);
      out['nojs.ok_h1'] = await page.locator('h1').innerText();
      out['nojs.ok_text'] = await page.locator('main').innerText();
      await shot(page, 'nojs-success');
      // The first POST was "Show a new image".
      t.posts.shift();
      out['nojs.posts'] = t.posts.map((p) => p.status).join(',');
      out['nojs.post_accept_json'] = t.posts.some((p) => p.accept.includes('application/json'));
      out['nojs.post_sent_captcha_id'] = t.posts.some((p) => p.body.has('captcha_id'));
    });
  },

  async js() {
    await withBrowser('js', true, async (page, context, t) => {
      out['js.page_status'] = (await page.goto(`${base}/`)).status();
      const id1 = await scriptId(page, '');
      // One challenge per page view: the script binds the picture's own challenge.
      out['js.captcha_requests_on_load'] = t.captchaGets;
      check('js.bound_page_image', id1 === (await cookieId(context)), 'the form names the cookie\'s challenge');
      // The button must swap the image in place: a reload would lose this page-level marker.
      await page.evaluate(() => { window.fwNotReloaded = true; });
      await page.click('button[name="fw_action"]');
      const id2 = await scriptId(page, id1);
      out['js.new_image_in_place'] = await page.evaluate(() => window.fwNotReloaded === true);
      out['js.new_image_status'] = await page.locator('#form-status').innerText();
      // Fields the browser accepts but the server refuses, so the server's field errors show.
      await fill(page, {
        name: '   ', email: 'ada@localhost', subject: 'With script',
        message: `Sent with contact.js.\n${opt.marker}-js`, captcha: await answerFor(t, id2),
      });
      const bad = await submitScript(page, id2);
      out['js.fields_status'] = bad.http;
      out['js.fields_live'] = bad.live;
      out['js.fields_invalid'] = bad.invalid;
      out['js.fields_focus'] = bad.focus;
      const nameErr = await inlineError(page, 'f-name');
      out['js.fields_name_error'] = nameErr.text;
      out['js.fields_name_described'] = nameErr.described;
      out['js.fields_email_error'] = (await inlineError(page, 'f-email')).text;
      await shot(page, 'js-fields');
      await fill(page, { name: 'Grace Hopper', email: 'grace@example.net' });
      out['js.fields_cleared_on_input'] = await page.evaluate(
        () => !document.querySelector('#f-name[aria-invalid], #f-name-error'));
      await page.fill('[name="captcha"]', wrong(await answerFor(t, bad.id)));
      const refused = await submitScript(page, bad.id);
      out['js.wrong_status'] = refused.http;
      out['js.wrong_live'] = refused.live;
      out['js.wrong_invalid'] = refused.invalid;
      out['js.wrong_focus'] = refused.focus;
      out['js.wrong_captcha_error'] = (await inlineError(page, 'f-captcha')).text;
      out['js.wrong_captcha_described'] = (await inlineError(page, 'f-captcha')).described;
      await shot(page, 'js-error');
      await page.fill('[name="captcha"]', await answerFor(t, refused.id));
      const sent = await submitScript(page, refused.id);
      out['js.ok_status'] = sent.http;
      out['js.ok_live'] = sent.live;
      out['js.ok_state'] = sent.liveState;
      out['js.ok_focus'] = sent.focus;
      out['js.ok_form_reset'] = (await page.inputValue('[name="name"]')) === '';
      await shot(page, 'js-success');
      out['js.posts'] = t.posts.map((p) => p.status).join(',');
      out['js.post_accept_json'] = t.posts.every((p) => p.accept.includes('application/json'));
      out['js.post_lang'] = [...new Set(t.posts.map((p) => p.lang))].join(',');
      out['js.new_image_is_data'] = await page.evaluate(
        () => /^data:image\/png/.test(document.querySelector('.captcha img').src));
      // Each POST named the challenge the page showed at that moment.
      const sentIds = t.posts.map((p) => p.body.get('captcha_id')).join(',');
      check('js.post_captcha_ids', sentIds === [id2, bad.id, refused.id].join(','),
        `sent ${sentIds}, shown ${[id2, bad.id, refused.id]}`);
      out['js.url_unchanged'] = page.url() === `${base}/`;
    });
  },

  async de() {
    await withBrowser('de', true, async (page, context, t) => {
      out['de.page_status'] = (await page.goto(`${base}/de/`)).status();
      out['de.html_lang'] = await page.getAttribute('html', 'lang');
      out['de.link_to_english'] = await page.locator('a[hreflang="en"]').innerText();
      const id1 = await scriptId(page, '');
      await fill(page, {
        name: 'Emmy Noether', email: 'emmy@localhost', subject: 'Deutsch',
        message: `Mit Skript gesendet.\n${opt.marker}-de`, captcha: await answerFor(t, id1),
      });
      const bad = await submitScript(page, id1);
      out['de.fields_status'] = bad.http;
      out['de.fields_live'] = bad.live;
      out['de.fields_focus'] = bad.focus;
      out['de.fields_email_error'] = (await inlineError(page, 'f-email')).text;
      await page.fill('[name="email"]', 'emmy@example.net');
      await page.fill('[name="captcha"]', wrong(await answerFor(t, bad.id)));
      const refused = await submitScript(page, bad.id);
      out['de.wrong_status'] = refused.http;
      out['de.wrong_live'] = refused.live;
      out['de.wrong_focus'] = refused.focus;
      await shot(page, 'de-error');
      await page.fill('[name="captcha"]', await answerFor(t, refused.id));
      const sent = await submitScript(page, refused.id);
      out['de.ok_status'] = sent.http;
      out['de.ok_live'] = sent.live;
      out['de.ok_focus'] = sent.focus;
      await shot(page, 'de-success');
      out['de.posts'] = t.posts.map((p) => p.status).join(',');
      out['de.post_lang'] = [...new Set(t.posts.map((p) => p.lang))].join(',');
    });
  },

  // A visitor who listens instead of looking: the recording of the page's own challenge,
  // played in the browser, then the characters typed.
  async audio() {
    await withBrowser('audio', true, async (page, context, t) => {
      out['audio.page_status'] = (await page.goto(`${base}/`)).status();
      const id = await scriptId(page, '');
      const meta = await page.evaluate(() => new Promise((resolve) => {
        const a = document.querySelector('.captcha-audio audio');
        a.addEventListener('loadedmetadata', () => resolve({ duration: a.duration, src: a.src }), { once: true });
        a.addEventListener('error', () => resolve({ duration: -1, src: a.src }), { once: true });
        a.play().catch(() => {});
      }));
      out['audio.duration_ok'] = meta.duration > 2 && meta.duration < 15;
      out['audio.src_names_challenge'] = meta.src.includes(`id=${id}`);
      // The response event is handled a moment after the player already has the data.
      for (let i = 0; i < 100 && !t.audio.length; i++) await new Promise((r) => setTimeout(r, 50));
      out['audio.first'] = t.audio.map((a) => `${a.status} ${a.type}`).join(',');
      // Played again after the page forgot it: the same recording, not a new rendering.
      const heard = t.audio.length;
      const again = await page.evaluate(() => new Promise((resolve) => {
        const a = document.querySelector('.captcha-audio audio');
        a.addEventListener('loadedmetadata', () => resolve(a.duration), { once: true });
        a.addEventListener('error', () => resolve(-1), { once: true });
        a.src = a.src + '&again=1';
        a.play().catch(() => {});
      }));
      for (let i = 0; i < 100 && t.audio.length === heard; i++) await new Promise((r) => setTimeout(r, 50));
      out['audio.again_status'] = t.audio.at(-1)?.status;
      out['audio.again_same'] = again === meta.duration;
      await fill(page, {
        name: 'Louis Braille', email: 'louis@example.net', subject: 'Listening',
        message: `Sent by ear.\n${opt.marker}-audio`, captcha: await answerFor(t, id),
      });
      const sent = await submitScript(page, id);
      out['audio.ok_status'] = sent.http;
      out['audio.ok_live'] = sent.live;
    });
  },

  // Proof-of-work under "pow-or-image": the worker solves the page's puzzle, the visitor
  // types no characters. Each run is a new challenge; the worker's times are reported.
  async pow() {
    await withBrowser('pow', true, async (page, context, t) => {
      out['pow.page_status'] = (await page.goto(`${base}/`)).status();
      const times = [];
      let id = '';
      for (let i = 0; i < Number(opt['pow-runs']); i++) {
        if (i > 0) await page.click('button[name="fw_action"]');
        id = await scriptId(page, id);
        await page.waitForFunction(() => document.querySelector('input[name="pow"]')?.disabled === false
          && document.querySelector('.pow-status').dataset.ms, null, { timeout: 120000 });
        const r = await page.evaluate(() => ({ ...document.querySelector('.pow-status').dataset }));
        times.push({ ms: Number(r.ms), tried: Number(r.tried), bits: Number(r.bits) });
      }
      out['pow.runs'] = times.length;
      out['pow.bits'] = times[0].bits;
      out['pow.ms'] = times.map((x) => x.ms).join(',');
      out['pow.tried'] = times.map((x) => x.tried).join(',');
      out['pow.captcha_required'] = await page.evaluate(() => document.getElementById('f-captcha').required);
      out['pow.status_text'] = await page.locator('.pow-status').innerText();
      await fill(page, {
        name: 'Ray Charles', email: 'ray@example.net', subject: 'By work',
        message: `Sent by proof-of-work.\n${opt.marker}-pow`,
      });
      const sent = await submitScript(page, id);
      out['pow.ok_status'] = sent.http;
      out['pow.ok_live'] = sent.live;
      const body = t.posts.at(-1).body;
      out['pow.post_had_work'] = /^\d+$/.test(body.get('pow') || '');
      out['pow.post_captcha'] = body.get('captcha');
    });
  },

  // Class (e) of the bot suite (tests/bots.rs): a headless browser with the page's script
  // on, whose bot screenshots the picture, reads it with tesseract, fills the visible
  // fields, waits out the time trap and sends. Reports per attempt the guess, the true
  // answer (test hook) and the status.
  async ocrbot() {
    await withBrowser('ocrbot', true, async (page, context, t) => {
      const dir = mkdtempSync(join(tmpdir(), 'fw-ocrbot-'));
      try {
        for (let i = 0; i < Number(opt.runs); i++) {
          await page.goto(`${base}/`);
          const id = await scriptId(page, '');
          const start = Date.now();
          const png = join(dir, `c${i}.png`);
          await page.locator('.captcha img').screenshot({ path: png });
          let guess = '';
          // The product's alphabet, passed by the test (captcha::ALPHABET_TEXT).
          const alphabet = opt.alphabet || '';
          if (!/^[A-Z0-9]+$/.test(alphabet)) throw new Error('ocrbot needs --alphabet');
          for (const psm of ['7', '8']) {
            const text = execFileSync('tesseract', [png, 'stdout', '--psm', psm, '-c',
              `tessedit_char_whitelist=${alphabet}`], { stdio: ['ignore', 'pipe', 'ignore'] });
            guess = [...String(text)].filter((c) => alphabet.includes(c)).join('');
            if (guess.length >= 4 && guess.length <= 8) break;
          }
          await fill(page, {
            name: 'Robo Tester', email: 'robo@example.net', subject: 'Offer',
            message: `Read by a machine.\n${opt.marker}-${i}x`, captcha: guess || 'AAAA',
          });
          await page.waitForTimeout(Math.max(0, 3300 - (Date.now() - start)));
          const [resp] = await Promise.all([
            page.waitForResponse(isContactPost), page.click('button[type="submit"]'),
          ]);
          out[`ocrbot.${i}.guess`] = guess;
          out[`ocrbot.${i}.answer`] = await answerFor(t, id);
          out[`ocrbot.${i}.status`] = resp.status();
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  },
};

try {
  for (const name of opt.only.split(',').filter(Boolean)) {
    if (!scenarios[name]) throw new Error(`unknown scenario ${name}`);
    await scenarios[name]();
  }
  out.failures = out.failures.join('\n');
  console.log(JSON.stringify(out, null, 1));
} catch (e) {
  out.failures = out.failures.join('\n');
  out.error = String(e && e.stack ? e.stack : e);
  console.log(JSON.stringify(out, null, 1));
  process.exit(1);
}
