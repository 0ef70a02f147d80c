//! `aegis sensors simulate|replay` and `aegis bench sensors`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use aegis_sensors::fusion::{Clock, Fusion, Input, Settings};
use aegis_sensors::sim::{self, Segment, SensorModel};
use clap::Subcommand;
use serde::Serialize;

/// `aegis sensors …`
#[derive(Subcommand, Debug)]
pub enum SensorsCommand {
    /// Write a synthetic drive with known truth: DIR/track.nmea (GGA + RMC, 1 Hz),
    /// DIR/track-imu.csv (100 Hz) and DIR/track-truth.csv.
    Simulate {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Length, seconds.
        #[arg(long, default_value_t = 120.0)]
        seconds: f64,
        /// No GPS between these seconds, e.g. `40,55`.
        #[arg(long, value_delimiter = ',')]
        outage: Vec<f64>,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Feed recorded NMEA (and IMU CSV) through the fusion, in real time or faster, and
    /// write the fused track; with `--truth`, compare fused and raw GPS against it.
    Replay {
        /// NMEA file.
        #[arg(long)]
        gps: PathBuf,
        /// IMU CSV (`t,ax,ay,az,gx,gy,gz`).
        #[arg(long)]
        imu: Option<PathBuf>,
        /// Speed: 1 = real time, 10 = ten times faster, 0 = as fast as possible.
        #[arg(long, default_value_t = 0.0)]
        speed: f64,
        /// Write the fused track here (CSV, 10 Hz).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Truth CSV from `simulate` to score against.
        #[arg(long)]
        truth: Option<PathBuf>,
    },
}

fn drive_segments(seconds: f64) -> Vec<Segment> {
    // Straight, a left turn, a stop, away again, a right turn; repeated to length.
    let pattern = [
        Segment {
            duration: 15.0,
            accel: 0.0,
            yaw_rate: 0.0,
        },
        Segment {
            duration: 15.0,
            accel: 0.0,
            yaw_rate: 0.1,
        },
        Segment {
            duration: 5.0,
            accel: -2.0,
            yaw_rate: 0.0,
        },
        Segment {
            duration: 10.0,
            accel: 0.0,
            yaw_rate: 0.0,
        },
        Segment {
            duration: 10.0,
            accel: 1.0,
            yaw_rate: 0.0,
        },
        Segment {
            duration: 15.0,
            accel: 0.0,
            yaw_rate: -0.08,
        },
    ];
    let mut out = Vec::new();
    let mut left = seconds;
    for s in pattern.iter().cycle() {
        if left <= 0.0 {
            break;
        }
        let d = s.duration.min(left);
        out.push(Segment { duration: d, ..*s });
        left -= d;
    }
    out
}

/// Runs a `sensors` subcommand.
pub fn run(cmd: SensorsCommand) -> anyhow::Result<()> {
    match cmd {
        SensorsCommand::Simulate {
            out,
            seconds,
            outage,
            seed,
        } => {
            let m = SensorModel {
                seed,
                outage: (outage.len() == 2).then(|| (outage[0], outage[1])),
                ..Default::default()
            };
            simulate(&out, seconds, &m)
        }
        SensorsCommand::Replay {
            gps,
            imu,
            speed,
            out,
            truth,
        } => replay(
            &gps,
            imu.as_deref(),
            speed,
            out.as_deref(),
            truth.as_deref(),
        ),
    }
}

/// Writes the drive's three files into `out`.
pub fn simulate(out: &Path, seconds: f64, m: &SensorModel) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let d = sim::drive(&drive_segments(seconds), 10.0, 0.6, m);
    let mut gps = std::io::BufWriter::new(std::fs::File::create(out.join("track.nmea"))?);
    for (_, lines, _) in &d.gps {
        for l in lines {
            writeln!(gps, "{l}\r")?;
        }
    }
    gps.flush()?;
    let mut imu = std::io::BufWriter::new(std::fs::File::create(out.join("track-imu.csv"))?);
    writeln!(imu, "t,ax,ay,az,gx,gy,gz")?;
    for s in &d.imu {
        writeln!(
            imu,
            "{:.3},{:.4},{:.4},{:.4},{:.5},{:.5},{:.5}",
            s.t, s.accel[0], s.accel[1], s.accel[2], s.gyro[0], s.gyro[1], s.gyro[2]
        )?;
    }
    imu.flush()?;
    let mut truth = std::io::BufWriter::new(std::fs::File::create(out.join("track-truth.csv"))?);
    writeln!(truth, "t,lat,lon,speed_mps,heading_deg")?;
    for t in d.truth.iter().step_by(10) {
        let (lat, lon) = d.frame.to_geo(t.x, t.y);
        writeln!(
            truth,
            "{:.2},{lat:.8},{lon:.8},{:.3},{:.2}",
            t.t,
            t.v,
            t.psi.to_degrees().rem_euclid(360.0)
        )?;
    }
    truth.flush()?;
    println!(
        "{}: {:.0} s drive, {} GPS epochs, {} IMU samples",
        out.display(),
        seconds,
        d.gps.len(),
        d.imu.len()
    );
    Ok(())
}

