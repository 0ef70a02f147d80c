//! A mosquitto and a PostgreSQL of our own for the gateway's tests (the workspace's test
//! crate has the same mosquitto helper; this crate's tests cannot depend on it),
//! `chimera serve` set up and called ([`serve`]), a local OIDC provider ([`oidc`]) and
//! simulated devices ([`fleet`]). Each test binary uses part of it; the `chimera` binary's
//! unit tests include this file too (`#[path]`; without its submodules).
#![allow(dead_code)]

pub mod fleet;
pub mod oidc;
pub mod postgres;
pub mod serve;
pub mod tools;

pub use postgres::{have_postgres, postgres};
use tools::{free_port, have};

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Whether mosquitto is installed; under CI its absence fails the test. A skip is
/// recorded in `$AEGIS_SKIP_LOG` as the other gated tests do.
pub fn have_mosquitto(suite: &str) -> bool {
    have(
        suite,
        "mosquitto",
        Path::new("/usr/sbin/mosquitto").exists(),
    )
}

/// Debian's SoftHSM 2 PKCS#11 module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Whether SoftHSM 2 (Debian's `softhsm2`: its PKCS#11 module and `softhsm2-util`) is
/// installed; under CI its absence fails the test, elsewhere a skip is recorded.
pub fn have_softhsm(suite: &str) -> bool {
    have(
        suite,
        "softhsm2",
        [SOFTHSM_MODULE, "/usr/bin/softhsm2-util"]
            .iter()
            .all(|f| Path::new(f).exists()),
    )
}

/// A mosquitto on a free loopback port, killed on drop.
pub struct Broker {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// Starts one (anonymous, persistent in `dir`) on a free port.
    pub fn start(dir: &Path) -> Broker {
        let port = free_port();
        std::fs::create_dir_all(dir).unwrap();
        // SAFETY: getuid(2) has no preconditions.
        let user = if unsafe { libc::getuid() } == 0 {
            "user root\n"
        } else {
            ""
        };
        std::fs::write(
            dir.join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nautosave_interval 1\n{user}",
                dir.display()
            ),
        )
        .unwrap();
        let mut b = Broker {
            port,
            dir: dir.to_path_buf(),
            child: None,
        };
        b.up();
        b
    }

    /// (Re)starts the process and waits until it listens.
    pub fn up(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.log"))
            .unwrap();
        self.child = Some(
            Command::new("/usr/sbin/mosquitto")
                .arg("-c")
                .arg(self.dir.join("mosquitto.conf"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn mosquitto"),
        );
        // A hang guard, not a speed check.
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "mosquitto never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the broker vanishes mid-transfer.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
