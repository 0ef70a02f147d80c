//! `chimera serve` with a broker and a fleet of simulated devices ([`super::fleet`]): one
//! directory holding the devices' registry and trust, a mosquitto of its own, a token per
//! role, a database of either engine, and the calls the rollout and dashboard tests make
//! (upload, create, act, wait for a state). The caller checks for mosquitto
//! ([`super::have_mosquitto`], or [`super::have_mosquitto_tls`] for
//! [`FleetGateway::with_tls_broker`]) and, for PostgreSQL, runs under
//! [`super::serve::on_each_backend`].

use std::path::Path;

use serde_json::{Value, json};

use super::Broker;
use super::fleet::{Fleet, SignedWorkflow};
use super::serve::{Backend, Server, wait_for};

/// The group every simulated device is in.
pub const GROUP: &str = "site";

/// A gateway directory with a provisioned fleet, a broker, tokens.
pub struct FleetGateway {
    _dir: tempfile::TempDir,
    broker: Broker,
    pub fleet: Fleet,
    pub viewer: String,
    pub operator: String,
    pub admin: String,
    pub backend: Backend,
    /// With PostgreSQL, the `database:` lines of every config (one database).
    postgres: Option<String>,
}

impl FleetGateway {
    /// `n` devices in [`GROUP`], none running, on `backend`.
    pub fn new(n: usize, backend: Backend) -> FleetGateway {
        FleetGateway::on_broker(n, backend, Broker::start)
    }

    /// [`FleetGateway::new`] with a broker that also listens with TLS
    /// ([`Broker::start_tls`]): the service connects over `mqtts://` with the username and
    /// password ([`FleetGateway::broker_yaml`]); the devices keep the plain listener.
    pub fn with_tls_broker(n: usize, backend: Backend) -> FleetGateway {
        FleetGateway::on_broker(n, backend, Broker::start_tls)
    }

    fn on_broker(n: usize, backend: Backend, start: fn(&Path) -> Broker) -> FleetGateway {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let broker = start(&d.join("broker"));
        let fleet = Fleet::provision(d, n, GROUP, broker.port);
        let token = |role: &str| format!("chimera_{}", aegis_ota::sha256_hex(role.as_bytes()));
        let (viewer, operator, admin) = (token("viewer"), token("operator"), token("admin"));
        let hash = |t: &str| aegis_ota::sha256_hex(t.as_bytes());
        std::fs::write(
            d.join("tokens.yaml"),
            format!(
                "- {{ name: viewer, role: viewer, sha256: \"{}\" }}\n\
                 - {{ name: op, role: operator, sha256: \"{}\" }}\n\
                 - {{ name: admin, role: admin, sha256: \"{}\" }}\n",
                hash(&viewer),
                hash(&operator),
                hash(&admin)
            ),
        )
        .unwrap();
        let postgres = (backend == Backend::Postgres).then(|| backend.database(d, ""));
        let s = FleetGateway {
            _dir: dir,
            broker,
            fleet,
            viewer,
            operator,
            admin,
            backend,
            postgres,
        };
        s.config("serve.yaml", "state");
        s
    }

