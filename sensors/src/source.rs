//! Sensor drivers: each reads its device or file on the caller's thread and hands samples,
//! stamped on the agent's [`Clock`], to a [`Sink`] (usually a [`crate::fusion::Fusion`]
//! behind a lock). They stop when `stop` is set (checked at least every 200 ms).
//!
//! - NMEA from a serial port (`serial:///dev/ttyTHS0?baud=9600`, raw termios, no extra
//!   crate), UDP datagrams (`udp://0.0.0.0:10110`) or a replay file paced by the sentences'
//!   own UTC times (`file:///x.nmea`, see [`ReplayTimeline`] for time jumps in a file).
//! - IMU from a replay CSV paced by its `t` column, or IIO sysfs polled at a rate.
//!
//! Live samples are stamped when they arrive; replayed ones at `start + file_time / speed`.
//! Every line is accounted for as it is read, not when the input ends (a serial port or a
//! UDP socket never ends): [`Sink::sample`], [`Sink::refused`] (bad: damaged, malformed,
//! overlong) or [`Sink::ignored`] (sound but of no use: other sentence types, proprietary
//! sentences, `#` comments). Empty lines are none of these.

use std::io::{BufRead, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::fusion::{Clock, Input, MAX_GPS_SILENCE_S, MAX_TIME_JUMP_S};
use crate::imu::IioImu;
use crate::nmea::{self, LineSplitter};

/// What a driver did (its totals when it returns).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Samples delivered.
    pub samples: u64,
    /// Lines or messages refused (checksum, framing, bad fields, overlong).
    pub bad: u64,
    /// Sound lines of no use (other sentence types, proprietary sentences, comments).
    pub ignored: u64,
}

/// Where a driver delivers what it reads, as it reads it. Any `FnMut(f64, Input)` is a sink
/// that takes the samples and leaves the counting to the driver's [`DriverStats`].
pub trait Sink {
    /// A sample at monotonic time `t`.
    fn sample(&mut self, t: f64, input: Input);
    /// A line or message refused, and why.
    fn refused(&mut self, _why: &dyn std::fmt::Display) {}
    /// A sound line of no use here.
    fn ignored(&mut self) {}
}

impl<F: FnMut(f64, Input)> Sink for F {
    fn sample(&mut self, t: f64, input: Input) {
        self(t, input);
    }
}

/// Why a line over [`nmea::MAX_SENTENCE`] bytes was dropped.
struct Overlong;

impl std::fmt::Display for Overlong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line longer than {} bytes", nmea::MAX_SENTENCE)
    }
}

impl DriverStats {
    fn sample(&mut self, sink: &mut impl Sink, t: f64, input: Input) {
        self.samples += 1;
        sink.sample(t, input);
    }

    fn refused(&mut self, sink: &mut impl Sink, why: &dyn std::fmt::Display) {
        self.bad += 1;
        sink.refused(why);
    }

    fn ignored(&mut self, sink: &mut impl Sink) {
        self.ignored += 1;
        sink.ignored();
    }

    /// Accounts for a line that did not parse.
    fn not_used(&mut self, sink: &mut impl Sink, e: nmea::NmeaError) {
        match e {
            nmea::NmeaError::Empty => {}
            e if e.ignored() => self.ignored(sink),
            e => self.refused(sink, &e),
        }
    }

    fn overlong(&mut self, sink: &mut impl Sink, split: &mut LineSplitter) {
        for _ in 0..split.take_overlong() {
            self.refused(sink, &Overlong);
        }
    }
}

/// Parses one NMEA line into `sink` at time `t`, counting it.
fn take_line(line: &[u8], t: f64, st: &mut DriverStats, sink: &mut impl Sink) {
    match nmea::parse(line) {
        Ok(s) => st.sample(sink, t, Input::Gps(s)),
        Err(e) => st.not_used(sink, e),
    }
}

/// Sleeps until monotonic `t` on `clock` (in slices, watching `stop`); false if stopped.
fn sleep_until(clock: &Clock, t: f64, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let left = t - clock.now();
        if left <= 0.0 {
            return true;
        }
        std::thread::sleep(Duration::from_secs_f64(left.min(0.2)));
    }
}

