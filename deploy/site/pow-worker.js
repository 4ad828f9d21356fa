// The proof-of-work of the contact form, run by contact.js in a Web Worker so that the page
// stays responsive: find a decimal nonce such that SHA-256("<challenge id>:<nonce>") starts
// with at least `bits` zero bits. The server checks the answer with one hash. SHA-256 is
// written out here (one 64-byte block is all a message this short needs) because
// crypto.subtle.digest is asynchronous and costs far more per call than the hash itself.
'use strict';

// The round constants and the initial state: the first 32 bits of the fractional parts of
// the cube roots of the first 64 primes and of the square roots of the first 8 (FIPS 180-4,
// section 4.2.2 and 5.3.3), computed rather than typed in.
const PRIMES = [];
for (let n = 2; PRIMES.length < 64; n++) {
  if (PRIMES.every((p) => n % p)) PRIMES.push(n);
}
// Int32 throughout: every operation below is 32-bit, and values above 2^31 from a
// Uint32Array would make V8 box them as doubles, which made it 50 times slower in Chromium.
const frac32 = (x) => ((x - Math.floor(x)) * 0x100000000) | 0;
const K = Int32Array.from(PRIMES, (p) => frac32(Math.cbrt(p)));
const H = Int32Array.from(PRIMES.slice(0, 8), (p) => frac32(Math.sqrt(p)));
const W = new Int32Array(64);

// Leading zero bits of SHA-256(text), for ASCII text of at most 55 bytes (one block).
function zeroBits(text) {
  W.fill(0);
  const n = text.length;
  for (let i = 0; i < n; i++) W[i >> 2] |= text.charCodeAt(i) << (24 - 8 * (i & 3));
  W[n >> 2] |= 0x80 << (24 - 8 * (n & 3));
  W[15] = n * 8;
  for (let i = 16; i < 64; i++) {
    const x = W[i - 15];
    const y = W[i - 2];
    const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
    const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
    W[i] = (W[i - 16] + s0 + W[i - 7] + s1) | 0;
  }
  let a = H[0]; let b = H[1]; let c = H[2]; let d = H[3];
  let e = H[4]; let f = H[5]; let g = H[6]; let h = H[7];
  for (let i = 0; i < 64; i++) {
    const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
    const t1 = (h + S1 + ((e & f) ^ (~e & g)) + K[i] + W[i]) | 0;
    const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
    const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
    h = g; g = f; f = e; e = (d + t1) | 0;
    d = c; c = b; b = a; a = (t1 + t2) | 0;
  }
  // Only the first words matter for the count; a puzzle never asks for more than 64 bits.
  const w0 = Math.clz32((a + H[0]) | 0);
  if (w0 < 32) return w0;
  return 32 + Math.clz32((b + H[1]) | 0);
}

// { id, bits } in; { progress: tried } now and then, and { nonce, tried, ms } at the end.
self.onmessage = (ev) => {
  const { id, bits } = ev.data;
  const start = Date.now();
  for (let nonce = 0; ; nonce++) {
    if (zeroBits(`${id}:${nonce}`) >= bits) {
      self.postMessage({ nonce: String(nonce), tried: nonce + 1, ms: Date.now() - start });
      return;
    }
    if ((nonce & 0x3fff) === 0x3fff) self.postMessage({ progress: nonce + 1 });
  }
};
