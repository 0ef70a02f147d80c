//! NMEA 0183 sentences from a GPS receiver: GGA (fix, position, HDOP), RMC (position, speed,
//! course, UTC date and time), VTG (speed, course), GSA (fix mode, DOPs). Any talker (`GP`,
//! `GN`, `GL`, …). Every sentence's checksum is verified; sentences without one are refused
//! (receivers always send it; accepting unchecked data would let line noise move the
//! vehicle). The parser never panics and never allocates per sentence beyond its fields:
//! it is fuzzed with random bytes, broken checksums and cut sentences.
//!
//! Lines that are sound but of no use are told apart from damaged ones
//! ([`NmeaError::ignored`]): proprietary sentences (`$PMTK…`, `$PUBX…`, any `$P…`) and other
//! sentence types with a valid checksum, and `#` comment lines (recorded logs carry them).
//!
//! [`Epochs`] puts a receiver's GGA and RMC of one epoch (same UTC) together into one
//! [`Fix`], whichever of the two the receiver sends, and in whichever order.

/// What one sentence said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sentence {
    /// GGA: time, position, fix quality, satellites, HDOP, altitude.
    Gga(Gga),
    /// RMC: time, validity, position, speed, course, date.
    Rmc(Rmc),
    /// VTG: course and speed over ground.
    Vtg(Vtg),
    /// GSA: fix mode and dilutions of precision.
    Gsa(Gsa),
}

impl Sentence {
    /// The receiver's UTC time of day (seconds since midnight) the sentence carries: GGA and
    /// RMC have one, the others do not.
    pub fn utc_s(&self) -> Option<f64> {
        match self {
            Sentence::Gga(g) => g.utc_s,
            Sentence::Rmc(r) => r.utc_s,
            _ => None,
        }
    }
}

/// A GGA sentence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gga {
    /// UTC seconds since midnight.
    pub utc_s: Option<f64>,
    /// Latitude in degrees (north positive).
    pub lat: Option<f64>,
    /// Longitude in degrees (east positive).
    pub lon: Option<f64>,
    /// 0 invalid, 1 GPS, 2 DGPS, 4 RTK fixed, 5 RTK float, 6 dead reckoning, …
    pub quality: u8,
    /// Satellites used.
    pub satellites: u8,
    /// Horizontal dilution of precision.
    pub hdop: Option<f64>,
    /// Altitude above mean sea level, metres.
    pub altitude_m: Option<f64>,
}

/// An RMC sentence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rmc {
    /// UTC seconds since midnight.
    pub utc_s: Option<f64>,
    /// `A` (valid) status.
    pub valid: bool,
    /// Latitude in degrees.
    pub lat: Option<f64>,
    /// Longitude in degrees.
    pub lon: Option<f64>,
    /// Speed over ground, m/s.
    pub speed_mps: Option<f64>,
    /// Course over ground, degrees from true north.
    pub course_deg: Option<f64>,
    /// Date as (year, month, day).
    pub date: Option<(i32, u32, u32)>,
}

/// A VTG sentence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Vtg {
    /// Course over ground, degrees true.
    pub course_deg: Option<f64>,
    /// Speed over ground, m/s.
    pub speed_mps: Option<f64>,
}

/// A GSA sentence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gsa {
    /// 1 no fix, 2 2D, 3 3D.
    pub mode: u8,
    /// Position DOP.
    pub pdop: Option<f64>,
    /// Horizontal DOP.
    pub hdop: Option<f64>,
    /// Vertical DOP.
    pub vdop: Option<f64>,
}

/// Why a line was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NmeaError {
    /// Not `$…*hh` (or longer than [`MAX_SENTENCE`]).
    #[error("not an NMEA sentence")]
    Framing,
    /// The checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
    /// A valid sentence of a type this parser does not use (GSV, ZDA, `!AIVDM`, …).
    #[error("sentence type not used")]
    Unsupported,
    /// A valid proprietary sentence (`$P` and a maker's code: `$PMTK…`, `$PUBX…`).
    #[error("proprietary sentence")]
    Proprietary,
    /// A `#` comment line (recorded logs).
    #[error("comment line")]
    Comment,
    /// An empty line (blank between CR LF pairs).
    #[error("empty line")]
    Empty,
    /// A field is malformed.
    #[error("malformed field {0}")]
    Field(usize),
}