fn replay(
    gps: &Path,
    imu: Option<&Path>,
    speed: f64,
    out: Option<&Path>,
    truth: Option<&Path>,
) -> anyhow::Result<()> {
    let open = |p: &Path| {
        std::fs::File::open(p)
            .map(std::io::BufReader::new)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
    };
    let clock = Clock::new();
    let start = clock.now();
    let stop = AtomicBool::new(false);
    let fusion = std::sync::Mutex::new(Fusion::new(Settings {
        history_s: 1e7,
        ..Settings::default()
    }));
    let push = |t: f64, i: Input| fusion.lock().unwrap_or_else(|p| p.into_inner()).push(t, i);
    let (g, i) = std::thread::scope(|s| -> anyhow::Result<_> {
        let imu_thread = imu
            .map(|p| -> anyhow::Result<_> {
                let r = open(p)?;
                let (clock, stop, push) = (&clock, &stop, &push);
                Ok(s.spawn(move || {
                    aegis_sensors::source::replay_imu(r, clock, start, speed, stop, push)
                }))
            })
            .transpose()?;
        let g = aegis_sensors::source::replay_nmea(open(gps)?, &clock, start, speed, &stop, &push)?;
        let i = match imu_thread {
            Some(h) => Some(
                h.join()
                    .map_err(|_| anyhow::anyhow!("IMU replay panicked"))??,
            ),
            None => None,
        };
        Ok((g, i))
    })?;
    let mut f = fusion.into_inner().unwrap_or_else(|p| p.into_inner());
    f.flush();
    println!(
        "GPS: {} sentences ({} refused, {} ignored); IMU: {} samples ({} refused); fixes used {}, \
         rejected as outliers {}, late {}, filter restarts at time jumps {}",
        g.samples,
        g.bad,
        g.ignored,
        i.map_or(0, |i| i.samples),
        i.map_or(0, |i| i.bad),
        f.stats.fixes,
        f.stats.rejected,
        f.stats.late,
        f.stats.restarts
    );
    if let Some(out) = out {
        let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
        writeln!(w, "t,lat,lon,speed_mps,heading_deg,sigma_m")?;
        let (first, last) = f
            .span()
            .ok_or_else(|| anyhow::anyhow!("no GPS fix in the replay: nothing to write"))?;
        // Rows every 0.1 s; none where no pose is known (past a filter restart's gap).
        let mut t = first;
        while t <= last {
            if let Some(p) = f.pose_at(t) {
                writeln!(
                    w,
                    "{:.1},{:.8},{:.8},{:.3},{:.2},{:.2}",
                    p.t, p.lat, p.lon, p.speed, p.heading_deg, p.sigma_m
                )?;
            }
            t += 0.1;
        }
        w.flush()?;
        println!("fused track → {}", out.display());
    }
    if let Some(truth) = truth {
        score(&f, gps, truth, start, speed)?;
    }
    Ok(())
}