/// A replayed log's own time line: receiver UTC (seconds of day) → seconds since the
/// log's first timed sentence, across midnight. A step of the receiver's clock backwards
/// by more than [`MAX_TIME_JUMP_S`] or forwards by more than [`MAX_GPS_SILENCE_S`] is a
/// time jump (a receiver reset, recordings joined): the time line does not follow it but
/// moves on by one epoch interval (the last step seen, at most 1 s), so the replay keeps
/// the file's order and does not wait out, or dead-reckon across, time no recording covers;
/// the fusion sees the receiver's jump and restarts its filter. Shorter steps (outages)
/// are kept as they are.
#[derive(Debug, Clone, Default)]
pub struct ReplayTimeline {
    last_utc: Option<f64>,
    at: f64,
    epoch: Option<f64>,
    /// Time jumps passed over.
    pub jumps: u64,
}

impl ReplayTimeline {
    /// Seconds since the first timed sentence for a sentence stamped `utc` (seconds of
    /// day), given in file order.
    pub fn place(&mut self, utc: f64) -> f64 {
        if let Some(last) = self.last_utc {
            let step = (utc - last + 43_200.0).rem_euclid(86_400.0) - 43_200.0;
            if (-MAX_TIME_JUMP_S..=MAX_GPS_SILENCE_S).contains(&step) {
                self.at += step;
                if step > 0.0 {
                    self.epoch = Some(step.min(1.0));
                }
            } else {
                self.at += self.epoch.unwrap_or(1.0);
                self.jumps += 1;
            }
        }
        self.last_utc = Some(utc);
        self.at
    }
}

/// Replays NMEA lines paced by their UTC times at `speed`× (0: no pacing, samples stamped
/// on the file's own time line, [`ReplayTimeline`]). The first sentence's time maps to
/// monotonic `start`; replay GPS and IMU files together with the same `start` (their first
/// samples must be simultaneous; time jumps in a joined IMU file are not passed over).
pub fn replay_nmea(
    reader: impl BufRead,
    clock: &Clock,
    start: f64,
    speed: f64,
    stop: &AtomicBool,
    mut sink: impl Sink,
) -> std::io::Result<DriverStats> {
    let mut st = DriverStats::default();
    let mut timeline = ReplayTimeline::default();
    let mut current = start;
    for line in reader.split(b'\n') {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let line = line?;
        match nmea::parse(&line) {
            Ok(s) => {
                if let Some(u) = s.utc_s() {
                    let ft = timeline.place(u);
                    current = if speed > 0.0 {
                        start + ft / speed
                    } else {
                        start + ft
                    };
                    if speed > 0.0 && !sleep_until(clock, current, stop) {
                        break;
                    }
                }
                st.sample(&mut sink, current, Input::Gps(s));
            }
            Err(e) => st.not_used(&mut sink, e),
        }
    }
    Ok(st)
}

/// Replays an IMU CSV paced by its `t` column at `speed`× (0: no pacing); the first
/// sample maps to monotonic `start`.
pub fn replay_imu(
    reader: impl BufRead,
    clock: &Clock,
    start: f64,
    speed: f64,
    stop: &AtomicBool,
    mut sink: impl Sink,
) -> std::io::Result<DriverStats> {
    let mut st = DriverStats::default();
    let mut first = None::<f64>;
    for line in reader.lines() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match crate::imu::parse_csv_line(&line?) {
            Ok(Some(mut s)) => {
                let f0 = *first.get_or_insert(s.t);
                let t = start + (s.t - f0) / if speed > 0.0 { speed } else { 1.0 };
                if speed > 0.0 && !sleep_until(clock, t, stop) {
                    break;
                }
                s.t = t;
                st.sample(&mut sink, t, Input::Imu(s));
            }
            Ok(None) => {}
            Err(e) => st.refused(&mut sink, &e),
        }
    }
    Ok(st)
}

/// NMEA from a byte stream (a serial port): lines split across reads are reassembled.
pub fn stream_nmea(
    mut reader: impl Read,
    clock: &Clock,
    stop: &AtomicBool,
    mut sink: impl Sink,
) -> std::io::Result<DriverStats> {
    let mut st = DriverStats::default();
    let mut split = LineSplitter::default();
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        let t = clock.now();
        split.feed(&buf[..n], |line| take_line(line, t, &mut st, &mut sink));
        st.overlong(&mut sink, &mut split);
    }
    Ok(st)
}

/// NMEA in UDP datagrams (one or more sentences each), until `stop`.
pub fn udp_nmea(
    socket: &std::net::UdpSocket,
    clock: &Clock,
    stop: &AtomicBool,
    mut sink: impl Sink,
) -> std::io::Result<DriverStats> {
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut st = DriverStats::default();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        let t = clock.now();
        let mut split = LineSplitter::default();
        let mut data = buf[..n].to_vec();
        data.push(b'\n');
        split.feed(&data, |line| take_line(line, t, &mut st, &mut sink));
        st.overlong(&mut sink, &mut split);
    }
    Ok(st)
}