impl NmeaError {
    /// A sound line of no use here (another sentence type, a proprietary sentence, a
    /// comment): to be counted as ignored, not as bad. Empty lines are neither.
    pub fn ignored(&self) -> bool {
        matches!(
            self,
            NmeaError::Unsupported | NmeaError::Proprietary | NmeaError::Comment
        )
    }
}

const KNOTS_TO_MPS: f64 = 0.514_444;
const KMH_TO_MPS: f64 = 1.0 / 3.6;

/// Longest line accepted (the standard says 82 characters; receivers' proprietary
/// sentences exceed it: MediaTek's `$PMTKCHN` is 203, u-blox's `$PUBX,03` grows with the
/// satellites in view).
pub const MAX_SENTENCE: usize = 512;

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Checks framing and checksum; returns the fields between `$` (or `!`, encapsulation
/// sentences such as AIS) and `*`.
fn body(line: &[u8]) -> Result<&str, NmeaError> {
    let line = line.trim_ascii();
    if line.is_empty() {
        return Err(NmeaError::Empty);
    }
    if line[0] == b'#' {
        return Err(NmeaError::Comment);
    }
    if line.len() < 6 || line.len() > MAX_SENTENCE || !matches!(line[0], b'$' | b'!') {
        return Err(NmeaError::Framing);
    }
    let star = line.len() - 3;
    if line[star] != b'*' {
        return Err(NmeaError::Framing);
    }
    let want = hex(line[star + 1])
        .zip(hex(line[star + 2]))
        .map(|(h, l)| h << 4 | l)
        .ok_or(NmeaError::Framing)?;
    let data = &line[1..star];
    if data.iter().fold(0u8, |a, b| a ^ b) != want {
        return Err(NmeaError::Checksum);
    }
    std::str::from_utf8(data).map_err(|_| NmeaError::Framing)
}

fn num(f: &str, i: usize) -> Result<Option<f64>, NmeaError> {
    if f.is_empty() {
        return Ok(None);
    }
    match f.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(Some(v)),
        _ => Err(NmeaError::Field(i)),
    }
}

/// `ddmm.mmmm` / `dddmm.mmmm` with a hemisphere letter → degrees.
fn coord(v: &str, hemi: &str, i: usize, max_deg: f64) -> Result<Option<f64>, NmeaError> {
    let Some(raw) = num(v, i)? else {
        return Ok(None);
    };
    let deg = (raw / 100.0).trunc();
    let min = raw - deg * 100.0;
    if !(0.0..60.0).contains(&min) || raw < 0.0 {
        return Err(NmeaError::Field(i));
    }
    let d = deg + min / 60.0;
    if d > max_deg {
        return Err(NmeaError::Field(i));
    }
    match hemi {
        "N" | "E" => Ok(Some(d)),
        "S" | "W" => Ok(Some(-d)),
        _ => Err(NmeaError::Field(i + 1)),
    }
}

/// `hhmmss.sss` → seconds since midnight.
fn utc(v: &str, i: usize) -> Result<Option<f64>, NmeaError> {
    if v.is_empty() {
        return Ok(None);
    }
    if v.len() < 6 || !v.as_bytes()[..6].iter().all(u8::is_ascii_digit) {
        return Err(NmeaError::Field(i));
    }
    let h: f64 = v[0..2].parse().map_err(|_| NmeaError::Field(i))?;
    let m: f64 = v[2..4].parse().map_err(|_| NmeaError::Field(i))?;
    let s: f64 = v[4..].parse().map_err(|_| NmeaError::Field(i))?;
    if h >= 24.0 || m >= 60.0 || !(0.0..61.0).contains(&s) {
        return Err(NmeaError::Field(i));
    }
    Ok(Some(h * 3600.0 + m * 60.0 + s))
}

fn date(v: &str, i: usize) -> Result<Option<(i32, u32, u32)>, NmeaError> {
    if v.is_empty() {
        return Ok(None);
    }
    if v.len() != 6 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NmeaError::Field(i));
    }
    let n = |a: usize| v[a..a + 2].parse::<u32>().unwrap_or(0);
    let (d, m, y) = (n(0), n(2), n(4));
    if !(1..=31).contains(&d) || !(1..=12).contains(&m) {
        return Err(NmeaError::Field(i));
    }
    // Two-digit years: 1980 (the GPS epoch) to 2079.
    let year = if y >= 80 { 1900 + y } else { 2000 + y } as i32;
    Ok(Some((year, m, d)))
}

fn small(v: &str, i: usize) -> Result<u8, NmeaError> {
    if v.is_empty() {
        return Ok(0);
    }
    v.parse().map_err(|_| NmeaError::Field(i))
}