/// RMSE of the fused track and of raw GPS against the truth, at each GPS epoch.
fn score(f: &Fusion, gps: &Path, truth: &Path, start: f64, speed: f64) -> anyhow::Result<()> {
    let frame = f
        .frame()
        .ok_or_else(|| anyhow::anyhow!("no GPS fix in the replay"))?;
    let truth: Vec<(f64, f64, f64)> = std::fs::read_to_string(truth)?
        .lines()
        .skip(1)
        .filter_map(|l| {
            let v: Vec<f64> = l.split(',').filter_map(|x| x.parse().ok()).collect();
            (v.len() >= 3).then(|| (v[0], v[1], v[2]))
        })
        .collect();
    let at = |t: f64| {
        let i = truth.partition_point(|x| x.0 < t - 1e-6);
        truth.get(i).copied()
    };
    let scale = if speed > 0.0 { speed } else { 1.0 };
    let (mut sf, mut sg, mut n) = (0.0, 0.0, 0.0);
    // The replay's own time line (it passes over receiver time jumps).
    let mut timeline = aegis_sensors::source::ReplayTimeline::default();
    for line in std::io::BufReader::new(std::fs::File::open(gps)?).lines() {
        let line = line?;
        let sentence = aegis_sensors::nmea::parse(line.as_bytes());
        let utc = sentence
            .as_ref()
            .ok()
            .and_then(aegis_sensors::nmea::Sentence::utc_s);
        let Some(ft) = utc.map(|u| timeline.place(u)) else {
            continue;
        };
        if let Ok(aegis_sensors::nmea::Sentence::Gga(g)) = sentence
            && let (Some(lat), Some(lon)) = (g.lat, g.lon)
        {
            let Some((_, tl, tn)) = at(ft) else { continue };
            // The replay put file time ft at start + ft / speed on the monotonic clock.
            let Some(p) = f.pose_at(start + ft / scale) else {
                continue;
            };
            let (tx, ty) = frame.to_local(tl, tn);
            let (gx, gy) = frame.to_local(lat, lon);
            let (fx, fy) = frame.to_local(p.lat, p.lon);
            sf += (fx - tx).powi(2) + (fy - ty).powi(2);
            sg += (gx - tx).powi(2) + (gy - ty).powi(2);
            n += 1.0;
        }
    }
    anyhow::ensure!(n > 0.0, "no GPS epoch matched the truth's times");
    let (rf, rg) = ((sf / n).sqrt(), (sg / n).sqrt());
    println!(
        "against the truth ({n} epochs): fused RMSE {rf:.2} m, raw GPS RMSE {rg:.2} m (fused / raw = {:.2})",
        rf / rg
    );
    Ok(())
}

/// `aegis bench sensors` results.
#[derive(Debug, Clone, Serialize)]
pub struct SensorsBench {
    /// Samples in the run (GPS sentences + IMU samples).
    pub samples: usize,
    /// Parsing only, samples/s (baseline).
    pub parse_per_s: f64,
    /// Parsing and fusion, samples/s.
    pub fused_per_s: f64,
    /// fused / parse throughput.
    pub ratio: f64,
    /// Per frame: pose lookup + rule evaluation, µs (p50).
    pub per_frame_p50_us: f64,
    /// Per frame, µs (p99).
    pub per_frame_p99_us: f64,
}

