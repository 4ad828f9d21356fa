//! Renders the picture of a CAPTCHA challenge: the answer text drawn with the embedded
//! font, each character rotated, scaled and shifted so that neighbours touch, the whole
//! warped by a sine wave, crossed by noise lines, one stroke as thick as the letters and
//! speckles, with a wavy shaded band, encoded as a small 8-bit grayscale PNG.
//! scripts/ocr.py measures how often tesseract reads the result (docs/SPAM.md).
//!
//! This module owns only the drawing. It is a pure function of the answer and a seed: it
//! never sees a challenge id, never reads or writes a file, never logs, and never draws
//! randomness of its own, so that the caller decides where the seed comes from (fresh OS
//! randomness per challenge) and the same seed always reproduces the same bytes in tests.
//! Generating the answer, storing it and checking it belong to the CAPTCHA service.
//!
//! The font is a subset of DejaVu Sans Bold renamed to "Formwarden Captcha Sans"; it lives
//! in `shared/assets/` together with its licence and the script that produced it.

use crate::seeded::Rng;
use ab_glyph::{
    Font, FontRef, GlyphId, Outline, OutlineCurve, OutlinedGlyph, Point, PxScaleFactor, Rect, point,
};
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::error::{ParameterError, ParameterErrorKind};
use image::{ExtendedColorType, ImageEncoder, ImageError};

/// Width and height of every rendered challenge image, in pixels.
pub const WIDTH: u32 = 200;
/// Height of every rendered challenge image, in pixels (see [`WIDTH`]).
pub const HEIGHT: u32 = 70;

// The characters an answer may contain: the service's alphabet, whose comment says which
// look-alikes are left out. The embedded font holds exactly these glyphs, so a character
// outside the set could not be drawn anyway, and one definition keeps the two together.
use crate::captcha::ALPHABET_TEXT as ALPHABET;
/// Fewest characters an answer may have.
const MIN_LEN: usize = 4;
/// Most characters an answer may have; more would have to be drawn too small to read.
const MAX_LEN: usize = 8;

/// The embedded font, built by `shared/assets/make-captcha-font.py`.
static FONT_BYTES: &[u8] = include_bytes!("../assets/captcha-font.ttf");

// Picture layout, in pixels. The margins keep rotated and warped glyphs inside the frame.
const W: usize = WIDTH as usize;
const H: usize = HEIGHT as usize;
const MARGIN_X: f32 = 9.0;
const MARGIN_Y: f32 = 4.0;
/// Upper bound on the font size, so that a short answer is not drawn edge to edge.
const MAX_EM_PX: f32 = 46.0;
/// Largest rotation of a single character, in radians (about 20°).
const MAX_ANGLE: f32 = 0.35;
/// Longest straight piece an outline is cut into before warping; the wave bends each
/// piece only at its ends, so pieces must be short for the bend to look smooth.
const MAX_PIECE_PX: f32 = 2.5;

/// Renders `answer` (characters from the CAPTCHA alphabet, `captcha::ALPHABET`, 4 to 8 of
/// them) as a PNG.
///
/// `seed` drives every random choice (per-glyph rotation/offset/scale, wave distortion,
/// noise lines and dots, colours), so the same seed gives the same image; the caller passes
/// fresh OS randomness per challenge.
///
/// # Errors
///
/// Returns [`ImageError::Parameter`] when the answer is too short, too long or holds a
/// character outside the alphabet, or when the embedded font cannot be read; returns the
/// encoder's error if PNG encoding fails.
pub fn render_png(answer: &str, seed: [u8; 32]) -> Result<Vec<u8>, ImageError> {
    let chars = validate(answer)?;
    let font = FontRef::try_from_slice(FONT_BYTES)
        .map_err(|_| parameter_error("the embedded CAPTCHA font could not be parsed"))?;
    let mut rng = Rng::from_seed(seed);
    let pixels = draw(&font, &chars, &mut rng)?;
    encode(&pixels)
}

