//! `aegis db stats|check|vacuum|export`: the local store from the command line. Every command
//! opens the database on its own connection; `stats`, `check` and `export` read only, so they
//! are safe while the agent runs (WAL snapshot reads).

use crate::store::export::{csv_field, format_utc, parse_since};
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};

use crate::store;

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// Rows per table, file and WAL size, event time span.
    Stats(DbTarget),
    /// `PRAGMA integrity_check`; exits 1 when the file is damaged.
    Check(DbTarget),
    /// Rebuild the file to give deleted space back (needs free disk as large as the file;
    /// run while the agent is stopped).
    Vacuum(DbTarget),
    /// Events (or metrics, audit, fused records, sensor readings) since a time, as CSV or
    /// JSON lines, oldest first; fused records also by place (`--near LAT,LON`).
    Export {
        /// Which database.
        #[command(flatten)]
        target: DbTarget,
        /// Start: RFC 3339 UTC (`2026-11-26T10:00:00Z`), a relative age (`30m`, `2h`, `7d`)
        /// or `all`.
        #[arg(long)]
        since: String,
        /// Which table.
        #[arg(long, value_enum, default_value_t = Table::Events)]
        table: Table,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// With `--table fused`: only records within `--radius-m` of `LAT,LON`.
        #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
        near: Vec<f64>,
        /// Radius for `--near`, metres.
        #[arg(long, default_value_t = 100.0)]
        radius_m: f64,
    },
    /// (testing) Write events as fast as possible until killed, through the real writer.
    #[command(hide = true)]
    Stress {
        /// Which database.
        #[command(flatten)]
        target: DbTarget,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
    },
}

/// Which database: `--db`, else the config's `store.path`.
#[derive(clap::Args, Debug)]
pub struct DbTarget {
    /// The database file.
    #[arg(long)]
    db: Option<PathBuf>,
    /// The agent config whose `store.path` to use.
    #[arg(long, short, default_value = "/etc/aegis/aegis.yaml")]
    config: PathBuf,
}

impl DbTarget {
    fn resolve(&self) -> anyhow::Result<PathBuf> {
        match &self.db {
            Some(p) => Ok(p.clone()),
            None => Ok(aegis_config::load(&self.config)
                .map_err(|e| anyhow::anyhow!("{e} (or name the database with --db)"))?
                .store
                .path),
        }
    }
}

/// Exported tables.
#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum Table {
    /// Detections, tracks, verdicts.
    Events,
    /// Stored metric samples.
    Metrics,
    /// Who did what.
    Audit,
    /// Events with the fused position at their frame's time (geotagged).
    Fused,
    /// Sensor readings (GPS fixes, IoT values).
    Sensors,
}

/// Export formats.
#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated, RFC 4180 quoting, header row.
    Csv,
}

/// Runs a `db` subcommand.
pub fn run(cmd: DbCommand) -> anyhow::Result<()> {
    match cmd {
        DbCommand::Stats(t) => {
            let path = t.resolve()?;
            let s = store::stats(&path)?;
            println!("{} (schema version {})", path.display(), s.schema_version);
            println!("  file {} bytes, WAL {} bytes", s.file_bytes, s.wal_bytes);
            for (table, n) in &s.rows {
                println!("  {table:<8} {n} rows");
            }
            if let Some((a, b)) = s.events_span_us {
                println!("  events from {} to {}", format_utc(a), format_utc(b));
            }
            Ok(())
        }
        DbCommand::Check(t) => {
            let path = t.resolve()?;
            let verdict = store::check(&path)?;
            println!("{}: {verdict}", path.display());
            anyhow::ensure!(
                verdict == "ok",
                "{} is damaged: stop the agent and see docs/store.md (the agent moves a damaged \
                 file aside at its next start and never deletes it)",
                path.display()
            );
            Ok(())
        }
        DbCommand::Vacuum(t) => {
            let path = t.resolve()?;
            let (before, after) = store::vacuum(&path)?;
            println!("{}: {before} -> {after} bytes", path.display());
            Ok(())
        }
        DbCommand::Export {
            target,
            since,
            table,
            format,
            out,
            near,
            radius_m,
        } => {
            let path = target.resolve()?;
            let since = parse_since(&since, store::now_us())?;
            let mut w: Box<dyn Write> = match &out {
                Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p)?)),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let area = match (near.as_slice(), table) {
                ([], _) => None,
                ([lat, lon], Table::Fused) => Some((*lat, *lon, radius_m)),
                (_, Table::Fused) => anyhow::bail!("--near takes LAT,LON"),
                _ => anyhow::bail!("--near needs --table fused"),
            };
            let n = export(&path, since, table, area, format, &mut w)?;
            w.flush()?;
            eprintln!("exported {n} rows");
            Ok(())
        }
        DbCommand::Stress { target, seconds } => stress(&target.resolve()?, seconds),
    }
}

