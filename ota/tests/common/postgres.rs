//! PostgreSQL for the gateway's tests: Debian's server, one per test binary (started on
//! first use, stopped when the binary exits), one database per test. The `chimera` binary's
//! unit tests include this file too (`#[path]`, beside `tools.rs` and `pki.rs`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::pki::TestCa;
use super::tools::{free_port, have};

/// Where Debian installs its PostgreSQL servers (`N/bin/postgres`).
const PG_LIB: &str = "/usr/lib/postgresql";

/// The role the tests connect as (password authentication over TCP, TLS available).
pub const PG_USER: &str = "chimera";

/// The newest installed server's `bin` directory.
fn pg_bindir() -> Option<PathBuf> {
    std::fs::read_dir(PG_LIB)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .max_by_key(|(v, _)| *v)
        .map(|(_, bin)| bin)
}

/// The uid and gid the server runs as: PostgreSQL refuses to run as root, so as root the
/// `postgres` account Debian's package creates; otherwise whoever runs the tests.
fn pg_account() -> Option<Option<(u32, u32)>> {
    // SAFETY: getuid(2) has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Some(None);
    }
    // SAFETY: a NUL-terminated name; getpwnam returns NULL or a pointer to a static record
    // that is read at once, before anything else could call getpw*.
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: `pw` is non-NULL and points to a valid passwd record (above).
    Some(Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) }))
}

/// Whether Debian's PostgreSQL server is installed (and, as root, its `postgres` account);
/// under CI its absence fails the test, otherwise the skip is recorded.
pub fn have_postgres(suite: &str) -> bool {
    have(
        suite,
        "postgresql",
        pg_bindir().is_some() && pg_account().is_some(),
    )
}

/// The test binary's PostgreSQL server (started on first use).
pub fn postgres() -> &'static Postgres {
    static SERVER: OnceLock<Postgres> = OnceLock::new();
    static STOP: std::sync::Once = std::sync::Once::new();
    let pg = SERVER.get_or_init(Postgres::start);
    STOP.call_once(|| {
        extern "C" fn stop() {
            if let Some(pg) = SERVER.get() {
                pg.stop();
            }
        }
        // SAFETY: `stop` is an `extern "C" fn()` that neither unwinds (it only sends a
        // signal, reaps the child and removes files, ignoring errors) nor calls `exit`.
        let rc = unsafe { libc::atexit(stop) };
        assert_eq!(rc, 0, "atexit");
    });
    pg
}

/// A PostgreSQL server on a free loopback port, its data, socket, certificates and log in a
/// temporary directory: `trust` for the superuser `postgres` on its Unix socket (the test
/// harness's own statements), SCRAM passwords for [`PG_USER`] over TCP, TLS with a
/// certificate for 127.0.0.1 issued by [`Postgres::ca_file`]. Durability is switched off
/// (`fsync`, `synchronous_commit`, `full_page_writes`): it is thrown away.
pub struct Postgres {
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    pid: libc::pid_t,
    password: String,
}

