//! A mosquitto (plain, or also with TLS listeners that want a password or a client
//! certificate) and a PostgreSQL of our own for the gateway's tests (the workspace's test
//! crate has the same plain mosquitto helper; this crate's tests cannot depend on it),
//! `chimera serve` set up and called ([`serve`]), a local OIDC provider ([`oidc`]),
//! simulated devices ([`fleet`]) and a gateway with a broker and a fleet
//! ([`fleet_gateway`]). Each test binary uses part of it; the `chimera` binary's unit tests
//! include this file too (`#[path]`; without its submodules).
#![allow(dead_code)]

pub mod fleet;
pub mod fleet_gateway;
pub mod oidc;
pub mod pki;
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

/// Whether mosquitto and its `mosquitto_passwd` (Debian ships both in `mosquitto`) are
/// installed, for [`Broker::start_tls`]; as [`have_mosquitto`] otherwise.
pub fn have_mosquitto_tls(suite: &str) -> bool {
    have(
        suite,
        "mosquitto (with mosquitto_passwd)",
        ["/usr/sbin/mosquitto", MOSQUITTO_PASSWD]
            .iter()
            .all(|f| Path::new(f).exists()),
    )
}

const MOSQUITTO_PASSWD: &str = "/usr/bin/mosquitto_passwd";

/// A mosquitto on a free loopback port, killed on drop.
pub struct Broker {
    /// Its port on 127.0.0.1 (plain MQTT, anonymous).
    pub port: u16,
    /// Its TLS listeners ([`Broker::start_tls`]).
    pub tls: Option<BrokerTls>,
    dir: PathBuf,
    child: Option<Child>,
}

/// The TLS listeners of a [`Broker::start_tls`] broker, on 127.0.0.1, with a certificate for
/// `localhost` only (connecting as `127.0.0.1` fails host name verification) signed by a CA
/// of the test's own.
pub struct BrokerTls {
    /// The CA's certificate (PEM): what clients trust.
    pub ca: PathBuf,
    /// TLS with username and password (`allow_anonymous false`, a `mosquitto_passwd` file).
    pub port: u16,
    /// TLS with a client certificate signed by the CA (`require_certificate true`; its
    /// common name is the username).
    pub mtls_port: u16,
    /// The one user.
    pub user: String,
    /// Its password: random, so a test can look for it in what the service wrote.
    pub password: String,
    /// A file holding the password (0600), for the client.
    pub password_file: PathBuf,
    /// A client certificate (common name `chimera-gw`) and key the mTLS listener accepts.
    pub client: pki::Issued,
}

impl Broker {
    /// Starts one (anonymous, persistent in `dir`) on a free port.
    pub fn start(dir: &Path) -> Broker {
        Broker::start_with(dir, false)
    }

    /// [`Broker::start`] with [`BrokerTls`] listeners too (the plain one stays anonymous,
    /// for the simulated devices).
    pub fn start_tls(dir: &Path) -> Broker {
        Broker::start_with(dir, true)
    }

    fn start_with(dir: &Path, with_tls: bool) -> Broker {
        let port = free_port();
        std::fs::create_dir_all(dir).unwrap();
        // SAFETY: getuid(2) has no preconditions.
        let user = if unsafe { libc::getuid() } == 0 {
            "user root\n"
        } else {
            ""
        };
        let tls = with_tls.then(|| BrokerTls::make(dir));
        // With TLS listeners, each listener has its own authentication settings.
        let (per_listener, anonymous, listeners) = match &tls {
            Some(t) => (
                "per_listener_settings true\n",
                "allow_anonymous true\n",
                t.listeners(dir),
            ),
            None => ("", "allow_anonymous true\n", String::new()),
        };
        std::fs::write(
            dir.join("mosquitto.conf"),
            format!(
                "{per_listener}persistence true\npersistence_location {}/\nautosave_interval 1\n\
                 {user}listener {port} 127.0.0.1\n{anonymous}{listeners}",
                dir.display()
            ),
        )
        .unwrap();
        let mut b = Broker {
            port,
            tls,
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
        let ports = [self.port]
            .into_iter()
            .chain(self.tls.iter().flat_map(|t| [t.port, t.mtls_port]));
        for port in ports {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    t0.elapsed() < Duration::from_secs(120),
                    "mosquitto never listened on {port}: {}",
                    std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
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

    /// The retained message on `topic` (a fresh subscription gets it first).
    pub fn retained(&self, topic: &str) -> Vec<u8> {
        use rumqttc::v5::mqttbytes::QoS;
        use rumqttc::v5::mqttbytes::v5::Packet;
        use rumqttc::v5::{AsyncClient, Event, MqttOptions};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut o = MqttOptions::new(
                format!("retained-test-{}", std::process::id()),
                "127.0.0.1",
                self.port,
            );
            o.set_max_packet_size(Some(256 * 1024));
            let (client, mut events) = AsyncClient::new(o, 16);
            client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
            // A hang guard, not a speed check.
            let payload = tokio::time::timeout(Duration::from_secs(60), async {
                loop {
                    if let Event::Incoming(Packet::Publish(p)) = events.poll().await.unwrap() {
                        assert!(p.retain, "not the retained message on {topic}");
                        assert_eq!(p.topic, topic.as_bytes(), "another topic than {topic}");
                        return p.payload.to_vec();
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("no retained message on {topic}"));
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
            payload
        })
    }
}

impl BrokerTls {
    /// The CA, the broker's and a client's certificates, the password file, in `dir`.
    fn make(dir: &Path) -> BrokerTls {
        let ca = pki::TestCa::new("aegis test broker CA");
        ca.issue(dir, "broker", &["localhost"]);
        let mut b = [0u8; 12];
        getrandom::fill(&mut b).unwrap();
        let password = format!(
            "pw-{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        );
        let user = "chimera-gw".to_string();
        let made = Command::new(MOSQUITTO_PASSWD)
            .args(["-b", "-c"])
            .arg(dir.join("passwd"))
            .args([&user, &password])
            .output()
            .expect("run mosquitto_passwd");
        assert!(
            made.status.success(),
            "mosquitto_passwd: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        let password_file = dir.join("client-password");
        std::fs::write(&password_file, format!("{password}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        BrokerTls {
            ca: ca.write(&dir.join("ca.pem")),
            port: free_port(),
            mtls_port: free_port(),
            client: ca.issue(dir, "client", &["chimera-gw"]),
            user,
            password,
            password_file,
        }
    }

    /// mosquitto's configuration of the two listeners.
    fn listeners(&self, dir: &Path) -> String {
        let d = dir.display();
        let tls = format!(
            "cafile {d}/ca.pem\ncertfile {d}/broker.crt\nkeyfile {d}/broker.key\n\
             allow_anonymous false\n"
        );
        format!(
            "listener {} 127.0.0.1\n{tls}password_file {d}/passwd\n\
             listener {} 127.0.0.1\n{tls}require_certificate true\n\
             use_identity_as_username true\n",
            self.port, self.mtls_port
        )
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
