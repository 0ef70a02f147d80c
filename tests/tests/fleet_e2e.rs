//! The fleet link against a real mosquitto: store-and-forward through a broker outage with
//! a kill -9 and restart of the agent in the middle of it (zero events lost, order kept,
//! duplicates only as QoS 1 allows), and commands with request/response.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aegis_tests::*;

fn write_config(dir: &Path, clip: &Path, port: u16) -> std::path::PathBuf {
    let cfg = dir.join("aegis.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
device: {{ id: dev1 }}
pipeline:
  sources: [{{ id: cam0, url: "file://{clip}", loop: true, realtime: true }}]
  stages:
    - kind: moderate
      model: nn
      every_n_frames: 3
      rules: [{{ classes: [FACE_FEMALE], action: alert, min_score: 0.3 }}]
  sinks: [{{ kind: discard }}]
inference:
  runtime: .models/libonnxruntime.so.1.32.0
  models: [{{ name: nn, kind: nudenet, file: .models/nudenet-320n.onnx }}]
store: {{ path: {db} }}
fleet: {{ enabled: true, broker_url: "mqtt://127.0.0.1:{port}", telemetry_s: 1, keepalive_s: 5 }}
web: {{ listen: "127.0.0.1:0" }}
"#,
            clip = clip.display(),
            db = dir.join("aegis.db").display(),
        ),
    )
    .unwrap();
    cfg
}

fn agent(dir: &Path, cfg: &Path) -> Child {
    Command::new(aegis_bin())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
        .spawn()
        .unwrap()
}

