use super::*;

fn settings(dir: &Path) -> StoreSettings {
    StoreSettings::for_test(dir)
}

fn event(ts_us: i64, n: u64) -> Event {
    Event {
        id: new_event_id(),
        ts_us,
        stream: Some("cam0".into()),
        kind: "test".into(),
        payload: serde_json::json!({ "n": n }),
    }
}

fn count(path: &Path, table: &str) -> i64 {
    open_reader(path)
        .unwrap()
        .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

#[test]
fn records_are_written_in_batched_transactions_and_read_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(settings(dir.path())).unwrap();
    assert_eq!(store.opened.found_version, 0);
    let h = store.handle();
    let t0 = now_us();
    for n in 0..2000 {
        assert!(h.submit(Record::Event {
            event: event(t0 + n as i64, n),
            outbox_topic: None,
        }));
    }
    h.submit(Record::Audit {
        ts_us: t0,
        actor: "test".into(),
        action: "a".into(),
        detail: "d".into(),
    });
    let counters = h.counters().clone();
    // Closing with a handle still alive elsewhere does not hang; that handle's later
    // records are dropped and counted.
    store.close();
    assert!(!h.submit(Record::Audit {
        ts_us: t0,
        actor: "late".into(),
        action: "a".into(),
        detail: "d".into(),
    }));
    assert_eq!(counters.dropped.load(Ordering::Relaxed), 1);
    assert_eq!(counters.written.load(Ordering::Relaxed), 2001);
    let tx = counters.transactions.load(Ordering::Relaxed);
    assert!(tx < 100, "{tx} transactions for 2001 records: not batched");
    let path = dir.path().join("aegis.db");
    let conn = open_reader(&path).unwrap();
    let evs = events_since(&conn, t0 + 1000, 10).unwrap();
    assert_eq!(evs.len(), 10);
    assert_eq!(evs[0].payload["n"], 1000);
    assert!(evs.windows(2).all(|w| w[0].ts_us <= w[1].ts_us));
    assert_eq!(check(&path).unwrap(), "ok");
    // Reopening migrates nothing and keeps everything.
    let again = Store::open(settings(dir.path())).unwrap();
    assert_eq!(again.opened.found_version, schema::VERSION);
    again.close();
    assert_eq!(count(&path, "events"), 2000);
}

#[test]
fn progress_tells_which_records_are_committed_and_which_failed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(settings(dir.path())).unwrap();
    let h = store.handle();
    assert_eq!(h.progress(), Progress::default());
    let t0 = now_us();
    for n in 0..10 {
        assert!(h.submit(Record::Event {
            event: event(t0 + n as i64, n),
            outbox_topic: None,
        }));
    }
    let p = h.wait_progress(9, Duration::from_secs(10));
    assert_eq!(
        p,
        Progress {
            settled: 10,
            failed: 0
        }
    );
    // Reported committed: a reader sees every one of them now.
    let path = dir.path().join("aegis.db");
    assert_eq!(count(&path, "events"), 10);
    // A transaction that fails (NaN is stored as NULL: NOT NULL violated) is settled and
    // failed, not committed.
    assert!(h.flush(Duration::from_secs(10)));
    assert!(h.submit(Record::Metric {
        ts_us: t0,
        name: "m".into(),
        labels: "{}".into(),
        value: f64::NAN,
    }));
    let p = h.wait_progress(10, Duration::from_secs(10));
    assert_eq!(
        p,
        Progress {
            settled: 11,
            failed: 1
        }
    );
    assert_eq!(count(&path, "metrics"), 0);
    store.close();
}

#[test]
fn a_full_queue_drops_and_counts_instead_of_blocking() {
    let (tx, _rx) = std::sync::mpsc::sync_channel(2);
    let h = StoreHandle {
        tx,
        counters: Arc::default(),
        commits: Arc::default(),
    };
    let metric = || Record::Metric {
        ts_us: 0,
        name: "m".into(),
        labels: "{}".into(),
        value: 1.0,
    };
    assert!(h.submit(metric()) && h.submit(metric()));
    // Nobody reads: the third does not wait, it is dropped and counted.
    assert!(!h.submit(metric()));
    assert_eq!(h.counters.dropped.load(Ordering::Relaxed), 1);
}

#[test]
fn a_damaged_file_is_moved_aside_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aegis.db");
    std::fs::write(&path, b"this is not a database, but somebody's data").unwrap();
    let store = Store::open(settings(dir.path())).unwrap();
    let aside = store.opened.moved_aside.clone().expect("moved aside");
    store.close();
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        b"this is not a database, but somebody's data"
    );
    let conn = open_reader(&path).unwrap();
    let detail: String = conn
        .query_row(
            "SELECT detail FROM audit WHERE action = 'store.recovered'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(detail.contains(".corrupt-"), "{detail}");
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aegis.db");
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = Store::open(settings(dir.path())).err().unwrap();
    assert!(
        matches!(
            err.problem,
            StoreProblem::Schema(schema::SchemaError::Newer { found: 99 })
        ),
        "{err:?}"
    );
    let e = err.to_string();
    assert!(
        e.contains("aegis.db") && e.contains("schema version 99"),
        "{e}"
    );
}