fn export(
    path: &Path,
    since: i64,
    table: Table,
    area: Option<(f64, f64, f64)>,
    format: Format,
    w: &mut dyn Write,
) -> anyhow::Result<u64> {
    let conn = store::open_reader(path)?;
    // A box around the point (the index on lat, lon serves it); metres → degrees.
    let (lat, lon, r) = area.unwrap_or((0.0, 0.0, f64::INFINITY));
    let dlat = (r / 111_320.0).min(180.0);
    let dlon = (r / (111_320.0 * lat.to_radians().cos().max(1e-6))).min(360.0);
    let (sql, cols): (&str, &[&str]) = match table {
        Table::Events => (
            "SELECT ts_us, id, stream, kind, payload FROM events WHERE ts_us >= ?1 ORDER BY ts_us, id",
            &["time", "id", "stream", "kind", "payload"],
        ),
        Table::Metrics => (
            "SELECT ts_us, name, labels, value FROM metrics WHERE ts_us >= ?1 ORDER BY ts_us",
            &["time", "name", "labels", "value"],
        ),
        Table::Audit => (
            "SELECT ts_us, actor, action, detail FROM audit WHERE ts_us >= ?1 ORDER BY ts_us, id",
            &["time", "actor", "action", "detail"],
        ),
        Table::Fused => (
            "SELECT ts_us, event_id, stream, kind, lat, lon, speed_mps, heading_deg, sigma_m, sensors \
             FROM fused_records WHERE ts_us >= ?1 AND lat BETWEEN ?2 AND ?3 AND lon BETWEEN ?4 AND ?5 \
             ORDER BY ts_us",
            &[
                "time",
                "event_id",
                "stream",
                "kind",
                "lat",
                "lon",
                "speed_mps",
                "heading_deg",
                "sigma_m",
                "sensors",
            ],
        ),
        Table::Sensors => (
            "SELECT ts_us, sensor, value, utc_us FROM sensor_samples WHERE ts_us >= ?1 \
             ORDER BY ts_us",
            // `receiver_utc`: the GPS receiver's own time of the fix (empty when it sent no
            // date); `time` is the agent's clock when the sample arrived.
            &["time", "sensor", "value", "receiver_utc"],
        ),
    };
    if let Format::Csv = format {
        writeln!(w, "{}", cols.join(","))?;
    }
    let mut stmt = conn.prepare(sql)?;
    let mut rows = match table {
        Table::Fused => stmt.query(rusqlite::params![
            since,
            lat - dlat,
            lat + dlat,
            lon - dlon,
            lon + dlon
        ])?,
        _ => stmt.query([since])?,
    };
    let mut n = 0u64;
    while let Some(r) = rows.next()? {
        let mut fields = vec![format_utc(r.get::<_, i64>(0)?)];
        for (i, col) in cols.iter().enumerate().skip(1) {
            let v: rusqlite::types::Value = r.get(i)?;
            fields.push(match v {
                rusqlite::types::Value::Integer(t) if *col == "receiver_utc" => format_utc(t),
                rusqlite::types::Value::Null => String::new(),
                rusqlite::types::Value::Integer(i) => i.to_string(),
                rusqlite::types::Value::Real(f) => f.to_string(),
                rusqlite::types::Value::Text(t) => t,
                rusqlite::types::Value::Blob(b) => String::from_utf8_lossy(&b).into_owned(),
            });
        }
        match format {
            Format::Csv => {
                let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                writeln!(w, "{}", line.join(","))?;
            }
            Format::Jsonl => {
                let mut obj = serde_json::Map::new();
                for (c, f) in cols.iter().zip(fields) {
                    // JSON columns stay JSON.
                    let v = match (*c, serde_json::from_str::<serde_json::Value>(&f)) {
                        ("payload" | "labels" | "sensors", Ok(j)) => j,
                        (
                            "value" | "lat" | "lon" | "speed_mps" | "heading_deg" | "sigma_m",
                            Ok(j),
                        ) => j,
                        _ => serde_json::Value::String(f),
                    };
                    obj.insert((*c).to_string(), v);
                }
                writeln!(w, "{}", serde_json::Value::Object(obj))?;
            }
        }
        n += 1;
    }
    Ok(n)
}