/// The retained message on `topic` (waits up to 2 s), with extra `mosquitto_sub` arguments.
fn retained(port: u16, topic: &str, extra: &[&str]) -> String {
    let o = Command::new("/usr/bin/mosquitto_sub")
        .args(["-p", &port.to_string(), "-t", topic, "-C", "1", "-W", "2"])
        .args(extra)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn sigterm(c: &mut Child) {
    // SAFETY: kill(2) on our own child's pid with a valid signal number.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    c.wait().unwrap();
}

/// A persistent-session QoS 1 subscriber printing payloads, one per line.
fn subscriber(port: u16, topic: &str, out: &Path) -> Child {
    Command::new("/usr/bin/mosquitto_sub")
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "-i",
            "e2e-consumer",
            "-q",
            "1",
            "-t",
            topic,
        ])
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn db_events(dir: &Path) -> Vec<serde_json::Value> {
    let out = aegis_ok(
        dir,
        &[
            "db",
            "export",
            "--db",
            dir.join("aegis.db").to_str().unwrap(),
            "--since",
            "all",
        ],
    );
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn outbox_rows(dir: &Path) -> u64 {
    let stats = aegis_ok(
        dir,
        &[
            "db",
            "stats",
            "--db",
            dir.join("aegis.db").to_str().unwrap(),
        ],
    );
    stats
        .lines()
        .find_map(|l| l.trim().strip_prefix("outbox"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stats}"))
}

fn received_ids(file: &Path) -> Vec<(String, i64)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                v["id"].as_str().unwrap().to_string(),
                v["ts_us"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn events_survive_a_broker_outage_and_an_agent_kill_9_in_order_without_loss() {
    if !have_mosquitto() {
        return;
    }
    let dir = dir_with_models_and_photo();
    let d = dir.path();
    let clip = d.join("face.mp4");
    aegis_ok(
        d,
        &[
            "sample",
            "--out",
            clip.to_str().unwrap(),
            "--width",
            "640",
            "--height",
            "360",
            "--seconds",
            "3",
            "--background",
            ".samples/astronaut.png",
        ],
    );
    let mut broker = Broker::start(&d.join("broker"));
    let received = d.join("received.jsonl");
    let mut sub = subscriber(broker.port, "aegis/v1/dev1/events", &received);
    wait_subscribed(broker.port, "aegis/v1/dev1/events", &received);
    let cfg = write_config(d, &clip, broker.port);

    // Online: events flow.
    let mut a = agent(d, &cfg);
    let t0 = Instant::now();
    while received_ids(&received).len() < 5 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no events arrived online"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Outage (the same mechanics as 60 s, compressed): the broker goes away; the agent keeps
    // producing into its outbox; in the middle of the outage it is killed -9 and restarted.
    // Each step waits for its positive signal (a hang guard only bounds it).
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let t0 = Instant::now();
        while !done() {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "gave up waiting: {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    broker.down();
    // Enough events on each side of the kill to show order and loss (counted, not timed).
    wait("events queued in the outbox during the outage", &|| {
        outbox_rows(d) >= 10
    });
    a.kill().unwrap();
    a.wait().unwrap();
    let queued_at_kill = outbox_rows(d);
    let mut a = agent(d, &cfg);
    wait(
        "the restarted agent to queue more events during the outage",
        &|| outbox_rows(d) >= queued_at_kill + 10,
    );
    broker.up();
    // Back online: the backlog drains (the consumer gets what was queued); then a clean
    // stop flushes what is left.
    let online = received_ids(&received).len();
    wait("the backlog to reach the consumer", &|| {
        received_ids(&received).len() >= online + queued_at_kill as usize
    });
    sigterm(&mut a);
    assert_eq!(
        outbox_rows(d),
        0,
        "the outbox must be empty after the broker acknowledged everything"
    );
    // Everything stored has been acknowledged by the broker; wait until the consumer has it
    // (or the guard gives up, and the loss check below names what is missing).
    let all_stored = db_events(d).len();
    let t0 = Instant::now();
    while received_ids(&received)
        .iter()
        .map(|(id, _)| id)
        .collect::<std::collections::HashSet<_>>()
        .len()
        < all_stored
        && t0.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    sub.kill().unwrap();
    sub.wait().unwrap();

    let stored = db_events(d);
    let got = received_ids(&received);
    assert!(stored.len() > 20, "{} events stored", stored.len());
    // Zero lost: every stored event reached the consumer.
    let got_set: std::collections::HashSet<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    let missing: Vec<&str> = stored
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .filter(|id| !got_set.contains(id))
        .collect();
    if !missing.is_empty() {
        let keep = dir.keep();
        panic!(
            "{} of {} events lost (files kept in {}): {missing:?}",
            missing.len(),
            stored.len(),
            keep.display()
        );
    }
    // Nothing invented.
    let stored_set: std::collections::HashSet<&str> =
        stored.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert!(got.iter().all(|(id, _)| stored_set.contains(id.as_str())));
    // Order kept: first deliveries come in event-time order.
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<i64> = got
        .iter()
        .filter(|(id, _)| seen.insert(id.clone()))
        .map(|(_, ts)| *ts)
        .collect();
    assert!(
        firsts.windows(2).all(|w| w[0] <= w[1]),
        "out of order: {firsts:?}"
    );
    eprintln!(
        "{} events stored, {} deliveries ({} duplicates)",
        stored.len(),
        got.len(),
        got.len() - stored.len()
    );
}

#[test]
fn commands_answer_on_the_response_topic_with_the_correlation_data() {
    if !have_mosquitto() {
        return;
    }
    let dir = dir_with_models_and_photo();
    let d = dir.path();
    let clip = make_clip(d, "clip.mp4", 320, 240, 2.0);
    let broker = Broker::start(&d.join("broker"));
    let cfg = write_config(d, &clip, broker.port);
    let replies = d.join("replies.txt");
    let mut sub = Command::new("/usr/bin/mosquitto_sub")
        .args([
            "-p",
            &broker.port.to_string(),
            "-V",
            "mqttv5",
            "-t",
            "replies/#",
            "-v",
            "-F",
            "%t %D %p",
        ])
        .stdout(std::fs::File::create(&replies).unwrap())
        .spawn()
        .unwrap();
    let mut a = agent(d, &cfg);
    // Wait for the retained online status.
    let t0 = Instant::now();
    loop {
        let status = retained(broker.port, "aegis/v1/dev1/status", &[]);
        if status.contains("\"online\"") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no online status");
    }
    let send = |name: &str, payload: &str, corr: &str| {
        let st = Command::new("/usr/bin/mosquitto_pub")
            .args([
                "-p",
                &broker.port.to_string(),
                "-V",
                "mqttv5",
                "-q",
                "1",
                "-t",
                &format!("aegis/v1/dev1/cmd/{name}"),
                "-D",
                "publish",
                "response-topic",
                &format!("replies/{name}"),
                "-D",
                "publish",
                "correlation-data",
                corr,
                "-m",
                payload,
            ])
            .status()
            .unwrap();
        assert!(st.success());
    };
    let snapshot = Command::new("/usr/bin/mosquitto_sub")
        .args([
            "-p",
            &broker.port.to_string(),
            "-V",
            "mqttv5",
            "-t",
            "replies/snapshot",
            "-C",
            "1",
            "-W",
            "20",
            "-F",
            "%D %P %x",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    send("snapshot", "{}", "c-6");
    send("ping", "{}", "c-1");
    send("get_config", "{}", "c-2");
    send("query_events", r#"{"since_us": 0, "limit": 5}"#, "c-3");
    send("launch_missiles", "{}", "c-4");
    send("set_log_level", "not json", "c-5");
    // A word tracing would take for a target name (silencing every log) is refused.
    send("set_log_level", r#"{"level": "verbose"}"#, "c-7");
    send("query_events", r#"{"limit": 5000}"#, "c-8");
    let t0 = Instant::now();
    let text = loop {
        let text =
            String::from_utf8_lossy(&std::fs::read(&replies).unwrap_or_default()).into_owned();
        if text.lines().filter(|l| l.starts_with("replies/")).count() >= 8
            || t0.elapsed() > Duration::from_secs(15)
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let snap = String::from_utf8_lossy(&snapshot.wait_with_output().unwrap().stdout).into_owned();
    // A runtime toggle: set → retained state.
    assert!(
        retained(broker.port, "aegis/v1/dev1/toggles/telemetry_s/state", &[])
            .contains("\"value\":1")
    );
    // The log filter in force is RUST_LOG's (it overrides the config's `info`).
    let state = retained(broker.port, "aegis/v1/dev1/toggles/log_level/state", &[]);
    assert!(state.contains("\"value\":\"warn\""), "{state}");
    // log_level takes bare text; a refused value never becomes the retained state (checked
    // once the telemetry_s toggle sent after it was applied: toggles are handled in order).
    for level in ["debug", "verbose"] {
        let st = Command::new("/usr/bin/mosquitto_pub")
            .args(["-p", &broker.port.to_string(), "-q", "1"])
            .args(["-t", "aegis/v1/dev1/toggles/log_level/set", "-m", level])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let st = Command::new("/usr/bin/mosquitto_pub")
        .args([
            "-p",
            &broker.port.to_string(),
            "-q",
            "1",
            "-t",
            "aegis/v1/dev1/toggles/telemetry_s/set",
            "-m",
            r#"{"value": 7}"#,
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let t0 = Instant::now();
    while !retained(broker.port, "aegis/v1/dev1/toggles/telemetry_s/state", &[])
        .contains("\"value\":7")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "gave up waiting for the toggle to be applied"
        );
    }
    let state = retained(broker.port, "aegis/v1/dev1/toggles/log_level/state", &[]);
    assert!(state.contains("\"value\":\"debug\""), "{state}");
    sigterm(&mut a);
    sub.kill().unwrap();
    sub.wait().unwrap();
    // The snapshot: a JPEG (SOI ... EOI) in one chunk of one, with the correlation data.
    let snap = snap.trim();
    assert!(
        snap.starts_with("c-6 chunk:1/1 ffd8"),
        "{}",
        &snap[..snap.len().min(80)]
    );
    assert!(snap.ends_with("ffd9"), "not a whole JPEG");
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("replies/{name} ")))
            .unwrap_or_else(|| panic!("no reply to {name}: {text}"))
            .to_string()
    };
    assert!(
        line("ping").contains(" c-1 ") && line("ping").contains("\"pong\":true"),
        "{text}"
    );
    let config = line("get_config");
    assert!(
        config.contains(" c-2 ") && config.contains("\"device\""),
        "{config}"
    );
    let unknown = line("launch_missiles");
    assert!(
        unknown.contains(" c-4 ") && unknown.contains("unknown command"),
        "{unknown}"
    );
    let replies_to = |name: &str, corr: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("replies/{name} {corr} ")))
            .unwrap_or_else(|| panic!("no reply {corr} to {name}: {text}"))
            .to_string()
    };
    let events = replies_to("query_events", "c-3");
    assert!(
        events.contains("\"ok\":true") && events.contains("\"clamped\":false"),
        "{events}"
    );
    let bad = replies_to("set_log_level", "c-5");
    assert!(bad.contains("not JSON"), "{bad}");
    let typo = replies_to("set_log_level", "c-7");
    assert!(
        typo.contains("\"ok\":false") && typo.contains("verbose"),
        "{typo}"
    );
    let clamped = replies_to("query_events", "c-8");
    assert!(
        clamped.contains("\"limit\":1000") && clamped.contains("\"clamped\":true"),
        "{clamped}"
    );
    // The agent said goodbye: retained offline status.
    let status = retained(broker.port, "aegis/v1/dev1/status", &[]);
    assert!(status.contains("\"offline\""));
}

#[test]
fn fleet_sim_and_benches_run_and_report() {
    if !have_mosquitto() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let json = d.join("sim.json");
    aegis_ok(
        d,
        &[
            "fleet-sim",
            "--devices",
            "20",
            "--seconds",
            "2",
            "--rate",
            "5",
            "--pings",
            "20",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let r = &r[0];
    assert_eq!(r["connected"], 20, "{r}");
    assert_eq!(r["pings"], 20, "{r}");
    assert!(r["delivered_per_s"].as_f64().unwrap() > 0.0, "{r}");
    // A link's MQTT client is sized by its window: without a bound rumqttc keeps a slot per
    // packet id (about 14 MB per connection, measured 14.6 MB per simulated device).
    assert!(r["rss_per_device"].as_u64().unwrap() < 4_000_000, "{r}");
    let out = aegis_ok(d, &["bench", "fleet", "--pings", "10", "--backlog", "300"]);
    // The whole backlog reached the consumer (the bench fails if it does not drain).
    assert!(out.contains("300 rows delivered"), "{out}");
    let out = aegis_ok(d, &["bench", "store", "--rows", "2000"]);
    assert!(
        out.contains("2000 event rows")
            && out.contains("batched writer")
            && out.contains("one row per transaction"),
        "{out}"
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let st = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl {args:?}");
}

/// A CA, a broker certificate for 127.0.0.1 and a device certificate, all signed by the CA.
fn make_pki(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=aegis-test-ca",
        ],
    );
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    // Extensions make X.509 v3 certificates (webpki refuses v1).
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [("server", "127.0.0.1"), ("client", "dev1")] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(["-extfile".into(), format!("{name}.ext")]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        openssl(dir, &args);
    }
}

#[test]
fn mutual_tls_connects_and_a_device_without_a_certificate_is_refused() {
    if !have_mosquitto() {
        return;
    }
    let dir = dir_with_models_and_photo();
    let d = dir.path();
    let pki = d.join("pki");
    make_pki(&pki);
    let broker = Broker::start_with(
        &d.join("broker"),
        &format!(
            "cafile {p}/ca.pem\ncertfile {p}/server.pem\nkeyfile {p}/server.key\n\
             require_certificate true\nallow_anonymous true\n",
            p = pki.display()
        ),
    );
    let port = broker.port;
    let clip = make_clip(d, "clip.mp4", 320, 240, 1.0);
    let status = |want_client_cert: bool| -> String {
        let (ca, cert, key) = (
            format!("{}/ca.pem", pki.display()),
            format!("{}/client.pem", pki.display()),
            format!("{}/client.key", pki.display()),
        );
        let mut args = vec!["-h", "127.0.0.1", "--cafile", &ca];
        if want_client_cert {
            args.extend(["--cert", &cert, "--key", &key]);
        }
        retained(port, "aegis/v1/dev1/status", &args)
    };
    let run = |with_cert: bool| {
        let cfg = write_config(d, &clip, port);
        let p = pki.display();
        let tls = if with_cert {
            format!(
                "tls: {{ ca_file: {p}/ca.pem, cert_file: {p}/client.pem, key_file: {p}/client.key }}"
            )
        } else {
            format!("tls: {{ ca_file: {p}/ca.pem }}")
        };
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            &format!("mqtt://127.0.0.1:{port}\", telemetry_s: 1,"),
            &format!("mqtts://127.0.0.1:{port}\", telemetry_s: 1, {tls},"),
        );
        assert!(text.contains("mqtts://"), "{text}");
        std::fs::write(&cfg, text).unwrap();
        agent(d, &cfg)
    };
    // With its certificate the device connects and its retained status is there.
    let mut a = run(true);
    let t0 = Instant::now();
    while !status(true).contains("\"online\"") {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no online status over TLS"
        );
    }
    sigterm(&mut a);
    assert!(status(true).contains("\"offline\""));
    // Without a client certificate the broker refuses it; the agent keeps running and says why.
    // Positive signals that it tried and was refused: the broker logged the failed handshake
    // and the agent said the broker is unreachable; only then is "not online" meaningful.
    let handshakes_before = broker.log().matches("OpenSSL Error").count();
    let mut a = run(false);
    let t0 = Instant::now();
    loop {
        let log = std::fs::read_to_string(d.join("agent.log")).unwrap_or_default();
        let refused = broker.log().matches("OpenSSL Error").count() > handshakes_before;
        if refused && log.contains("fleet broker unreachable") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "gave up waiting for the refusal; broker:\n{}\nagent:\n{log}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        broker.log().contains("peer did not return a certificate"),
        "the broker must refuse for the missing certificate: {}",
        broker.log()
    );
    // Still running, still refused: the retained status is the first run's goodbye.
    assert!(
        a.try_wait().unwrap().is_none(),
        "a refused broker must not stop the agent"
    );
    assert!(
        status(true).contains("\"offline\""),
        "a refused device must not look online"
    );
    sigterm(&mut a);
    drop(broker);
}

#[test]
fn username_and_password_are_used_and_a_wrong_password_is_refused() {
    if !have_mosquitto() {
        return;
    }
    let dir = dir_with_models_and_photo();
    let d = dir.path();
    let passwd = d.join("passwd");
    let st = Command::new("/usr/bin/mosquitto_passwd")
        .args(["-c", "-b", passwd.to_str().unwrap(), "dev1", "s3cret"])
        .status()
        .unwrap();
    assert!(st.success());
    let broker = Broker::start_with(
        &d.join("broker"),
        &format!(
            "allow_anonymous false\npassword_file {}\n",
            passwd.display()
        ),
    );
    let port = broker.port;
    let clip = make_clip(d, "clip.mp4", 320, 240, 1.0);
    let status = || {
        retained(
            port,
            "aegis/v1/dev1/status",
            &["-u", "dev1", "-P", "s3cret"],
        )
    };
    let run = |password: &str| {
        let cfg = write_config(d, &clip, port);
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "telemetry_s: 1,",
            &format!("telemetry_s: 1, username: dev1, password: {password},"),
        );
        std::fs::write(&cfg, text).unwrap();
        agent(d, &cfg)
    };
    let mut a = run("wrong");
    // The positive signals that it tried: the broker's CONNACK refusal in its log, and the
    // agent's word about it.
    let t0 = Instant::now();
    while !(broker.log().contains("not authorised")
        && std::fs::read_to_string(d.join("agent.log"))
            .unwrap_or_default()
            .contains("fleet broker unreachable"))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "gave up waiting for the broker to refuse the wrong password: {}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !status().contains("\"online\""),
        "a wrong password must not get in"
    );
    sigterm(&mut a);
    let log = std::fs::read_to_string(d.join("agent.log")).unwrap();
    assert!(
        log.contains("fleet broker unreachable") && !log.contains("wrong,"),
        "{log}"
    );
    let mut a = run("s3cret");
    let t0 = Instant::now();
    while !status().contains("\"online\"") {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no online status with the right password"
        );
    }
    sigterm(&mut a);
    drop(broker);
}