/// Schema 3 adds the receiver's UTC to `sensor_samples`: a version-2 database keeps its
/// rows (read back without one) and takes new rows with it.
#[test]
fn sensor_samples_keep_the_receiver_utc_and_old_databases_keep_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aegis.db");
    // A version-2 database with a GPS fix in it, as an agent before this one left it
    // (without what versions 3, 4 and 5 add).
    Store::open(settings(dir.path())).unwrap().close();
    let t0 = now_us();
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "ALTER TABLE sensor_samples DROP COLUMN utc_us; DROP TABLE workflow_history; DROP TABLE clips; \
             PRAGMA user_version = 2;",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO sensor_samples (ts_us, sensor, value) VALUES (?1, 'gps', '{\"lat\":48.1}')",
            params![t0],
        )
        .unwrap();
    }
    let store = Store::open(settings(dir.path())).unwrap();
    assert_eq!(store.opened.found_version, 2);
    let h = store.handle();
    let receiver = 1_282_380_916_000_000;
    for (dt, sensor, utc_us) in [(1, "gps", Some(receiver)), (2, "door", None)] {
        assert!(h.submit(Record::SensorSample {
            ts_us: t0 + dt,
            sensor: sensor.into(),
            value: "{}".into(),
            utc_us,
        }));
    }
    store.close();
    let rows = sensor_samples_since(&open_reader(&path).unwrap(), t0, 10).unwrap();
    let got: Vec<(i64, &str, Option<i64>)> = rows
        .iter()
        .map(|r| (r.ts_us - t0, r.sensor.as_str(), r.utc_us))
        .collect();
    assert_eq!(
        got,
        [
            (0, "gps", None),
            (1, "gps", Some(receiver)),
            (2, "door", None)
        ]
    );
    assert_eq!(rows[0].value, r#"{"lat":48.1}"#);
    let again = Store::open(settings(dir.path())).unwrap();
    assert_eq!(again.opened.found_version, schema::VERSION);
    again.close();
}

#[test]
fn retention_by_age_and_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.retention = Duration::from_secs(86_400);
    let store = Store::open(s.clone()).unwrap();
    let h = store.handle();
    let now = now_us();
    for n in 0..50 {
        h.submit(Record::Event {
            event: event(now - 2 * 86_400_000_000 + n, n as u64),
            outbox_topic: None,
        });
        h.submit(Record::Event {
            event: event(now + n, n as u64),
            outbox_topic: None,
        });
    }
    drop(h);
    store.close();
    // The next open runs retention first: the old half goes.
    let store = Store::open(s.clone()).unwrap();
    store.close();
    assert_eq!(count(&s.path, "events"), 50);

    // Size: ~20 MB of metrics against a 16 MB budget.
    s.size_budget = 16 << 20;
    let store = Store::open(s.clone()).unwrap();
    let h = store.handle();
    let label = "x".repeat(200);
    for n in 0..80_000 {
        while !h.submit(Record::Metric {
            ts_us: now + n,
            name: "m".into(),
            labels: label.clone(),
            value: n as f64,
        }) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    drop(h);
    store.close();
    let before = count(&s.path, "metrics");
    let store = Store::open(s.clone()).unwrap();
    store.close();
    let after = count(&s.path, "metrics");
    assert!(after < before, "{before} -> {after}");
    let conn = open_reader(&s.path).unwrap();
    let oldest: i64 = conn
        .query_row("SELECT MIN(ts_us) FROM metrics", [], |r| r.get(0))
        .unwrap();
    assert!(oldest > now, "the oldest rows go first");
}

#[test]
fn the_outbox_keeps_its_newest_rows_within_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.outbox_max_rows = 100;
    let store = Store::open(s.clone()).unwrap();
    let h = store.handle();
    let now = now_us();
    for n in 0..150 {
        h.submit(Record::Event {
            event: event(now + n, n as u64),
            outbox_topic: Some("aegis/v1/d/events".into()),
        });
    }
    let counters = h.counters().clone();
    drop(h);
    store.close();
    assert_eq!(count(&s.path, "outbox"), 100);
    assert_eq!(count(&s.path, "events"), 150, "events themselves are kept");
    assert_eq!(counters.outbox_dropped.load(Ordering::Relaxed), 50);
    let conn = open_reader(&s.path).unwrap();
    let first: Vec<u8> = conn
        .query_row("SELECT payload FROM outbox ORDER BY seq LIMIT 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    let e: Event = serde_json::from_slice(&first).unwrap();
    assert_eq!(e.payload["n"], 50);
}

#[test]
fn event_ids_are_unique_uuid_v7() {
    let ids: std::collections::HashSet<String> = (0..10_000).map(|_| new_event_id()).collect();
    assert_eq!(ids.len(), 10_000);
    let id = new_event_id();
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "7", "{id}");
    assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
}

/// Many ids per millisecond (a tight loop makes thousands): each must sort after the one
/// before it, as a string, on every thread, and no two threads may share one.
#[test]
fn event_ids_sort_in_the_order_they_were_made_within_a_millisecond_and_across_threads() {
    let strictly_increasing = |ids: &[String]| {
        if let Some(w) = ids.windows(2).find(|w| w[0] >= w[1]) {
            panic!(
                "{} was made before {} but does not sort before it",
                w[0], w[1]
            );
        }
    };
    let ids: Vec<String> = (0..50_000).map(|_| new_event_id()).collect();
    strictly_increasing(&ids);
    let threads: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(|| (0..20_000).map(|_| new_event_id()).collect::<Vec<_>>()))
        .collect();
    let mut all = std::collections::HashSet::new();
    for t in threads {
        let ids = t.join().unwrap();
        strictly_increasing(&ids);
        for id in ids {
            assert_eq!(&id[14..15], "7", "{id}");
            assert!(all.insert(id), "an id was made twice");
        }
    }
}
