//! Renders the recording of a CAPTCHA challenge, the alternative for visitors who cannot
//! see the picture: the characters of the answer spoken one by one in English or German,
//! from clips embedded in the executable, each at a slightly different speed and loudness,
//! with random pauses between them, over noise and over murmur made of other characters'
//! clips played backwards (so that a speech recognizer cannot simply cut at the silences),
//! as an 8 kHz 8-bit mono WAV of a few tens of kilobytes.
//!
//! Like `captcha_image`, this module owns only the rendering: a pure function of the
//! answer, the language and a seed. It never sees a challenge id, never touches a file,
//! never logs and never draws randomness of its own. The clips are made by
//! `shared/assets/make-captcha-audio.py` (espeak-ng) and checked when first used.

use crate::seeded::Rng;

/// Sample rate of the clips and of every recording.
pub const RATE: u32 = 8000;

/// The languages a recording can be spoken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Voice {
    /// English letter names ("ay", "cee", "three").
    En,
    /// German letter names ("ah", "tse", "drei").
    De,
}

static CLIPS_EN: &[u8] = include_bytes!("../assets/captcha-audio-en.bin");
static CLIPS_DE: &[u8] = include_bytes!("../assets/captcha-audio-de.bin");

/// Why a recording could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioError {
    /// The answer holds a character without a clip.
    NoClip(char),
    /// The embedded clip file is damaged (a build problem, never the visitor's).
    BadAssets(&'static str),
}

impl std::fmt::Display for AudioError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AudioError::NoClip(c) => write!(f, "no audio clip for {c:?}"),
            AudioError::BadAssets(lang) => write!(f, "the embedded {lang} audio clips are damaged"),
        }
    }
}

/// The clips of `voice`, one per character of the CAPTCHA alphabet, in its order.
fn clips(voice: Voice) -> Result<Vec<&'static [u8]>, AudioError> {
    let (mut data, name) = match voice {
        Voice::En => (CLIPS_EN, "English"),
        Voice::De => (CLIPS_DE, "German"),
    };
    let mut out = Vec::with_capacity(crate::captcha::ALPHABET.len());
    while !data.is_empty() {
        let (len, rest) = data
            .split_at_checked(4)
            .ok_or(AudioError::BadAssets(name))?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (clip, rest) = rest
            .split_at_checked(len)
            .ok_or(AudioError::BadAssets(name))?;
        out.push(clip);
        data = rest;
    }
    if out.len() != crate::captcha::ALPHABET.len() || out.iter().any(|c| c.len() < 800) {
        return Err(AudioError::BadAssets(name));
    }
    Ok(out)
}

/// Seconds of the pause before the first character, and the range of the pauses between
/// characters: long enough to write a character down, random so that the gaps do not
/// mark the cuts.
const LEAD_IN: (f32, f32) = (0.5, 0.9);
const GAP: (f32, f32) = (0.35, 0.9);
/// Range of the playback speed of one character (1.0: as recorded).
const SPEED: (f32, f32) = (0.88, 1.12);
/// Range of the loudness of one character, of the background murmur, and of the hiss.
const GAIN: (f32, f32) = (0.75, 1.0);
const MURMUR: (f32, f32) = (0.18, 0.28);
const HISS: f32 = 0.07;

/// Renders `answer` (characters of the CAPTCHA alphabet) spoken in `voice` as a WAV file.
///
/// `seed` drives every random choice (speeds, loudness, pauses, murmur and noise), so the
/// same seed gives the same bytes; the caller passes fresh OS randomness.
///
/// # Errors
///
/// [`AudioError::NoClip`] for a character outside the alphabet, [`AudioError::BadAssets`]
/// when the embedded clips are damaged.
pub fn render_wav(answer: &str, voice: Voice, seed: [u8; 32]) -> Result<Vec<u8>, AudioError> {
    let clips = clips(voice)?;
    let mut picked = Vec::new();
    for c in answer.chars() {
        let i = crate::captcha::ALPHABET
            .iter()
            .position(|&a| char::from(a) == c)
            .ok_or(AudioError::NoClip(c))?;
        picked.push(clips[i]);
    }
    let mut rng = Rng::from_seed(seed);
    let secs = |rng: &mut Rng, (lo, hi): (f32, f32)| (rng.range(lo, hi) * RATE as f32) as usize;

    // The voice track: every character at its own speed and loudness after a random pause.
    let mut voice_track: Vec<f32> = vec![0.0; secs(&mut rng, LEAD_IN)];
    for clip in &picked {
        let speed = rng.range(SPEED.0, SPEED.1);
        let gain = rng.range(GAIN.0, GAIN.1);
        voice_track.extend(stretch(clip, speed).into_iter().map(|s| s * gain));
        let gap = secs(&mut rng, GAP);
        voice_track.extend(std::iter::repeat_n(0.0, gap));
    }

    // The murmur: random other clips, backwards, one after another over the whole length,
    // so that there is sound in every pause and no clean edge before a character.
    let mut murmur: Vec<f32> = Vec::with_capacity(voice_track.len());
    while murmur.len() < voice_track.len() {
        let clip = clips[(rng.next_u64() % clips.len() as u64) as usize];
        let speed = rng.range(0.8, 1.25);
        let gain = rng.range(MURMUR.0, MURMUR.1);
        let mut part = stretch(clip, speed);
        part.reverse();
        murmur.extend(part.into_iter().map(|s| s * gain));
    }

    let samples: Vec<u8> = voice_track
        .iter()
        .zip(&murmur)
        .map(|(v, m)| {
            let hiss = rng.range(-HISS, HISS);
            let s = (v + m + hiss).clamp(-1.0, 1.0);
            (128.0 + s * 127.0).round() as u8
        })
        .collect();
    Ok(wav(&samples))
}