/// A config whose one source does not exist: `aegis run` logs its start, then fails fast.
fn failing_run_config(dir: &Path) -> std::path::PathBuf {
    let cfg = dir.join("fails.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
device: {{ id: dev1 }}
pipeline:
  sources: [{{ id: cam0, url: "file://{missing}" }}]
  sinks: [{{ kind: discard }}]
store: {{ path: {db} }}
web: {{ listen: "127.0.0.1:0" }}
log: {{ format: human, level: info }}
"#,
            missing = dir.join("missing.mp4").display(),
            db = dir.join("aegis.db").display(),
        ),
    )
    .unwrap();
    cfg
}

/// `aegis run` with stderr to a pipe and `RUST_LOG` as given (unset when `None`).
fn run_to_pipe(dir: &Path, rust_log: Option<&str>) -> String {
    let cfg = failing_run_config(dir);
    let mut cmd = Command::new(aegis_bin());
    cmd.args(["run", "--config", cfg.to_str().unwrap()])
        .current_dir(dir)
        .env_remove("NO_COLOR")
        .env_remove("JOURNAL_STREAM");
    match rust_log {
        Some(v) => cmd.env("RUST_LOG", v),
        None => cmd.env_remove("RUST_LOG"),
    };
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "a missing source must fail the run");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn human_logs_to_a_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let log = run_to_pipe(dir.path(), None);
    assert!(
        log.contains("INFO") && log.contains("starting pipeline"),
        "{log}"
    );
    assert!(
        !log.contains("\x1b["),
        "ANSI escape codes in piped logs: {log:?}"
    );
}

