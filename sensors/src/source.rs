//! Sensor drivers: each reads its device or file on the caller's thread and hands samples,
//! stamped on the agent's [`Clock`], to a sink (usually a [`crate::fusion::Fusion`] behind a
//! lock). They stop when `stop` is set (checked at least every 200 ms).
//!
//! - NMEA from a serial port (`serial:///dev/ttyTHS0?baud=9600`, raw termios, no extra
//!   crate), UDP datagrams (`udp://0.0.0.0:10110`) or a replay file paced by the sentences'
//!   own UTC times (`file:///x.nmea`).
//! - IMU from a replay CSV paced by its `t` column, or IIO sysfs polled at a rate.
//!
//! Live samples are stamped when they arrive; replayed ones at `start + file_time / speed`.

use std::io::{BufRead, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::fusion::{Clock, Input};
use crate::imu::IioImu;
use crate::nmea::{self, LineSplitter, Sentence};

/// What a driver did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Samples delivered.
    pub samples: u64,
    /// Lines or messages refused (checksum, framing, bad fields).
    pub bad: u64,
}

fn utc_of(s: &Sentence) -> Option<f64> {
    match s {
        Sentence::Gga(g) => g.utc_s,
        Sentence::Rmc(r) => r.utc_s,
        _ => None,
    }
}

/// Parses one NMEA line into `sink` at time `t`, counting it (sentence types the fusion does
/// not use are skipped silently).
fn take_line(line: &[u8], t: f64, st: &mut DriverStats, sink: &mut impl FnMut(f64, Input)) {
    match nmea::parse(line) {
        Ok(s) => {
            st.samples += 1;
            sink(t, Input::Gps(s));
        }
        Err(nmea::NmeaError::Unsupported) => {}
        Err(_) => st.bad += 1,
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

/// Replays NMEA lines paced by their UTC times at `speed`× (0: no pacing, samples stamped
/// on the file's own time line). The first sentence's time maps to monotonic `start`;
/// replay GPS and IMU files together with the same `start` (their first samples must be
/// simultaneous).
pub fn replay_nmea(
    reader: impl BufRead,
    clock: &Clock,
    start: f64,
    speed: f64,
    stop: &AtomicBool,
    mut sink: impl FnMut(f64, Input),
) -> std::io::Result<DriverStats> {
    let mut st = DriverStats::default();
    let (mut first, mut last_utc, mut day) = (None::<f64>, None::<f64>, 0.0);
    let mut current = start;
    for line in reader.split(b'\n') {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let line = line?;
        match nmea::parse(&line) {
            Ok(s) => {
                if let Some(u) = utc_of(&s) {
                    if last_utc.is_some_and(|l| u + 43_200.0 < l) {
                        day += 86_400.0;
                    }
                    last_utc = Some(u);
                    let ft = u + day;
                    let f0 = *first.get_or_insert(ft);
                    current = if speed > 0.0 {
                        start + (ft - f0) / speed
                    } else {
                        start + (ft - f0)
                    };
                    if speed > 0.0 && !sleep_until(clock, current, stop) {
                        break;
                    }
                }
                st.samples += 1;
                sink(current, Input::Gps(s));
            }
            Err(nmea::NmeaError::Unsupported) => {}
            Err(_) => st.bad += 1,
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
    mut sink: impl FnMut(f64, Input),
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
                st.samples += 1;
                sink(t, Input::Imu(s));
            }
            Ok(None) => {}
            Err(_) => st.bad += 1,
        }
    }
    Ok(st)
}

/// NMEA from a byte stream (a serial port): lines split across reads are reassembled.
pub fn stream_nmea(
    mut reader: impl Read,
    clock: &Clock,
    stop: &AtomicBool,
    mut sink: impl FnMut(f64, Input),
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
    }
    Ok(st)
}

/// NMEA in UDP datagrams (one or more sentences each), until `stop`.
pub fn udp_nmea(
    socket: &std::net::UdpSocket,
    clock: &Clock,
    stop: &AtomicBool,
    mut sink: impl FnMut(f64, Input),
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
        split.feed(&data, |line| {
            if !line.iter().all(u8::is_ascii_whitespace) {
                take_line(line, t, &mut st, &mut sink);
            }
        });
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
    mut sink: impl FnMut(f64, Input),
) -> DriverStats {
    let mut st = DriverStats::default();
    let period = 1.0 / rate_hz.max(1.0);
    let mut next = clock.now();
    while !stop.load(Ordering::Relaxed) {
        let t = clock.now();
        match imu.read(t) {
            Ok(s) => {
                st.samples += 1;
                sink(t, Input::Imu(s));
            }
            Err(_) => st.bad += 1,
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
        let st = replay_nmea(text.as_bytes(), &clock, clock.now(), 10.0, &stop, |t, _| {
            got.push(t)
        })
        .unwrap();
        assert_eq!(st, DriverStats { samples: 3, bad: 1 });
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
            let st = udp_nmea(&rx, &clock, &stop, |_, _| n += 1).unwrap();
            assert_eq!(st, DriverStats { samples: 2, bad: 1 });
        });
        assert_eq!(n, 2);
    }
}