/// Checks the answer before anything is drawn, so that a caller's bug shows up as an error
/// instead of an unreadable or clipped picture.
fn validate(answer: &str) -> Result<Vec<char>, ImageError> {
    let chars: Vec<char> = answer.chars().collect();
    if !(MIN_LEN..=MAX_LEN).contains(&chars.len()) {
        return Err(parameter_error(&format!(
            "a CAPTCHA answer must have {MIN_LEN} to {MAX_LEN} characters, not {}",
            chars.len()
        )));
    }
    if chars.iter().any(|c| !ALPHABET.contains(*c)) {
        return Err(parameter_error(
            "a CAPTCHA answer may only hold characters of the CAPTCHA alphabet",
        ));
    }
    Ok(chars)
}

fn parameter_error(message: &str) -> ImageError {
    ImageError::Parameter(ParameterError::from_kind(ParameterErrorKind::Generic(
        message.to_owned(),
    )))
}

/// Encodes the grayscale pixels. The fast compressor is used on purpose: on these images
/// it is about fifty times quicker than the best setting (0.04 ms against 2 ms) for files
/// only about 8 % larger (some 5.7 KB against 5.3 KB).
fn encode(pixels: &[u8]) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::with_capacity(8 * 1024);
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
        .write_image(pixels, WIDTH, HEIGHT, ExtendedColorType::L8)?;
    Ok(out)
}

/// Draws the whole picture and returns its 8-bit gray levels, row by row.
fn draw(font: &FontRef<'_>, chars: &[char], rng: &mut Rng) -> Result<Vec<u8>, ImageError> {
    let upem = font
        .units_per_em()
        .ok_or_else(|| parameter_error("the embedded CAPTCHA font has no units per em"))?;
    let shapes = chars
        .iter()
        .map(|&c| GlyphShape::load(font, c))
        .collect::<Result<Vec<_>, _>>()?;

    // The background is a light, slightly uneven gray so that the text keeps strong
    // contrast while a plain threshold does not separate ink from paper perfectly.
    let paper = rng.range(228.0, 246.0);
    let tilt = rng.range(-10.0, 10.0);
    let mut canvas = Canvas::new(|x, _y| paper + tilt * (x / WIDTH as f32 - 0.5));
    let wave = Wave::random(rng);
    let mut scratch = vec![0.0; W * H];

    // Faint wide curves behind the text add clutter without hiding anything.
    for _ in 0..3 {
        let points = wave.apply_all(random_curve(rng, 4.0, HEIGHT as f32 - 4.0));
        let level = rng.range(175.0, 205.0);
        let half_width = rng.range(1.2, 2.6);
        canvas.stroke(&mut scratch, &points, half_width, level);
    }

    let placements = layout(&shapes, upem, &wave, rng);
    // One character is drawn as an outline, another gets the shaded band below: two
    // different characters, so that each image has two that plain OCR misreads. (Two
    // outlined characters were tried: OCR read no fewer, and people read fewer.)
    let n = placements.len();
    let hollow = rng.index(n);
    let shaded = (hollow + 1 + rng.index(n.saturating_sub(1))) % n;
    for (i, placement) in placements.iter().enumerate() {
        let level = rng.range(10.0, 60.0);
        if i == hollow {
            canvas.hollow_glyph(&mut scratch, placement, &wave, rng.range(1.0, 1.3), level);
        } else {
            canvas.glyph(placement, &wave, level);
        }
    }

    // Dark lines crossing the text. They are thinner and a little lighter than the text,
    // so that a person's eye separates them from the letters, while their levels overlap
    // the text's enough that a plain threshold does not remove them.
    for _ in 0..2 {
        let points = wave.apply_all(random_curve(rng, 18.0, HEIGHT as f32 - 18.0));
        let level = rng.range(55.0, 105.0);
        let half_width = rng.range(0.55, 0.95);
        canvas.stroke(&mut scratch, &points, half_width, level);
    }
    let straight = random_line(rng);
    let level = rng.range(60.0, 120.0);
    canvas.stroke(&mut scratch, &straight, rng.range(0.45, 0.75), level);
    // One stroke as thick and dark as the letters' own, through the middle of the text:
    // a person follows it as a line, but a filter cannot tell it from ink, and it joins
    // the characters into one shape for OCR's segmentation.
    let through = wave.apply_all(random_curve(rng, 28.0, HEIGHT as f32 - 28.0));
    let level = rng.range(25.0, 65.0);
    canvas.stroke(&mut scratch, &through, rng.range(1.0, 1.35), level);
    // No line is drawn lighter than the text across it: such cuts were tried and made
    // thin stems such as the J's fall apart into something like "!" for a person too.

    // Speckles: mostly dark dots all over, a few light ones that nick the glyphs.
    for _ in 0..90 {
        let centre = point(rng.range(0.0, WIDTH as f32), rng.range(0.0, HEIGHT as f32));
        let level = rng.range(40.0, 150.0);
        canvas.dot(centre, rng.range(0.45, 1.1), level);
    }
    for _ in 0..30 {
        let centre = point(rng.range(0.0, WIDTH as f32), rng.range(0.0, HEIGHT as f32));
        canvas.dot(centre, rng.range(0.45, 0.9), paper);
    }

    // A shaded band about one character wide, with wavy edges: the letters stay darker
    // than the dark-gray paper there, and people read straight through, while a
    // threshold puts the band with the ink and OCR sees a block. It is centred on one
    // character, so that one always lies in it: a band that fell into the gap between two
    // letters left both readable, and those were the images tesseract read.
    let over = wave.apply(placements[shaded].centre).x;
    canvas.shade_band(over, rng);

    Ok(canvas.into_gray())
}