/// The clip as samples in [-1, 1], played at `speed` (linear interpolation).
fn stretch(clip: &[u8], speed: f32) -> Vec<f32> {
    let n = (clip.len() as f32 / speed) as usize;
    (0..n)
        .map(|i| {
            let pos = i as f32 * speed;
            let a = pos as usize;
            let frac = pos - a as f32;
            let at = |k: usize| (f32::from(clip[k.min(clip.len() - 1)]) - 128.0) / 128.0;
            at(a) * (1.0 - frac) + at(a + 1) * frac
        })
        .collect()
}

/// A RIFF/WAVE file around unsigned 8-bit mono samples.
fn wav(samples: &[u8]) -> Vec<u8> {
    let data_len = samples.len() as u32;
    let mut out = Vec::with_capacity(44 + samples.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&RATE.to_le_bytes());
    out.extend_from_slice(&RATE.to_le_bytes()); // bytes per second: one byte per sample
    out.extend_from_slice(&1u16.to_le_bytes()); // block align
    out.extend_from_slice(&8u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(samples);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(n: u8) -> [u8; 32] {
        [n; 32]
    }

    fn samples(wav: &[u8]) -> &[u8] {
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(&wav[8..16], b"WAVEfmt ");
        assert_eq!(u32::from_le_bytes(wav[24..28].try_into().unwrap()), RATE);
        assert_eq!(u16::from_le_bytes(wav[34..36].try_into().unwrap()), 8);
        assert_eq!(&wav[36..40], b"data");
        let len = u32::from_le_bytes(wav[40..44].try_into().unwrap()) as usize;
        assert_eq!(
            wav.len(),
            44 + len,
            "the data chunk covers the rest of the file"
        );
        &wav[44..]
    }

    /// Loudness (RMS around the midpoint) of each 50 ms frame.
    fn frames(s: &[u8]) -> Vec<f32> {
        s.chunks(400)
            .map(|c| {
                let sum: f32 = c.iter().map(|&x| (f32::from(x) - 128.0).powi(2)).sum();
                (sum / c.len() as f32).sqrt()
            })
            .collect()
    }

    #[test]
    fn every_character_of_the_alphabet_has_a_clip_in_both_languages() {
        for voice in [Voice::En, Voice::De] {
            let clips = clips(voice).expect("embedded clips parse");
            assert_eq!(clips.len(), crate::captcha::ALPHABET.len());
            for (clip, &c) in clips.iter().zip(crate::captcha::ALPHABET) {
                let len = clip.len() as f32 / RATE as f32;
                assert!(
                    (0.15..1.5).contains(&len),
                    "{voice:?} {}: {len} s",
                    char::from(c)
                );
                let loud = frames(clip).into_iter().fold(0.0, f32::max);
                assert!(
                    loud > 20.0,
                    "{voice:?} {} is speech, not silence",
                    char::from(c)
                );
            }
        }
    }

    /// The recording is a valid WAV whose length grows with the answer, whose speech
    /// stands out of the background, and which is never the same twice for one answer.
    #[test]
    fn a_recording_is_a_wav_with_speech_above_the_noise() {
        let a = render_wav("CD346", Voice::En, seed(1)).expect("render");
        let s = samples(&a);
        let secs = s.len() as f32 / RATE as f32;
        assert!((3.0..12.0).contains(&secs), "five characters in {secs} s");
        let f = frames(s);
        let mut sorted = f.clone();
        sorted.sort_by(f32::total_cmp);
        let quiet = sorted[sorted.len() / 10];
        let loud = sorted[sorted.len() * 95 / 100];
        assert!(
            quiet > 3.0,
            "no frame is silent: the murmur fills the pauses ({quiet})"
        );
        assert!(
            loud > quiet * 2.5,
            "speech stands out ({loud} against {quiet})"
        );

        let longer = render_wav("CD346KY9", Voice::En, seed(1)).expect("render");
        assert!(longer.len() > a.len());
        let again = render_wav("CD346", Voice::En, seed(2)).expect("render");
        assert_ne!(a, again, "another seed, another recording");
        assert_eq!(a, render_wav("CD346", Voice::En, seed(1)).expect("render"));
        let de = render_wav("CD346", Voice::De, seed(1)).expect("render");
        assert_ne!(a, de, "German clips differ from English ones");
    }

    #[test]
    fn a_character_without_a_clip_is_an_error() {
        assert_eq!(
            render_wav("CB", Voice::En, seed(1)),
            Err(AudioError::NoClip('B'))
        );
    }
}