/// Parses one line (with or without its CR LF).
pub fn parse(line: &[u8]) -> Result<Sentence, NmeaError> {
    let body = body(line)?;
    if line.trim_ascii_start().first() == Some(&b'!') {
        // Encapsulated data (AIS from a combined receiver): sound, not ours.
        return Err(NmeaError::Unsupported);
    }
    if body.starts_with('P') {
        return Err(NmeaError::Proprietary);
    }
    let mut f: [&str; 24] = [""; 24];
    let mut n = 0;
    for (i, part) in body.split(',').enumerate() {
        if i >= f.len() {
            break;
        }
        f[i] = part;
        n = i + 1;
    }
    let kind = f[0];
    if kind.len() != 5 {
        return Err(NmeaError::Framing);
    }
    let need = |k: usize| {
        if n >= k {
            Ok(())
        } else {
            Err(NmeaError::Field(n))
        }
    };
    match &kind[2..] {
        "GGA" => {
            need(10)?;
            Ok(Sentence::Gga(Gga {
                utc_s: utc(f[1], 1)?,
                lat: coord(f[2], f[3], 2, 90.0)?,
                lon: coord(f[4], f[5], 4, 180.0)?,
                quality: small(f[6], 6)?,
                satellites: small(f[7], 7)?,
                hdop: num(f[8], 8)?,
                altitude_m: num(f[9], 9)?,
            }))
        }
        "RMC" => {
            need(10)?;
            Ok(Sentence::Rmc(Rmc {
                utc_s: utc(f[1], 1)?,
                valid: f[2] == "A",
                lat: coord(f[3], f[4], 3, 90.0)?,
                lon: coord(f[5], f[6], 5, 180.0)?,
                speed_mps: num(f[7], 7)?.map(|k| k * KNOTS_TO_MPS),
                course_deg: num(f[8], 8)?,
                date: date(f[9], 9)?,
            }))
        }
        "VTG" => {
            need(8)?;
            // $--VTG,course,T,course_mag,M,knots,N,kmh,K[,mode]
            let kmh = num(f[7], 7)?.map(|v| v * KMH_TO_MPS);
            let knots = num(f[5], 5)?.map(|v| v * KNOTS_TO_MPS);
            Ok(Sentence::Vtg(Vtg {
                course_deg: num(f[1], 1)?,
                speed_mps: kmh.or(knots),
            }))
        }
        "GSA" => {
            need(18)?;
            Ok(Sentence::Gsa(Gsa {
                mode: small(f[2], 2)?,
                pdop: num(f[15], 15)?,
                hdop: num(f[16], 16)?,
                vdop: num(f[17].split('*').next().unwrap_or(""), 17)?,
            }))
        }
        _ => Err(NmeaError::Unsupported),
    }
}

/// Appends `*hh` to `$…` (for simulators and tests).
pub fn with_checksum(body: &str) -> String {
    let data = body.strip_prefix('$').unwrap_or(body);
    let sum = data.bytes().fold(0u8, |a, b| a ^ b);
    format!("${data}*{sum:02X}")
}

/// Splits a byte stream into lines, keeping a partial last line for the next read; lines
/// longer than [`MAX_SENTENCE`] are dropped (a receiver at the wrong baud rate sends noise
/// without newlines) and counted ([`LineSplitter::take_overlong`]).
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
    overlong: bool,
    dropped: u64,
}

impl LineSplitter {
    /// Feeds bytes; calls `line` for every complete line.
    pub fn feed(&mut self, bytes: &[u8], mut line: impl FnMut(&[u8])) {
        for &b in bytes {
            if b == b'\n' {
                if self.overlong {
                    self.dropped += 1;
                } else {
                    line(&self.buf);
                }
                self.buf.clear();
                self.overlong = false;
            } else if self.buf.len() >= MAX_SENTENCE {
                self.overlong = true;
            } else {
                self.buf.push(b);
            }
        }
    }

    /// Overlong lines dropped since the last call.
    pub fn take_overlong(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }
}