/// The outline of one character in font units, with its ink box.
struct GlyphShape {
    outline: Outline,
    /// Ink box: left, right, bottom and top edges in font units, y pointing up.
    x_min: f32,
    x_max: f32,
    y_min: f32,
    y_max: f32,
}

impl GlyphShape {
    fn load(font: &FontRef<'_>, c: char) -> Result<Self, ImageError> {
        let id = font.glyph_id(c);
        // Glyph 0 is the font's "missing glyph"; drawing it would show a blank or a box.
        let outline = (id != GlyphId(0))
            .then(|| font.outline(id))
            .flatten()
            .ok_or_else(|| parameter_error("the embedded CAPTCHA font lacks a character"))?;
        let (mut x_min, mut x_max, mut y_min, mut y_max) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
        for curve in &outline.curves {
            for p in curve_points(curve) {
                x_min = x_min.min(p.x);
                x_max = x_max.max(p.x);
                y_min = y_min.min(p.y);
                y_max = y_max.max(p.y);
            }
        }
        if x_min >= x_max || y_min >= y_max {
            return Err(parameter_error(
                "the embedded CAPTCHA font has an empty glyph",
            ));
        }
        Ok(Self {
            outline,
            x_min,
            x_max,
            y_min,
            y_max,
        })
    }
}

fn curve_points(curve: &OutlineCurve) -> Vec<Point> {
    match *curve {
        OutlineCurve::Line(a, b) => vec![a, b],
        OutlineCurve::Quad(a, b, c) => vec![a, b, c],
        OutlineCurve::Cubic(a, b, c, d) => vec![a, b, c, d],
    }
}

/// Where and how one character is drawn: an affine map from font units to pixels.
struct Placement<'a> {
    shape: &'a GlyphShape,
    /// Centre of the ink box in font units; the glyph turns around it.
    origin: Point,
    /// Where that centre lands in the picture, before the wave.
    centre: Point,
    scale_x: f32,
    scale_y: f32,
    cos: f32,
    sin: f32,
}

impl Placement<'_> {
    fn apply(&self, p: Point) -> Point {
        let dx = (p.x - self.origin.x) * self.scale_x;
        // Font units point up and pixels point down, hence the flipped difference.
        let dy = (self.origin.y - p.y) * self.scale_y;
        point(
            self.centre.x + dx * self.cos - dy * self.sin,
            self.centre.y + dx * self.sin + dy * self.cos,
        )
    }
}