/// Opens a serial port raw at `baud` (8N1, no flow control, reads time out after 200 ms).
pub fn open_serial(path: &Path, baud: u32) -> std::io::Result<std::fs::File> {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(false)
        .custom_flags_noctty()
        .open(path)?;
    let speed = match baud {
        4800 => libc::B4800,
        9600 => libc::B9600,
        19200 => libc::B19200,
        38400 => libc::B38400,
        57600 => libc::B57600,
        115_200 => libc::B115200,
        230_400 => libc::B230400,
        460_800 => libc::B460800,
        921_600 => libc::B921600,
        other => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("baud {other} is not one of 4800 … 921600"),
            ));
        }
    };
    let fd = f.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it from a valid open descriptor.
    let mut tio: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open for the lifetime of `f`; tio points to a valid termios.
    if unsafe { libc::tcgetattr(fd, &mut tio) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: cfmakeraw/cfset*speed only write into `tio`.
    unsafe {
        libc::cfmakeraw(&mut tio);
        libc::cfsetispeed(&mut tio, speed);
        libc::cfsetospeed(&mut tio, speed);
    }
    tio.c_cflag |= libc::CLOCAL | libc::CREAD;
    tio.c_cc[libc::VMIN] = 0;
    tio.c_cc[libc::VTIME] = 2;
    // SAFETY: fd is valid and tio is initialised above.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &tio) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}

impl NoCtty for std::fs::OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOCTTY)
    }
}