/// One receiver epoch's position fix, from its GGA, its RMC, or both.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fix {
    /// The receiver's UTC, seconds since midnight.
    pub utc_s: Option<f64>,
    /// The receiver's UTC as Unix microseconds, where its date is known: this epoch's RMC
    /// date, or the last valid RMC's carried on while the receiver's clock ran on without a
    /// jump. A receiver that sends GGA only never says the date.
    pub utc_us: Option<i64>,
    /// Degrees (GGA's when it has a fix, else RMC's).
    pub lat: f64,
    /// Degrees.
    pub lon: f64,
    /// GGA fix quality (`None`: no GGA this epoch).
    pub quality: Option<u8>,
    /// Satellites used (GGA).
    pub satellites: Option<u8>,
    /// Horizontal dilution of precision (GGA).
    pub hdop: Option<f64>,
    /// Altitude above mean sea level, metres (GGA).
    pub altitude_m: Option<f64>,
    /// Speed over ground, m/s (RMC).
    pub speed_mps: Option<f64>,
    /// Course over ground, degrees true (RMC).
    pub course_deg: Option<f64>,
}

/// An epoch being gathered: the time its first sentence arrived and its GGA and RMC.
#[derive(Debug, Clone, Copy)]
struct Open {
    t: f64,
    utc_s: Option<f64>,
    gga: Option<Gga>,
    rmc: Option<Rmc>,
}

/// Puts each receiver epoch's GGA and RMC together into one [`Fix`]: an epoch with both
/// gives one fix, not two, and one with only a GGA or only a valid RMC gives one as well
/// (receivers differ in what they send and in which order).
///
/// An epoch closes when it has both sentences, or when a GGA or RMC of another UTC (or a
/// second one of the same type) arrives; [`Epochs::finish`] closes the last one at the
/// end of an input.
#[derive(Debug, Default)]
pub struct Epochs {
    open: Option<Open>,
    /// (days since 1970-01-01, UTC seconds of day) of the last dated epoch.
    date: Option<(i64, f64)>,
}

impl Epochs {
    /// Takes a sentence that arrived at `t` (the agent's clock); calls `fix` with the
    /// arrival time of its first sentence and the fix, for each epoch this closes that had
    /// a position. Sentences other than GGA and RMC are not looked at.
    pub fn push(&mut self, t: f64, s: &Sentence, mut fix: impl FnMut(f64, Fix)) {
        let (utc, gga) = match s {
            Sentence::Gga(g) => (g.utc_s, true),
            Sentence::Rmc(r) => (r.utc_s, false),
            _ => return,
        };
        if let Some(o) = &self.open {
            let free = if gga {
                o.gga.is_none()
            } else {
                o.rmc.is_none()
            };
            if !(free && utc.is_some() && o.utc_s == utc) {
                self.close(&mut fix);
            }
        }
        let o = self.open.get_or_insert(Open {
            t,
            utc_s: utc,
            gga: None,
            rmc: None,
        });
        match s {
            Sentence::Gga(g) => o.gga = Some(*g),
            Sentence::Rmc(r) => o.rmc = Some(*r),
            _ => {}
        }
        if o.gga.is_some() && o.rmc.is_some() {
            self.close(&mut fix);
        }
    }

    /// Closes the epoch still open (the input ended).
    pub fn finish(&mut self, mut fix: impl FnMut(f64, Fix)) {
        self.close(&mut fix);
    }

    fn close(&mut self, fix: &mut impl FnMut(f64, Fix)) {
        let Some(o) = self.open.take() else {
            return;
        };
        let utc_us = self.utc_us(&o);
        let gga = o
            .gga
            .filter(|g| g.quality >= 1)
            .and_then(|g| Some((g.lat?, g.lon?)));
        let rmc = o
            .rmc
            .filter(|r| r.valid)
            .and_then(|r| Some((r.lat?, r.lon?)));
        let Some((lat, lon)) = gga.or(rmc) else {
            return;
        };
        fix(
            o.t,
            Fix {
                utc_s: o.utc_s,
                utc_us,
                lat,
                lon,
                quality: o.gga.map(|g| g.quality),
                satellites: o.gga.map(|g| g.satellites),
                hdop: o.gga.and_then(|g| g.hdop),
                altitude_m: o.gga.and_then(|g| g.altitude_m),
                speed_mps: o.rmc.and_then(|r| r.speed_mps),
                course_deg: o.rmc.and_then(|r| r.course_deg),
            },
        );
    }