/// Chooses rotation, scale and position for every character. Sizes follow from the boxes
/// of the rotated glyphs, so a long answer of wide letters shrinks to fit instead of
/// running off the edge, and neighbours overlap at most by a sliver.
fn layout<'a>(
    shapes: &'a [GlyphShape],
    upem: f32,
    wave: &Wave,
    rng: &mut Rng,
) -> Vec<Placement<'a>> {
    struct Pick {
        angle: f32,
        scale_x: f32,
        scale_y: f32,
        width: f32,
        height: f32,
        gap: f32,
    }
    // Long answers are drawn narrower and turned less, so that they fit at a readable
    // height instead of shrinking to a thin row of small letters.
    let crowding = shapes.len().saturating_sub(5) as f32 / (MAX_LEN - 5) as f32;
    let max_angle = MAX_ANGLE * (1.0 - 0.3 * crowding);
    let (narrowest, widest) = (0.88 - 0.1 * crowding, 1.12 - 0.16 * crowding);
    let picks: Vec<Pick> = shapes
        .iter()
        .map(|shape| {
            let angle = rng.range(-max_angle, max_angle);
            let size = rng.range(0.9, 1.08);
            let aspect = rng.range(narrowest, widest);
            let (scale_x, scale_y) = (size * aspect / upem, size / upem);
            // The box of the rotated glyph, in ems.
            let w = (shape.x_max - shape.x_min) * scale_x;
            let h = (shape.y_max - shape.y_min) * scale_y;
            let (s, c) = (angle.sin().abs(), angle.cos().abs());
            Pick {
                angle,
                scale_x,
                scale_y,
                width: w * c + h * s,
                height: w * s + h * c,
                // Neighbours touch or overlap a little: a reader's eye separates them,
                // while OCR, which cuts the line into characters first, cannot.
                gap: rng.range(-0.10, 0.0),
            }
        })
        .collect();

    let total_em: f32 = picks.iter().map(|p| p.width).sum::<f32>()
        + picks.iter().skip(1).map(|p| p.gap).sum::<f32>();
    let tallest_em = picks.iter().map(|p| p.height).fold(0.0, f32::max);
    let usable_w = WIDTH as f32 - 2.0 * (MARGIN_X + wave.amp_x);
    let usable_h = HEIGHT as f32 - 2.0 * (MARGIN_Y + wave.amp_y);
    let em = MAX_EM_PX
        .min(usable_w / total_em.max(f32::EPSILON))
        .min(usable_h / tallest_em.max(f32::EPSILON));

    let slack = (usable_w - total_em * em).max(0.0);
    let mut x = MARGIN_X + wave.amp_x + slack * rng.range(0.3, 0.7);
    let mut placements = Vec::with_capacity(shapes.len());
    for (i, (shape, pick)) in shapes.iter().zip(&picks).enumerate() {
        if i > 0 {
            x += pick.gap * em;
        }
        // Vertical jitter is bounded by the free room and by the glyph's own size, so
        // small letters of a long answer do not scatter like sub- and superscripts.
        let room = ((usable_h - pick.height * em) / 2.0).clamp(0.0, 0.18 * pick.height * em);
        placements.push(Placement {
            shape,
            origin: point(
                (shape.x_min + shape.x_max) / 2.0,
                (shape.y_min + shape.y_max) / 2.0,
            ),
            centre: point(
                x + pick.width * em / 2.0,
                HEIGHT as f32 / 2.0 + rng.range(-room, room),
            ),
            scale_x: pick.scale_x * em,
            scale_y: pick.scale_y * em,
            cos: pick.angle.cos(),
            sin: pick.angle.sin(),
        });
        x += pick.width * em;
    }
    placements
}

/// A sine-wave warp applied to every drawn point: rows sway sideways and columns bob up
/// and down, which bends straight strokes and the baseline without tearing anything.
struct Wave {
    amp_x: f32,
    freq_x: f32,
    phase_x: f32,
    amp_y: f32,
    freq_y: f32,
    phase_y: f32,
}

impl Wave {
    fn random(rng: &mut Rng) -> Self {
        let tau = std::f32::consts::TAU;
        Self {
            // Sideways sway is kept gentle and long: a faster one bent tall narrow
            // stems such as J into S-like shapes.
            amp_x: rng.range(0.7, 1.5),
            freq_x: tau / rng.range(40.0, 70.0),
            phase_x: rng.range(0.0, tau),
            amp_y: rng.range(2.5, 5.0),
            freq_y: tau / rng.range(70.0, 140.0),
            phase_y: rng.range(0.0, tau),
        }
    }

    fn apply(&self, p: Point) -> Point {
        point(
            p.x + self.amp_x * (p.y * self.freq_x + self.phase_x).sin(),
            p.y + self.amp_y * (p.x * self.freq_y + self.phase_y).sin(),
        )
    }

    fn apply_all(&self, points: Vec<Point>) -> Vec<Point> {
        points.into_iter().map(|p| self.apply(p)).collect()
    }
}