/// Writes events through the real writer as fast as the queue takes them until killed or
/// `seconds` pass. Prints `ready <run>` (a fresh id, stored in each event's payload as `run`
/// with its sequence number `n` from 0), then `committed <first> <last>` for each span of
/// sequence numbers the writer has committed, printed only after the commit returned: a
/// printed row survives the process being killed at any point (a power cut may still take
/// the last ones, see [`store::Progress`]). The kill -9 test kills this at random points.
fn stress(path: &Path, seconds: f64) -> anyhow::Result<()> {
    let st = store::Store::open(store::StoreSettings {
        path: path.to_path_buf(),
        retention: std::time::Duration::from_secs(86_400),
        size_budget: 64 << 20,
        outbox_max_rows: 10_000,
        queue: 4096,
    })?;
    let h = st.handle();
    let run = store::new_event_id();
    let t0 = std::time::Instant::now();
    let stop = std::sync::atomic::AtomicBool::new(false);
    println!("ready {run}");
    let n = std::thread::scope(|s| -> anyhow::Result<u64> {
        // This is the only producer, so queue position k is sequence number k - 1.
        let reporter = s.spawn(|| -> anyhow::Result<()> {
            let mut reported = 0u64;
            loop {
                let done = stop.load(std::sync::atomic::Ordering::Acquire);
                let p = h.wait_progress(reported, std::time::Duration::from_millis(50));
                anyhow::ensure!(
                    p.failed == 0,
                    "the store failed to commit {} records",
                    p.failed
                );
                if p.settled > reported {
                    println!("committed {} {}", reported, p.settled - 1);
                    reported = p.settled;
                }
                if done {
                    return Ok(());
                }
            }
        });
        let mut n = 0u64;
        while t0.elapsed().as_secs_f64() < seconds && !reporter.is_finished() {
            let event = store::Event {
                id: store::new_event_id(),
                ts_us: store::now_us(),
                stream: Some("stress".into()),
                kind: "stress".into(),
                payload: serde_json::json!({ "run": run, "n": n, "pad": "x".repeat(64) }),
            };
            if h.submit(store::Record::Event {
                event,
                outbox_topic: Some("aegis/v1/stress/events".into()),
            }) {
                n += 1;
            } else {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
        h.flush(std::time::Duration::from_secs(30));
        stop.store(true, std::sync::atomic::Ordering::Release);
        reporter
            .join()
            .map_err(|_| anyhow::anyhow!("the reporter panicked"))??;
        Ok(n)
    })?;
    drop(h);
    st.close();
    println!("wrote {n}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_parses_absolute_relative_and_all() {
        let now = 1_800_000_000_000_000;
        assert_eq!(parse_since("2h", now).unwrap(), now - 7_200_000_000);
        assert_eq!(parse_since("all", now).unwrap(), i64::MIN);
        let t = parse_since("2026-11-26T10:00:00Z", now).unwrap();
        assert_eq!(format_utc(t), "2026-11-26T10:00:00.000000Z");
        assert_eq!(
            format_utc(parse_since("1970-01-01T00:00:01.5Z", now).unwrap()),
            "1970-01-01T00:00:01.500000Z"
        );
        for bad in [
            "yesterday",
            "2026-13-01T00:00:00Z",
            "10x",
            "2026-11-26",
            "2026-02-30T00:00:00Z",
            "99999999999999999-01-01T00:00:00Z",
            "292277026596-12-04T15:30:08Z",
        ] {
            let e = parse_since(bad, now).err().unwrap().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field(r#"{"a":1,"b":2}"#), r#""{""a"":1,""b"":2}""#);
    }
}