#[test]
fn a_rust_log_that_is_not_a_filter_is_refused_out_loud_and_logging_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // A bare word is a target name to tracing: accepted as such, it silenced every log.
    let log = run_to_pipe(dir.path(), Some("verbose"));
    assert!(
        log.contains("RUST_LOG") && log.contains("\"verbose\""),
        "the refusal must name the variable and the value: {log}"
    );
    assert!(
        log.contains("starting pipeline"),
        "the configured level (info) must stay in force: {log}"
    );
}

/// The id (`urn:uuid:…`) of a drafted workflow.
fn workflow_id(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let line = text.lines().find(|l| l.starts_with("id: ")).unwrap();
    line["id: ".len()..].trim().to_string()
}

/// Every message on `aegis/v1/+/receipts` so far: (device from the topic, payload).
fn receipts_by_topic(file: &Path) -> Vec<(String, Vec<u8>)> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (topic, hex) = l.split_once('\t')?;
            let device = topic.strip_prefix("aegis/v1/")?.strip_suffix("/receipts")?;
            let bytes = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            Some((device.to_string(), bytes))
        })
        .collect()
}

#[test]
fn simulated_devices_answer_workflows_with_receipts_their_enrolled_keys_verify() {
    if !have_mosquitto() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    gateway_and_device(d, "orin-1", &["site-a"]);
    let n = 20;
    let pipeline = sim_fleet(d, n);
    // The gateway's registry is the simulated fleet's.
    std::fs::copy(d.join("fleet/devices.json"), d.join("devices.json")).unwrap();
    let good = draft_workflow(d, "good", 1, &pipeline("[]"), "[]");
    let bad = draft_workflow(d, "bad", 2, &pipeline("[]"), "[]");
    let broker = Broker::start(&d.join("broker"));
    let receipts = d.join("receipts.txt");
    let mut sub = Command::new("/usr/bin/mosquitto_sub")
        .args([
            "-p",
            &broker.port.to_string(),
            "-q",
            "1",
            "-t",
            "aegis/v1/+/receipts",
        ])
        .args(["-F", "%t\t%x"])
        .stdout(std::fs::File::create(&receipts).unwrap())
        .spawn()
        .unwrap();
    let mut sim = run_sim_fleet(d, broker.port, &workflow_id(&bad));
    let t0 = Instant::now();
    while !std::fs::read_to_string(d.join("sim.out"))
        .unwrap()
        .contains(&format!("{n} connected"))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the simulated devices never connected"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let keys: std::collections::HashMap<String, aegis_ota::sign::PublicKey> = (0..n)
        .map(|i| {
            let id = format!("sim-{i:05}");
            let key =
                aegis_ota::sign::PublicKey::read(&d.join(format!("fleet/{id}/keys/device.pub")))
                    .unwrap();
            (id, key)
        })
        .collect();
    for (wf, verdict) in [(&good, "applied"), (&bad, "rolled_back")] {
        chimera_ok(d, &["sign", wf.to_str().unwrap(), "--key", "gw.key"]);
        let signed = wf.to_str().unwrap().replace(".maml.md", ".signed.maml.md");
        chimera_ok(
            d,
            &[
                "publish",
                &signed,
                "--to",
                "site-a",
                "--broker",
                &format!("mqtt://127.0.0.1:{}", broker.port),
            ],
        );
        let id = workflow_id(wf);
        let t0 = Instant::now();
        loop {
            // Each device's answer verifies with the key enrolled for the topic's device.
            let answered: std::collections::BTreeSet<String> = receipts_by_topic(&receipts)
                .into_iter()
                .filter_map(|(dev, text)| {
                    let r = aegis_ota::receipt::Receipt::verify(&text, keys.get(&dev)?).ok()?;
                    (r.device == dev && r.workflow_id == id && r.verdict.as_str() == verdict)
                        .then_some(dev)
                })
                .collect();
            if answered.len() == n {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{verdict}: {} of {n} devices answered",
                answered.len()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    sigterm(&mut sim);
    let _ = sub.kill();
    let _ = sub.wait();
}