/// A smooth curve from beyond the left edge to beyond the right edge, staying between
/// `top` and `bottom`, as a polyline of short pieces.
fn random_curve(rng: &mut Rng, top: f32, bottom: f32) -> Vec<Point> {
    let controls = [
        point(rng.range(-6.0, 10.0), rng.range(top, bottom)),
        point(rng.range(40.0, 90.0), rng.range(top - 15.0, bottom + 15.0)),
        point(
            rng.range(110.0, 160.0),
            rng.range(top - 15.0, bottom + 15.0),
        ),
        point(rng.range(190.0, 206.0), rng.range(top, bottom)),
    ];
    let steps = 60;
    (0..=steps)
        .map(|i| cubic(&controls, i as f32 / steps as f32))
        .collect()
}

/// A straight line across the text band, cut into short pieces so the wave can bend it.
fn random_line(rng: &mut Rng) -> Vec<Point> {
    let start = point(rng.range(-4.0, 30.0), rng.range(15.0, 55.0));
    let end = point(rng.range(170.0, 204.0), rng.range(15.0, 55.0));
    let steps = 40;
    (0..=steps)
        .map(|i| lerp(start, end, i as f32 / steps as f32))
        .collect()
}

fn lerp(a: Point, b: Point, t: f32) -> Point {
    point(a.x + (b.x - a.x) * t, a.y + (b.y - a.y) * t)
}

fn quad(a: Point, b: Point, c: Point, t: f32) -> Point {
    lerp(lerp(a, b, t), lerp(b, c, t), t)
}

fn cubic(p: &[Point; 4], t: f32) -> Point {
    lerp(quad(p[0], p[1], p[2], t), quad(p[1], p[2], p[3], t), t)
}

fn distance(a: Point, b: Point) -> f32 {
    (b.x - a.x).hypot(b.y - a.y)
}

/// The picture being drawn, as gray levels in floating point so that blending many
/// partly covered layers does not accumulate rounding.
struct Canvas {
    levels: Vec<f32>,
}

impl Canvas {
    fn new(paper: impl Fn(f32, f32) -> f32) -> Self {
        let levels = (0..W * H)
            .map(|i| paper((i % W) as f32, (i / W) as f32))
            .collect();
        Self { levels }
    }

    /// Mixes `level` into the pixel at (`x`, `y`) by `coverage`; pixels outside the
    /// picture are ignored so that callers need not clip.
    fn blend(&mut self, x: i64, y: i64, coverage: f32, level: f32) {
        if x < 0 || y < 0 || x >= W as i64 || y >= H as i64 {
            return;
        }
        let coverage = coverage.clamp(0.0, 1.0);
        // Both coordinates were just checked to lie inside the picture.
        let pixel = &mut self.levels[y as usize * W + x as usize];
        *pixel += (level - *pixel) * coverage;
    }

    /// Draws one character. The outline is mapped to pixels, cut into short straight
    /// pieces and warped; ab_glyph's rasterizer then computes exact area coverage, which
    /// keeps edges smooth after rotation and warping without resampling a bitmap.
    fn glyph(&mut self, placement: &Placement<'_>, wave: &Wave, level: f32) {
        let curves = warped_outline(placement, wave);

        let mut min = point(f32::MAX, f32::MAX);
        let mut max = point(f32::MIN, f32::MIN);
        for curve in &curves {
            for p in curve_points(curve) {
                min = point(min.x.min(p.x), min.y.min(p.y));
                max = point(max.x.max(p.x), max.y.max(p.y));
            }
        }
        if !(min.x.is_finite() && min.y.is_finite() && max.x.is_finite() && max.y.is_finite()) {
            return;
        }
        // The outline is already in pixels, so the glyph is drawn at scale 1 from the
        // origin. A vertical factor of -1 cancels ab_glyph's flip from font units (y up)
        // to pixels (y down), and the bounds are given the way ab_glyph expects them for
        // that factor: top-left as `min`, bottom-right as `max`.
        let outlined = OutlinedGlyph::new(
            GlyphId(0).with_scale_and_position(1.0, point(0.0, 0.0)),
            Outline {
                bounds: Rect { min, max },
                curves,
            },
            PxScaleFactor {
                horizontal: 1.0,
                vertical: -1.0,
            },
        );
        let corner = outlined.px_bounds().min;
        let (left, top) = (corner.x as i64, corner.y as i64);
        outlined.draw(|x, y, coverage| {
            self.blend(left + i64::from(x), top + i64::from(y), coverage, level);
        });
    }