    pub fn path(&self) -> &Path {
        &self.fleet.dir
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// serve.yaml's `broker:`: the plain listener, or with TLS listeners the one that wants
    /// the password, as `mqtts://localhost:PORT` with the broker's CA.
    pub fn broker_yaml(&self) -> String {
        match &self.broker.tls {
            None => format!("broker: mqtt://127.0.0.1:{}\n", self.broker.port),
            Some(t) => format!(
                "broker:\n  url: mqtts://localhost:{}\n  ca_file: {}\n  username: {}\n  \
                 password_file: {}\n",
                t.port,
                t.ca.display(),
                t.user,
                t.password_file.display()
            ),
        }
    }

    /// A config whose state directory (and SQLite database) are in `state`; with
    /// PostgreSQL every config names the one database. Short engine ticks and leases, so a
    /// test waits tenths of seconds, not seconds.
    pub fn config(&self, name: &str, state: &str) {
        self.config_replica(name, state, None, true);
    }

    /// [`FleetGateway::config`] with a replica name and, when `broker` is false, without
    /// the broker (such a replica neither ingests nor runs rollouts: it serves the API).
    pub fn config_replica(&self, name: &str, state: &str, replica: Option<&str>, broker: bool) {
        let broker = if broker {
            self.broker_yaml()
        } else {
            String::new()
        };
        self.config_full(name, state, replica, &broker);
    }

    /// [`FleetGateway::config`] with `broker` as its `broker:` lines.
    pub fn config_with(&self, name: &str, state: &str, broker: &str) {
        self.config_full(name, state, None, broker);
    }

    fn config_full(&self, name: &str, state: &str, replica: Option<&str>, broker: &str) {
        let database = match &self.postgres {
            Some(pg) => pg.clone(),
            None => format!("database: {state}/chimera.db\n"),
        };
        let replica = replica.map_or(String::new(), |r| format!("replica: {r}\n"));
        std::fs::write(
            self.path().join(name),
            format!(
                "listen: 127.0.0.1:0\n{database}registry: devices.json\n\
                 state: {state}\ntokens: tokens.yaml\ntrust_metadata: trust.signed.json\n\
                 trust_roots: [root.pub]\n{replica}{broker}\
                 ingest: {{ snapshot_quiet_ms: 200 }}\n\
                 rollouts: {{ tick_ms: 100, lease_s: 2, reconcile_cooldown_s: 1 }}\n"
            ),
        )
        .unwrap();
    }

    /// The PostgreSQL database every config names (None on SQLite).
    pub fn database_name(&self) -> Option<String> {
        let lines = self.postgres.as_ref()?;
        let url = lines.lines().find_map(|l| l.trim().strip_prefix("url: "))?;
        Some(url.rsplit('/').next()?.to_string())
    }

    pub fn start(&self) -> Server {
        Server::start(self.path(), "serve.yaml")
    }

    /// [`FleetGateway::start`] with config `config`, its stderr in the file `log`.
    pub fn start_logged(&self, config: &str, log: &Path) -> Server {
        Server::start_logged(self.path(), config, log)
    }

    /// Uploads a signed workflow; its digest.
    pub fn upload(&self, s: &Server, w: &SignedWorkflow) -> String {
        let (st, b) = s.post(
            "/api/v1/workflows",
            &self.operator,
            &json!({ "document": w.text }),
        );
        assert!([200, 201].contains(&st), "{b}");
        assert_eq!(b["digest"], w.digest.as_str());
        w.digest.clone()
    }

    /// Starts every device and waits until the service has each one's online status.
    pub fn all_online(&self, s: &Server) {
        self.fleet.start(&self.fleet.devices);
        self.wait_online(s, &self.fleet.devices);
    }

    pub fn wait_online(&self, s: &Server, devices: &[String]) {
        wait_for("the devices' status reached the service", || {
            let list = s.get("/api/v1/devices", &self.operator);
            devices
                .iter()
                .all(|d| {
                    list.as_array()
                        .unwrap()
                        .iter()
                        .any(|x| x["id"] == d.as_str() && x["status"]["online"] == true)
                })
                .then_some(())
        });
    }

    pub fn rollout(&self, s: &Server, id: &str) -> Value {
        s.get(&format!("/api/v1/rollouts/{id}"), &self.operator)
    }

    /// Waits until the rollout is in `state`; returns it.
    pub fn wait_state(&self, s: &Server, id: &str, state: &str) -> Value {
        wait_for(&format!("rollout {id} {state}"), || {
            let r = self.rollout(s, id);
            (r["state"] == state).then_some(r)
        })
    }

    pub fn create(&self, s: &Server, body: Value) -> Value {
        let (st, b) = s.post("/api/v1/rollouts", &self.operator, &body);
        assert_eq!(st, 201, "{b}");
        b
    }

    pub fn action(&self, s: &Server, id: &str, verb: &str) -> (u16, Value) {
        s.post(
            &format!("/api/v1/rollouts/{id}/{verb}"),
            &self.operator,
            &json!({}),
        )
    }
}