/// Parse and fuse a 10-minute drive on this thread; then time per-frame queries.
pub fn bench() -> anyhow::Result<SensorsBench> {
    let m = SensorModel {
        gps_hz: 5.0,
        ..Default::default()
    };
    let d = sim::drive(&drive_segments(600.0), 10.0, 0.6, &m);
    let mut gps_lines: Vec<(f64, String)> = Vec::new();
    for (t, lines, _) in &d.gps {
        for l in lines {
            gps_lines.push((*t, l.clone()));
        }
    }
    let imu_lines: Vec<String> = d
        .imu
        .iter()
        .map(|s| {
            format!(
                "{:.3},{:.4},{:.4},{:.4},{:.5},{:.5},{:.5}",
                s.t, s.accel[0], s.accel[1], s.accel[2], s.gyro[0], s.gyro[1], s.gyro[2]
            )
        })
        .collect();
    let samples = gps_lines.len() + imu_lines.len();
    // Baseline: parsing only.
    let t0 = Instant::now();
    let mut ok = 0usize;
    for (_, l) in &gps_lines {
        ok += usize::from(aegis_sensors::nmea::parse(l.as_bytes()).is_ok());
    }
    for l in &imu_lines {
        ok += usize::from(matches!(aegis_sensors::imu::parse_csv_line(l), Ok(Some(_))));
    }
    let parse_s = t0.elapsed().as_secs_f64();
    anyhow::ensure!(ok == samples, "{ok} of {samples} parsed");
    // Parsing and fusion, interleaved by time as a live feed would be.
    let t0 = Instant::now();
    let mut f = Fusion::new(Settings {
        history_s: 1e7,
        ..Settings::default()
    });
    let mut g = gps_lines.iter().peekable();
    for l in &imu_lines {
        let s = aegis_sensors::imu::parse_csv_line(l)
            .map_err(anyhow::Error::msg)?
            .ok_or_else(|| anyhow::anyhow!("header"))?;
        while let Some((t, line)) = g.peek().filter(|(t, _)| *t <= s.t) {
            if let Ok(sentence) = aegis_sensors::nmea::parse(line.as_bytes()) {
                f.push(*t, Input::Gps(sentence));
            }
            g.next();
        }
        f.push(s.t, Input::Imu(s));
        f.advance(s.t);
    }
    f.flush();
    let fused_s = t0.elapsed().as_secs_f64();
    // Per frame: the pose at the frame's time and three rules over objects and sensors.
    let rules: Vec<aegis_config::RuleConfig> = serde_yaml_ng::from_str(
        r#"
- { name: intruder, when: { all: [ { track: { label: person, zone: [[0,0],[0.5,0],[0.5,1],[0,1]] } }, { sensor: { name: door, eq: 1 } } ] }, for_s: 5 }
- { name: moving_alert, when: { all: [ { moderation: {} }, { speed: { gt: 0 } } ] } }
- { name: hot, when: { sensor: { name: temp, gt: 40 } }, for_s: 10 }
"#,
    )?;
    let mut engine = aegis_sensors::rules::RuleEngine::new(rules);
    let sensors =
        std::collections::HashMap::from([("door".to_string(), 1.0), ("temp".to_string(), 21.0)]);
    let objects = [
        aegis_sensors::rules::Seen {
            label: "person",
            foot: (0.3, 0.9),
        },
        aegis_sensors::rules::Seen {
            label: "car",
            foot: (0.7, 0.8),
        },
    ];
    let mut times = Vec::with_capacity(20_000);
    let mut t = 10.0;
    for _ in 0..20_000 {
        let t0 = Instant::now();
        let speed = f.pose_at(t).map(|p| p.speed);
        let facts = aegis_sensors::rules::Facts {
            stream: "cam0",
            objects: &objects,
            moderation: false,
            sensors: &sensors,
            speed,
        };
        let fired = engine.evaluate(t, &facts);
        std::hint::black_box((speed, fired));
        times.push(t0.elapsed().as_secs_f64() * 1e6);
        t += 1.0 / 30.0;
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
    Ok(SensorsBench {
        samples,
        parse_per_s: samples as f64 / parse_s,
        fused_per_s: samples as f64 / fused_s,
        ratio: parse_s / fused_s,
        per_frame_p50_us: pct(0.5),
        per_frame_p99_us: pct(0.99),
    })
}