    /// Draws an antialiased polyline. Coverage is first collected in `scratch` as the
    /// maximum over all pieces, so the joints between pieces are not drawn twice and do
    /// not show as darker beads.
    fn stroke(&mut self, scratch: &mut [f32], points: &[Point], half_width: f32, level: f32) {
        for pair in points.windows(2) {
            cover_segment(scratch, pair[0], pair[1], half_width);
        }
        self.flush(scratch, level);
    }

    /// Draws only the outline of a placed character, as a line 2 to 2.6 pixels wide,
    /// leaving the paper inside: an outlined letter that people read as easily as a
    /// filled one, but whose inside a threshold keeps light, so that OCR trained on solid
    /// type sees two thin shapes where one letter is.
    fn hollow_glyph(
        &mut self,
        scratch: &mut [f32],
        placement: &Placement<'_>,
        wave: &Wave,
        half_width: f32,
        level: f32,
    ) {
        for curve in warped_outline(placement, wave) {
            if let OutlineCurve::Line(a, b) = curve {
                cover_segment(scratch, a, b, half_width);
            }
        }
        self.flush(scratch, level);
    }

    /// Blends the coverage collected in `scratch` in `level` and clears it for the next
    /// shape.
    fn flush(&mut self, scratch: &mut [f32], level: f32) {
        for (i, cell) in scratch.iter_mut().enumerate() {
            if *cell > 0.0 {
                self.blend((i % W) as i64, (i / W) as i64, *cell, level);
                *cell = 0.0;
            }
        }
    }

    /// Draws an antialiased round dot.
    fn dot(&mut self, centre: Point, radius: f32, level: f32) {
        let reach = radius + 1.0;
        let (x0, x1) = (
            (centre.x - reach).floor() as i64,
            (centre.x + reach).ceil() as i64,
        );
        let (y0, y1) = (
            (centre.y - reach).floor() as i64,
            (centre.y + reach).ceil() as i64,
        );
        for y in y0..y1 {
            for x in x0..x1 {
                let d = distance(centre, point(x as f32 + 0.5, y as f32 + 0.5));
                self.blend(x, y, radius + 0.5 - d, level);
            }
        }
    }

    /// Darkens the levels inside a vertical band 22 to 34 pixels wide centred on
    /// `centre_x` at mid-height, its edges swaying with the height, to 30 to 40 %: paper
    /// becomes a dark gray (about 70 to 95) while ink stays far darker. The edges are soft
    /// (a 2-pixel ramp) so that no hard seam cuts a letter.
    ///
    /// An earlier band reversed the colours (light letters on dark) and was the main
    /// reason people misread samples: the reversed piece of a letter looked like a
    /// separate shape. Shading keeps every letter one dark shape for the eye, while a
    /// global threshold (a fixed one, or Otsu's, which tesseract uses) still puts the
    /// shaded paper with the ink.
    fn shade_band(&mut self, centre_x: f32, rng: &mut Rng) {
        let width = rng.range(22.0, 34.0);
        let depth = rng.range(0.30, 0.40);
        let left = centre_x - width / 2.0;
        let sway = rng.range(3.0, 8.0);
        let period = std::f32::consts::TAU / rng.range(40.0, 90.0);
        let phase = rng.range(0.0, std::f32::consts::TAU);
        let tilt = rng.range(-0.25, 0.25);
        // The sway is measured from the middle row, so the band is where it was asked to
        // be at mid-height, where the letters are.
        let mid = H as f32 / 2.0;
        let sway_at = |fy: f32| sway * (fy * period + phase).sin();
        for y in 0..H {
            let fy = y as f32;
            let shift = sway_at(fy) - sway_at(mid) + tilt * (fy - mid);
            let (from, to) = (left + shift, left + shift + width);
            for x in 0..W {
                let fx = x as f32 + 0.5;
                let inside = ((fx - from).min(to - fx) / 2.0 + 0.5).clamp(0.0, 1.0);
                if inside > 0.0 {
                    let v = &mut self.levels[y * W + x];
                    *v *= 1.0 - (1.0 - depth) * inside;
                }
            }
        }
    }

    fn into_gray(self) -> Vec<u8> {
        // The clamp makes the conversion exact: every value fits in a byte.
        self.levels
            .into_iter()
            .map(|v| v.round().clamp(0.0, 255.0) as u8)
            .collect()
    }
}