/// Random lowercase hex.
fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).expect("random");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Postgres {
    fn start() -> Postgres {
        let bin = pg_bindir().expect("have_postgres() before postgres()");
        let account = pg_account().expect("have_postgres() before postgres()");
        let dir = tempfile::Builder::new()
            .prefix("aegis-pg-")
            .tempdir()
            .expect("temporary directory")
            .keep();
        let sock = dir.join("sock");
        std::fs::create_dir(&sock).unwrap();
        // A CA and a server certificate for 127.0.0.1 signed by it.
        let ca = TestCa::new("aegis test CA");
        ca.write(&dir.join("ca.crt"));
        ca.issue(&dir, "server", &["127.0.0.1", "localhost"]);
        if let Some((uid, gid)) = account {
            for p in [
                &dir,
                &sock,
                &dir.join("server.key"),
                &dir.join("server.crt"),
            ] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
            }
        }
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let as_server = |program: &str| {
            let mut c = Command::new(bin.join(program));
            if let Some((uid, gid)) = account {
                use std::os::unix::process::CommandExt as _;
                c.uid(uid).gid(gid);
            }
            c.env_remove("PGDATA").env("LC_ALL", "C.UTF-8");
            c
        };
        let init = as_server("initdb")
            .arg("--pgdata")
            .arg(dir.join("data"))
            .args([
                "--username=postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .stdout(log("initdb.log"))
            .stderr(log("initdb.err"))
            .status()
            .expect("run initdb");
        assert!(
            init.success(),
            "initdb failed: {}",
            std::fs::read_to_string(dir.join("initdb.err")).unwrap_or_default()
        );
        let port = free_port();
        let mut server = as_server("postgres");
        server
            .arg("-D")
            .arg(dir.join("data"))
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(&sock);
        for setting in [
            "listen_addresses=127.0.0.1".to_string(),
            "fsync=off".into(),
            "synchronous_commit=off".into(),
            "full_page_writes=off".into(),
            "max_connections=200".into(),
            "ssl=on".into(),
            format!("ssl_cert_file={}", dir.join("server.crt").display()),
            format!("ssl_key_file={}", dir.join("server.key").display()),
        ] {
            server.arg("-c").arg(setting);
        }
        server
            .stdin(Stdio::null())
            .stdout(log("postgres.log"))
            .stderr(log("postgres.err"));
        {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: runs in the child between fork and exec, after the uid change (which
            // would clear it); prctl(2) is async-signal-safe and touches no memory of ours.
            unsafe {
                server.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        // The parent-death signal follows the *thread* that forked the server: a thread
        // that lives as long as the test binary spawns it, so a test binary killed (not
        // exiting, which `stop` handles) takes its server with it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("postgres-parent".into())
            .spawn(move || {
                let child = server.spawn();
                let _ = tx.send(child.as_ref().map(|c| c.id()).map_err(|e| e.to_string()));
                let _keep = child;
                loop {
                    std::thread::park();
                }
            })
            .unwrap();
        let pid = rx.recv().unwrap().expect("spawn postgres") as libc::pid_t;
        let pg = Postgres {
            port,
            dir,
            bin,
            pid,
            password: random_hex(16),
        };
        // A hang guard, not a speed check.
        let t0 = Instant::now();
        loop {
            let ready = Command::new(pg.bin.join("pg_isready"))
                .arg("-q")
                .arg("-h")
                .arg(&sock)
                .arg("-p")
                .arg(port.to_string())
                .status()
                .expect("run pg_isready");
            if ready.success() {
                break;
            }
            // SAFETY: waitpid(2) on our own child, without blocking; no memory is passed.
            let gone = unsafe { libc::waitpid(pg.pid, std::ptr::null_mut(), libc::WNOHANG) };
            assert!(
                gone == 0 && t0.elapsed() < Duration::from_secs(120),
                "postgres did not start: {}",
                std::fs::read_to_string(pg.dir.join("postgres.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        pg.psql(
            "postgres",
            &format!(
                "CREATE ROLE {PG_USER} LOGIN CREATEDB PASSWORD '{}'",
                pg.password
            ),
        );
        pg
    }

    /// Immediate shutdown, then the directory goes (at exit; errors ignored).
    fn stop(&self) {
        // SAFETY: kill(2) and waitpid(2) on our own child; no memory is passed.
        unsafe {
            libc::kill(self.pid, libc::SIGQUIT);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Runs `sql` in database `db` as the superuser (Unix socket, trust) and returns the
    /// output, unaligned, tuples only (`psql -At`).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(self.dir.join("sock"))
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A new, empty database owned by [`PG_USER`]: `t_` and random hex. Its collation is
    /// ICU's `en-US`, as production databases' usually are (not byte order): queries that
    /// must sort alike on both engines have to say `COLLATE "C"`.
    pub fn create_database(&self) -> String {
        let name = format!("t_{}", random_hex(8));
        self.psql(
            "postgres",
            &format!(
                "CREATE DATABASE {name} OWNER {PG_USER} TEMPLATE template0 \
                 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
            ),
        );
        name
    }

    /// `postgres://chimera@127.0.0.1:PORT/DB` (no password: [`Postgres::password`]).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{PG_USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// [`PG_USER`]'s password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The CA (PEM) that issued the server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
}