/// Polls an IIO IMU at `rate_hz` until `stop`.
pub fn poll_iio(
    imu: &IioImu,
    rate_hz: f64,
    clock: &Clock,
    stop: &AtomicBool,
    mut sink: impl Sink,
) -> DriverStats {
    let mut st = DriverStats::default();
    let period = 1.0 / rate_hz.max(1.0);
    let mut next = clock.now();
    while !stop.load(Ordering::Relaxed) {
        let t = clock.now();
        match imu.read(t) {
            Ok(s) => st.sample(&mut sink, t, Input::Imu(s)),
            Err(e) => st.refused(&mut sink, &e),
        }
        next += period;
        if !sleep_until(clock, next, stop) {
            break;
        }
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_nmea_replay_is_paced_by_its_utc_times() {
        let mut text = String::new();
        for (i, s) in ["120000.00", "120000.50", "120001.00"].iter().enumerate() {
            text.push_str(&nmea::with_checksum(&format!(
                "$GPGGA,{s},4807.0380,N,01131.0000,E,1,08,0.9,545.4,M,46.9,M,,"
            )));
            text.push_str("\r\n");
            if i == 1 {
                text.push_str("$GPGGA,garbage*00\r\n");
            }
        }
        let clock = Clock::new();
        let stop = AtomicBool::new(false);
        let mut got = Vec::new();
        let st = replay_nmea(
            text.as_bytes(),
            &clock,
            clock.now(),
            10.0,
            &stop,
            |t: f64, _: Input| got.push(t),
        )
        .unwrap();
        assert_eq!(
            st,
            DriverStats {
                samples: 3,
                bad: 1,
                ignored: 0
            }
        );
        // 0.5 s of file time at 10× is 50 ms apart.
        assert!(
            (got[1] - got[0] - 0.05).abs() < 0.02 && (got[2] - got[1] - 0.05).abs() < 0.02,
            "{got:?}"
        );
    }

    #[test]
    fn udp_datagrams_with_several_sentences() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = rx.local_addr().unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let lines = crate::sim::nmea_epoch(43_200.0, 48.1, 11.5, 1.0, 3.0, 90.0).join("\r\n");
        tx.send_to(lines.as_bytes(), addr).unwrap();
        tx.send_to(b"noise", addr).unwrap();
        let stop = AtomicBool::new(false);
        let clock = Clock::new();
        let mut n = 0;
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(500));
                stop.store(true, Ordering::Relaxed);
            });
            let st = udp_nmea(&rx, &clock, &stop, |_: f64, _: Input| n += 1).unwrap();
            assert_eq!(
                st,
                DriverStats {
                    samples: 2,
                    bad: 1,
                    ignored: 0
                }
            );
        });
        assert_eq!(n, 2);
    }

    /// Counts what a driver reports, readable from another thread while it runs.
    #[derive(Default)]
    struct Tally {
        samples: std::sync::atomic::AtomicU64,
        bad: std::sync::atomic::AtomicU64,
        ignored: std::sync::atomic::AtomicU64,
    }

    impl Tally {
        fn get(&self) -> (u64, u64, u64) {
            (
                self.samples.load(Ordering::Relaxed),
                self.bad.load(Ordering::Relaxed),
                self.ignored.load(Ordering::Relaxed),
            )
        }

        /// Waits (bounded) until the counts are `want`; returns the last seen.
        fn wait_for(&self, want: (u64, u64, u64)) -> (u64, u64, u64) {
            for _ in 0..500 {
                if self.get() == want {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            self.get()
        }
    }

    impl Sink for &Tally {
        fn sample(&mut self, _: f64, _: Input) {
            self.samples.fetch_add(1, Ordering::Relaxed);
        }
        fn refused(&mut self, _: &dyn std::fmt::Display) {
            self.bad.fetch_add(1, Ordering::Relaxed);
        }
        fn ignored(&mut self) {
            self.ignored.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Real lines from MediaTek (gpsd's test/daemon/mtk-3301.log, BSD-2-Clause): a comment,
    /// proprietary sentences with and without a checksum, an unused type, a fix.
    const MIXED: &str = "# Chipset: MKT-3301\r\n\
        $PMTK010,001*2E\r\n\
        $POLYN,TIME,RESTART_OCCURRED\r\n\
        $GPGSV,2,2,06,08,,,49,10,,,41*7E\r\n\
        \r\n\
        $GPGGA,081436.000,5212.982135,N,00653.101394,E,1,3,2.88,102.907,M,47.093,M,,*5F\r\n\
        $GPGGA,081436.000,5212.982135,N,00653.101394,E,1,3,2.88,102.907,M,47.093,M,,*5E\r\n";

    #[test]
    fn a_serial_stream_that_never_ends_is_counted_as_it_is_read() {
        let (mut tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let (stop, clock, tally) = (AtomicBool::new(false), Clock::new(), Tally::default());
        std::thread::scope(|s| {
            let reader = s.spawn(|| stream_nmea(&rx, &clock, &stop, &tally));
            use std::io::Write;
            tx.write_all(MIXED.as_bytes()).unwrap();
            // A $PMTKCHN line of 203 bytes (proprietary, valid checksum) and 600 bytes of
            // noise without a newline, then its end.
            let chn = nmea::with_checksum(&format!("$PMTKCHN,{}", ["21422"; 32].join(",")));
            assert!(chn.len() > 164, "{}", chn.len());
            tx.write_all(format!("{chn}\r\n").as_bytes()).unwrap();
            tx.write_all(&[b'x'; 600]).unwrap();
            tx.write_all(b"\n").unwrap();
            // Still open: the counters have moved all the same.
            let live = tally.wait_for((1, 3, 4));
            stop.store(true, Ordering::Relaxed);
            let st = reader.join().unwrap().unwrap();
            assert_eq!(live, (1, 3, 4));
            assert_eq!(
                st,
                DriverStats {
                    samples: 1,
                    bad: 3,
                    ignored: 4
                }
            );
        });
    }

    #[test]
    fn udp_datagrams_are_counted_as_they_arrive() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = rx.local_addr().unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (stop, clock, tally) = (AtomicBool::new(false), Clock::new(), Tally::default());
        std::thread::scope(|s| {
            let reader = s.spawn(|| udp_nmea(&rx, &clock, &stop, &tally));
            tx.send_to(MIXED.as_bytes(), addr).unwrap();
            let first = tally.wait_for((1, 2, 3));
            tx.send_to(b"$PUBX,00,noise*00", addr).unwrap();
            let second = tally.wait_for((1, 3, 3));
            stop.store(true, Ordering::Relaxed);
            reader.join().unwrap().unwrap();
            assert_eq!((first, second), ((1, 2, 3), (1, 3, 3)));
        });
    }

    #[test]
    fn a_replay_passes_over_time_jumps_and_keeps_outages() {
        let mut tl = ReplayTimeline::default();
        let placed: Vec<f64> = [
            43_200.0, 43_201.0, 43_202.0, // 12:00:00 …
            43_232.0, // a 30 s outage: kept
            40_082.0, // 52 minutes back: passed over
            40_083.0, // on from there
            86_399.0, // 12.6 hours forward: passed over
            0.5,      // midnight: 1.5 s on
        ]
        .iter()
        .map(|u| tl.place(*u))
        .collect();
        assert_eq!(
            placed,
            [0.0, 1.0, 2.0, 32.0, 33.0, 34.0, 35.0, 36.5],
            "{placed:?}"
        );
        assert_eq!(tl.jumps, 2);
    }
}