    /// The epoch's UTC as Unix µs, remembering its date for the epochs after it.
    fn utc_us(&mut self, o: &Open) -> Option<i64> {
        let u = o.utc_s?;
        let dated = o
            .rmc
            .filter(|r| r.valid)
            .and_then(|r| r.date)
            .and_then(|(y, m, d)| {
                aegis_config::civil::days_from_civil(i64::from(y), i64::from(m), i64::from(d))
            });
        let day = dated.or_else(|| {
            let (day, before) = self.date?;
            let step = u - before;
            // Past midnight the time of day starts again.
            let (day, step) = if step < -43_200.0 {
                (day + 1, step + 86_400.0)
            } else {
                (day, step)
            };
            let steady = (-crate::fusion::MAX_TIME_JUMP_S..=crate::fusion::MAX_GPS_SILENCE_S)
                .contains(&step);
            steady.then_some(day)
        });
        self.date = day.map(|d| (d, u));
        Some(day? * 86_400_000_000 + (u * 1e6).round() as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_receiver_sentences_parse() {
        // u-blox and SiRF sample sentences (public datasheet examples).
        let gga =
            parse(b"$GPGGA,092750.000,5321.6802,N,00630.3372,W,1,8,1.03,61.7,M,55.2,M,,*76\r\n")
                .unwrap();
        let Sentence::Gga(g) = gga else { panic!() };
        assert!((g.lat.unwrap() - 53.361_336).abs() < 1e-6);
        assert!((g.lon.unwrap() + 6.505_62).abs() < 1e-6);
        assert_eq!((g.quality, g.satellites), (1, 8));
        assert_eq!(g.hdop, Some(1.03));
        assert_eq!(g.utc_s, Some(9.0 * 3600.0 + 27.0 * 60.0 + 50.0));
        let rmc = parse(b"$GPRMC,092750.000,A,5321.6802,N,00630.3372,W,0.02,31.66,280511,,,A*43")
            .unwrap();
        let Sentence::Rmc(r) = rmc else { panic!() };
        assert!(r.valid);
        assert_eq!(r.date, Some((2011, 5, 28)));
        assert!((r.speed_mps.unwrap() - 0.02 * KNOTS_TO_MPS).abs() < 1e-9);
        let vtg = parse(b"$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48").unwrap();
        let Sentence::Vtg(v) = vtg else { panic!() };
        assert_eq!(v.course_deg, Some(54.7));
        assert!((v.speed_mps.unwrap() - 10.2 / 3.6).abs() < 1e-9);
        let gsa = parse(b"$GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1*39").unwrap();
        let Sentence::Gsa(s) = gsa else { panic!() };
        assert_eq!(
            (s.mode, s.pdop, s.hdop, s.vdop),
            (3, Some(2.5), Some(1.3), Some(2.1))
        );
        // Another talker (GNSS combined).
        let gn = with_checksum("$GNGGA,120000.00,4807.038,N,01131.000,E,4,12,0.6,545.4,M,46.9,M,,");
        assert!(matches!(
            parse(gn.as_bytes()),
            Ok(Sentence::Gga(Gga { quality: 4, .. }))
        ));
    }

    #[test]
    fn damage_is_refused_with_its_reason() {
        let good = "$GPGGA,092750.000,5321.6802,N,00630.3372,W,1,8,1.03,61.7,M,55.2,M,,*76";
        assert_eq!(
            parse(good.replace("5321", "5322").as_bytes()),
            Err(NmeaError::Checksum)
        );
        assert_eq!(parse(&good.as_bytes()[..40]), Err(NmeaError::Framing));
        assert_eq!(parse(b"GPGGA,1*00"), Err(NmeaError::Framing));
        assert_eq!(
            parse(with_checksum("$GPZDA,1,2,3").as_bytes()),
            Err(NmeaError::Unsupported)
        );
        assert_eq!(
            parse(
                with_checksum("$GPGGA,092750,9921.0,N,00630.3372,W,1,8,1.0,1,M,1,M,,").as_bytes()
            ),
            Err(NmeaError::Field(2))
        );
        assert_eq!(
            parse(
                with_checksum("$GPGGA,092750,5321.6802,Q,00630.3372,W,1,8,1.0,1,M,1,M,,")
                    .as_bytes()
            ),
            Err(NmeaError::Field(3))
        );
        assert_eq!(
            parse(with_checksum("$GPRMC,1").as_bytes()),
            Err(NmeaError::Field(2))
        );
    }

    #[test]
    fn random_bytes_and_cut_sentences_never_panic() {
        let good = b"$GPRMC,092750.000,A,5321.6802,N,00630.3372,W,0.02,31.66,280511,,,A*43\r\n";
        let mut seed = 0x1234_5678_9abc_def1_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut splitter = LineSplitter::default();
        let mut parsed = 0;
        for _ in 0..200_000 {
            let mut line = good.to_vec();
            match next() % 4 {
                0 => line.truncate((next() % good.len() as u64) as usize),
                1 => {
                    let at = (next() % line.len() as u64) as usize;
                    line[at] = next() as u8;
                }
                2 => line = (0..next() % 200).map(|_| next() as u8).collect(),
                _ => {
                    // A valid checksum over garbage fields.
                    let body: String = (0..next() % 80)
                        .map(|_| b",.0123456789NSEWAGPRMCVTGS-"[(next() % 27) as usize] as char)
                        .collect();
                    line = with_checksum(&format!("$GP{body}")).into_bytes();
                }
            }
            if parse(&line).is_ok() {
                parsed += 1;
            }
            splitter.feed(&line, |l| {
                let _ = parse(l);
            });
        }
        // Some damaged lines still parse (a flipped bit in a field the checksum... no: the
        // checksum catches single flips), so only the untouched or cut-but-whole ones do.
        assert!(parsed > 0);
    }

    #[test]
    fn the_splitter_keeps_partial_lines_and_drops_noise() {
        let mut s = LineSplitter::default();
        let mut lines = Vec::new();
        s.feed(b"$GPVTG,a\r\n$GPV", |l| lines.push(l.to_vec()));
        s.feed(b"TG,b\r\n", |l| lines.push(l.to_vec()));
        s.feed(&[b'x'; MAX_SENTENCE + 100], |l| lines.push(l.to_vec()));
        s.feed(b"\nok\n", |l| lines.push(l.to_vec()));
        assert_eq!(s.take_overlong(), 1);
        assert_eq!(s.take_overlong(), 0);
        assert_eq!(
            lines,
            vec![
                b"$GPVTG,a\r".to_vec(),
                b"$GPVTG,b\r".to_vec(),
                b"ok".to_vec()
            ]
        );
    }

    #[test]
    fn sound_lines_of_no_use_are_told_apart_from_damaged_ones() {
        // MediaTek and AIS lines from gpsd's regression logs (mtk-3301.log, ait250.log).
        let cases: [(&[u8], NmeaError); 7] = [
            (b"$PMTK010,001*2E\r\n", NmeaError::Proprietary),
            (b"$PMTK010,001*2F", NmeaError::Checksum),
            (b"$POLYN,TIME,RESTART_OCCURRED", NmeaError::Framing),
            (b"# Chipset: MKT-3301", NmeaError::Comment),
            (b"\r", NmeaError::Empty),
            (
                b"!AIVDM,1,1,,B,13njCt031t0DA=lN2:jKmad60l1p,0*12",
                NmeaError::Unsupported,
            ),
            (b"$GPGSV,2,2,06,08,,,49,10,,,41*7E", NmeaError::Unsupported),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line), Err(want), "{}", String::from_utf8_lossy(line));
        }
        let ignored: Vec<bool> = [
            NmeaError::Proprietary,
            NmeaError::Comment,
            NmeaError::Unsupported,
            NmeaError::Empty,
            NmeaError::Checksum,
            NmeaError::Framing,
            NmeaError::Field(2),
        ]
        .iter()
        .map(NmeaError::ignored)
        .collect();
        assert_eq!(ignored, [true, true, true, false, false, false, false]);
    }