/// The outline of a placed character in pixels: every curve cut into short straight
/// pieces and each piece's ends moved by the wave, so that straight strokes bend.
fn warped_outline(placement: &Placement<'_>, wave: &Wave) -> Vec<OutlineCurve> {
    let mut curves = Vec::new();
    let mut push_path = |from: Point, pieces: usize, at: &dyn Fn(f32) -> Point| {
        let mut previous = wave.apply(from);
        for i in 1..=pieces {
            let next = wave.apply(at(i as f32 / pieces as f32));
            curves.push(OutlineCurve::Line(previous, next));
            previous = next;
        }
    };
    let pieces_for = |length: f32| ((length / MAX_PIECE_PX).ceil() as usize).clamp(1, 64);
    for curve in &placement.shape.outline.curves {
        match *curve {
            OutlineCurve::Line(a, b) => {
                let (a, b) = (placement.apply(a), placement.apply(b));
                push_path(a, pieces_for(distance(a, b)), &|t| lerp(a, b, t));
            }
            OutlineCurve::Quad(a, b, c) => {
                let (a, b, c) = (placement.apply(a), placement.apply(b), placement.apply(c));
                let length = distance(a, b) + distance(b, c);
                push_path(a, pieces_for(length), &|t| quad(a, b, c, t));
            }
            OutlineCurve::Cubic(a, b, c, d) => {
                let p = [
                    placement.apply(a),
                    placement.apply(b),
                    placement.apply(c),
                    placement.apply(d),
                ];
                let length = distance(p[0], p[1]) + distance(p[1], p[2]) + distance(p[2], p[3]);
                push_path(p[0], pieces_for(length), &|t| cubic(&p, t));
            }
        }
    }
    curves
}

/// Adds the coverage of one antialiased line piece to `scratch`, as the maximum with what
/// is there, so that the joints between pieces are not drawn twice.
fn cover_segment(scratch: &mut [f32], a: Point, b: Point, half_width: f32) {
    let reach = half_width + 1.0;
    let x0 = (a.x.min(b.x) - reach).floor().max(0.0) as usize;
    let x1 = (a.x.max(b.x) + reach).ceil().clamp(0.0, W as f32) as usize;
    let y0 = (a.y.min(b.y) - reach).floor().max(0.0) as usize;
    let y1 = (a.y.max(b.y) + reach).ceil().clamp(0.0, H as f32) as usize;
    for y in y0..y1 {
        for x in x0..x1 {
            let centre = point(x as f32 + 0.5, y as f32 + 0.5);
            let coverage = half_width + 0.5 - segment_distance(centre, a, b);
            let cell = &mut scratch[y * W + x];
            *cell = cell.max(coverage.clamp(0.0, 1.0));
        }
    }
}

/// Distance from `p` to the segment from `a` to `b`.
fn segment_distance(p: Point, a: Point, b: Point) -> f32 {
    let (dx, dy) = (b.x - a.x, b.y - a.y);
    let length_sq = dx * dx + dy * dy;
    let t = if length_sq > 0.0 {
        (((p.x - a.x) * dx + (p.y - a.y) * dy) / length_sq).clamp(0.0, 1.0)
    } else {
        0.0
    };
    distance(p, point(a.x + dx * t, a.y + dy * t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageFormat;

    fn seed(n: u8) -> [u8; 32] {
        let mut seed = [0u8; 32];
        for (i, byte) in seed.iter_mut().enumerate() {
            *byte = n.wrapping_mul(31).wrapping_add(i as u8);
        }
        seed
    }

    fn decode(png: &[u8]) -> image::GrayImage {
        image::load_from_memory_with_format(png, ImageFormat::Png)
            .expect("render_png must produce a valid PNG")
            .to_luma8()
    }

    /// Share of pixels dark enough to be ink or noise.
    fn dark_fraction(img: &image::GrayImage) -> f64 {
        let dark = img.pixels().filter(|p| p.0[0] < 128).count();
        dark as f64 / (img.width() * img.height()) as f64
    }

    /// The output is a PNG of exactly the advertised size.
    #[test]
    fn output_decodes_as_png_of_the_advertised_size() {
        let png = render_png("CDEH", seed(1)).expect("render");
        let img = image::load_from_memory_with_format(&png, ImageFormat::Png).expect("decode");
        assert_eq!((img.width(), img.height()), (WIDTH, HEIGHT));
    }

    /// The seed alone decides the picture, so tests and debugging can reproduce one.
    #[test]
    fn same_seed_gives_identical_bytes() {
        let a = render_png("HUK4M", seed(7)).expect("render");
        let b = render_png("HUK4M", seed(7)).expect("render");
        assert_eq!(a, b);
    }

    /// Fresh seeds give different pictures even for the same answer.
    #[test]
    fn different_seeds_give_different_bytes() {
        let a = render_png("HUK4M", seed(7)).expect("render");
        let b = render_png("HUK4M", seed(8)).expect("render");
        assert_ne!(a, b);
        let mut one_bit = seed(7);
        one_bit[31] ^= 1;
        let c = render_png("HUK4M", one_bit).expect("render");
        assert_ne!(a, c);
    }

    /// The embedded font can draw every character an answer may hold.
    #[test]
    fn every_alphabet_character_has_a_glyph() {
        let font = FontRef::try_from_slice(FONT_BYTES).expect("embedded font parses");
        for c in ALPHABET.chars() {
            let id = font.glyph_id(c);
            assert_ne!(id, GlyphId(0), "no glyph for {c:?}");
            assert!(font.outline(id).is_some(), "empty glyph for {c:?}");
        }
    }

    /// The licence travels with the font, as the Bitstream Vera licence requires.
    #[test]
    fn font_licence_ships_beside_the_font() {
        let licence = include_str!("../assets/captcha-font.LICENSE");
        assert!(licence.contains("Bitstream Vera Fonts Copyright"));
        assert!(licence.contains("What was changed"));
    }

    /// The picture carries a plausible amount of ink: not blank, not a dark smear.
    #[test]
    fn image_is_neither_blank_nor_flooded() {
        for (answer, n) in [("CDEH", 1), ("KY3469TU", 2), ("WWWWWWWW", 3), ("MHKN", 4)] {
            let fraction = dark_fraction(&decode(&render_png(answer, seed(n)).expect("render")));
            assert!(
                (0.04..0.45).contains(&fraction),
                "{answer}: dark fraction {fraction}"
            );
        }
    }

    /// The text is spread across the picture rather than clipped into one corner: ink
    /// appears in the left, middle and right thirds.
    #[test]
    fn text_spans_the_width() {
        let img = decode(&render_png("CDEHKMNR", seed(5)).expect("render"));
        for third in 0..3 {
            let x0 = third * WIDTH / 3;
            let ink = (x0..x0 + WIDTH / 3)
                .flat_map(|x| (0..HEIGHT).map(move |y| (x, y)))
                .filter(|&(x, y)| img.get_pixel(x, y).0[0] < 100)
                .count();
            assert!(ink > 150, "third {third} has only {ink} dark pixels");
        }
    }

    /// Every length and character allowed renders, whatever the seed, including the
    /// degenerate all-zero and all-one seeds.
    #[test]
    fn all_lengths_and_seeds_render() {
        let alphabet: Vec<char> = ALPHABET.chars().collect();
        for n in 0..40u8 {
            let len = MIN_LEN + usize::from(n) % (MAX_LEN - MIN_LEN + 1);
            let answer: String = (0..len)
                .map(|i| alphabet[(usize::from(n) * 7 + i * 5) % alphabet.len()])
                .collect();
            let png = render_png(&answer, seed(n)).expect("render");
            assert!(png.len() < 16 * 1024, "{answer}: {} bytes", png.len());
        }
        for fixed in [[0u8; 32], [0xFF; 32]] {
            let img = decode(&render_png("RTUW", fixed).expect("render"));
            assert!(dark_fraction(&img) > 0.04);
        }
    }

    /// Bad answers are refused with an error instead of a panic or a clipped picture.
    #[test]
    fn invalid_answers_are_errors() {
        for answer in [
            "",
            "CDE",
            "CDEHKMNRT",
            "CDEHKMNRTUWY3469",
            "cdef",
            "CD0E",
            "CDEA",
            "CDEÉ",
        ] {
            assert!(
                matches!(render_png(answer, seed(1)), Err(ImageError::Parameter(_))),
                "{answer:?} was accepted"
            );
        }
    }
}