    #[test]
    fn epochs_carry_the_rmc_date_to_gga_only_epochs_until_the_clock_jumps() {
        let s = |body: &str| parse(with_checksum(body).as_bytes()).unwrap();
        let gga = |utc: &str| {
            s(&format!(
                "$GPGGA,{utc},4807.0380,N,01131.0000,E,1,08,0.9,545.4,M,46.9,M,,"
            ))
        };
        let mut e = Epochs::default();
        let mut fixes = Vec::new();
        let lines = [
            s("$GPRMC,235959.00,A,4807.0380,N,01131.0000,E,0.0,0.0,251126,,,A"),
            gga("235959.00"),
            gga("000000.00"), // past midnight: the next day
            gga("000001.00"),
            gga("001001.00"), // ten minutes on: a jump, the date is no longer known
            gga("001002.00"),
        ];
        for (t, l) in lines.iter().enumerate() {
            e.push(t as f64, l, |t, f| fixes.push((t, f.utc_us)));
        }
        e.finish(|t, f| fixes.push((t, f.utc_us)));
        // 2026-11-25T23:59:59Z = 1_795_651_199.
        let day = |s: i64| Some(s * 1_000_000);
        assert_eq!(
            fixes,
            [
                (0.0, day(1_795_651_199)),
                (2.0, day(1_795_651_200)),
                (3.0, day(1_795_651_201)),
                (4.0, None),
                (5.0, None),
            ]
        );
    }
}
