//! The agent's sensors (BELUGA): drivers on their own threads feed one
//! [`aegis_sensors::fusion::Fusion`]; IoT sensors (and an MQTT IMU) come through an MQTT
//! client on the IoT broker; readings go to `sensor_samples` (GPS: one fix a receiver
//! epoch, from its GGA and/or RMC, with the receiver's UTC beside the agent's clock); the
//! pipeline's stage threads ask for the pose and the IoT values at each frame's time (see
//! `pipeline::analytics`). Nothing here touches frames. Counters move as lines are read,
//! not when an input ends (a serial port or a UDP socket never does).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use aegis_config::{RuleConfig, SensorsConfig};
use aegis_sensors::fusion::{Clock, Fusion, Input, Pose, Settings};
use aegis_sensors::imu::ImuSample;
use aegis_sensors::nmea::{Epochs, Fix};
use aegis_sensors::source::Sink;

use crate::store::{Record, StoreHandle};

/// Sensor counters (exported as `aegis_component_counter{component="sensors"}`).
#[derive(Debug, Default)]
pub struct SensingCounters {
    /// GPS sentences used.
    pub gps: AtomicU64,
    /// IMU samples used.
    pub imu: AtomicU64,
    /// IoT readings used.
    pub iot: AtomicU64,
    /// Lines/messages refused (checksum, framing, bad values, out of range, overlong).
    pub bad: AtomicU64,
    /// Sound lines of no use (NMEA sentence types not used, proprietary `$P…` sentences,
    /// `#` comments).
    pub ignored: AtomicU64,
}

impl SensingCounters {
    /// Every counter by name, for metrics and status.
    pub fn values(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("gps", self.gps.load(Relaxed)),
            ("imu", self.imu.load(Relaxed)),
            ("iot", self.iot.load(Relaxed)),
            ("bad", self.bad.load(Relaxed)),
            ("ignored", self.ignored.load(Relaxed)),
        ]
    }
}

/// The sensors' newest readings, for the technician page: the drivers write each sample as
/// it is taken (one short lock and a few copies), the web server reads a copy. Only the
/// newest value of each input is kept; the history is the store's.
#[derive(Debug, Default)]
pub struct Readings {
    latest: Mutex<Latest>,
}

/// What [`Readings`] holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latest {
    /// The sensors run (false: none is configured).
    pub on: bool,
    /// A GPS is configured.
    pub gps_configured: bool,
    /// An IMU is configured.
    pub imu_configured: bool,
    /// The newest GPS fix and when it was taken (agent wall clock, µs).
    pub gps: Option<(i64, Fix)>,
    /// The newest IMU sample.
    pub imu: Option<ImuReading>,
    /// Each declared IoT sensor, in config order.
    pub iot: Vec<IotReading>,
    imu_window: Option<(f64, u64)>,
}

/// The newest IMU sample and the sample rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImuReading {
    /// When it was taken (agent wall clock, µs).
    pub at_us: i64,
    /// Acceleration, m/s² (sensor axes).
    pub accel: [f64; 3],
    /// Angular rate, rad/s (sensor axes).
    pub gyro: [f64; 3],
    /// Samples per second over the last second or more (`None` until a second has passed).
    pub rate_hz: Option<f64>,
}

/// An IoT sensor as declared, with its newest accepted value.
#[derive(Debug, Clone, PartialEq)]
pub struct IotReading {
    /// Its name (`sensors.iot[].name`).
    pub name: String,
    /// The MQTT topic it is read from.
    pub topic: String,
    /// Its unit.
    pub unit: String,
    /// The newest value in range (`None`: none yet).
    pub value: Option<f64>,
    /// When it arrived (agent wall clock, µs).
    pub at_us: Option<i64>,
}

impl Readings {
    /// A copy of the newest readings.
    pub fn latest(&self) -> Latest {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Latest> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sensors `cfg` declares are running (their readings start empty).
    pub fn declare(&self, cfg: &SensorsConfig) {
        *self.lock() = Latest {
            on: true,
            gps_configured: cfg.gps.is_some(),
            imu_configured: cfg.imu.is_some(),
            iot: cfg
                .iot
                .iter()
                .map(|s| IotReading {
                    name: s.name.clone(),
                    topic: s.topic.clone(),
                    unit: s.unit.clone(),
                    value: None,
                    at_us: None,
                })
                .collect(),
            ..Latest::default()
        };
    }

    /// A GPS fix taken at `at_us`.
    pub fn gps(&self, at_us: i64, fix: &Fix) {
        self.lock().gps = Some((at_us, *fix));
    }

    /// An IMU sample taken at `at_us` (`s.t` on the sensors' monotonic clock, for the rate).
    pub fn imu(&self, at_us: i64, s: &ImuSample) {
        let mut l = self.lock();
        let mut rate_hz = l.imu.and_then(|i| i.rate_hz);
        l.imu_window = match l.imu_window {
            None => Some((s.t, 0)),
            Some((start, n)) if s.t - start >= 1.0 => {
                rate_hz = Some((n + 1) as f64 / (s.t - start));
                Some((s.t, 0))
            }
            Some((start, n)) => Some((start, n + 1)),
        };
        l.imu = Some(ImuReading {
            at_us,
            accel: s.accel,
            gyro: s.gyro,
            rate_hz,
        });
    }

    /// IoT sensor `name`'s value `v`, accepted at `at_us` (an undeclared name is ignored).
    pub fn iot(&self, name: &str, at_us: i64, v: f64) {
        if let Some(r) = self.lock().iot.iter_mut().find(|r| r.name == name) {
            r.value = Some(v);
            r.at_us = Some(at_us);
        }
    }
}

/// A driver's sink: samples into [`Sensing::take`], refusals and ignored lines counted as
/// they are read.
struct Feed<'a> {
    sensing: &'a Sensing,
    input: &'static str,
}

impl Sink for Feed<'_> {
    fn sample(&mut self, t: f64, input: Input) {
        self.sensing.take(t, input);
    }

    fn refused(&mut self, why: &dyn std::fmt::Display) {
        self.sensing.counters.bad.fetch_add(1, Relaxed);
        tracing::debug!(input = self.input, %why, "sensor line refused");
    }

    fn ignored(&mut self) {
        self.sensing.counters.ignored.fetch_add(1, Relaxed);
    }
}

/// The running sensors.
pub struct Sensing {
    /// The clock every sample is stamped on.
    pub clock: Clock,
    /// Where replayed GPS and IMU files start on it (together).
    replay_start: f64,
    fusion: Mutex<Fusion>,
    /// GGA and RMC gathered into one fix a receiver epoch (for the store).
    epochs: Mutex<Epochs>,
    iot: RwLock<HashMap<String, f64>>,
    rules: Vec<RuleConfig>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    iot_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Counters.
    pub counters: SensingCounters,
    store: Option<StoreHandle>,
    names: Vec<String>,
    readings: Arc<Readings>,
}

fn fusion_settings(cfg: &SensorsConfig) -> Settings {
    let f = &cfg.fusion;
    let mut s = Settings::default();
    s.noise.uere_m = f.uere_m;
    s.noise.accel = f.accel_noise;
    s.noise.gyro = f.gyro_noise;
    s.noise.gate = f.gate;
    s.reorder_s = f64::from(f.reorder_ms) / 1000.0;
    if let Some(imu) = &cfg.imu {
        let [y, p, r] = imu.mounting_ypr_deg;
        s.mounting = aegis_sensors::imu::Mounting::from_ypr_deg(y, p, r);
    }
    s
}

/// `scheme://rest?query` (or `file:relative/path`) → (scheme, rest, query value of `key`).
fn split_url<'a>(url: &'a str, key: &str) -> (&'a str, &'a str, Option<&'a str>) {
    let (scheme, rest) = url.split_once(':').unwrap_or(("", url));
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let v = query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='));
    (scheme, path, v)
}

/// Why the sensors cannot start; each names the config path (`sensors.gps.url`,
/// `sensors.imu.url`) and the device or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum SensingError {
    /// The `baud` query of a GPS URL is not a number.
    #[error("sensors.gps.url: bad baud")]
    BadBaud,
    /// A replay file or serial port cannot be opened.
    #[error("{key}: {path}: {source}")]
    Open {
        /// The config path (`sensors.gps.url`, `sensors.imu.url`).
        key: &'static str,
        /// The file or device.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The GPS UDP address cannot be bound.
    #[error("sensors.gps.url: cannot bind {path}: {source}")]
    Bind {
        /// The address.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The IIO IMU device cannot be used.
    #[error("sensors.imu.url: {reason}")]
    Iio {
        /// Why (from `aegis_sensors::imu::IioImu::open`, naming the file).
        reason: String,
    },
    /// A URL scheme this build does not read.
    #[error("{key}: unsupported scheme {scheme}://")]
    UnsupportedScheme {
        /// The config path (`sensors.gps.url`, `sensors.imu.url`).
        key: &'static str,
        /// The scheme found.
        scheme: String,
    },
    /// The OS refused a driver thread.
    #[error("cannot start thread {name}: {source}")]
    Thread {
        /// Thread name.
        name: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The config paths of the sensor URLs, as errors name them.
const GPS_URL: &str = "sensors.gps.url";
const IMU_URL: &str = "sensors.imu.url";

impl Sensing {
    /// Starts what `cfg` declares; `None` when no sensor is configured.
    pub fn start(
        cfg: &SensorsConfig,
        store: Option<StoreHandle>,
    ) -> Result<Option<Arc<Sensing>>, SensingError> {
        Self::start_with(cfg, store, Arc::default())
    }

    /// [`Sensing::start`], keeping the newest readings in `readings` (the web page holds
    /// it before the sensors start).
    pub fn start_with(
        cfg: &SensorsConfig,
        store: Option<StoreHandle>,
        readings: Arc<Readings>,
    ) -> Result<Option<Arc<Sensing>>, SensingError> {
        if cfg.gps.is_none() && cfg.imu.is_none() && cfg.iot.is_empty() {
            return Ok(None);
        }
        let clock = Clock::new();
        let s = Arc::new(Sensing {
            replay_start: clock.now(),
            clock,
            fusion: Mutex::new(Fusion::new(fusion_settings(cfg))),
            epochs: Mutex::new(Epochs::default()),
            iot: RwLock::new(HashMap::new()),
            rules: cfg.rules.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Mutex::new(Vec::new()),
            iot_task: Mutex::new(None),
            counters: SensingCounters::default(),
            store,
            names: cfg.iot.iter().map(|s| s.name.clone()).collect(),
            readings,
        });
        s.readings.declare(cfg);
        if let Some(gps) = &cfg.gps {
            s.spawn_gps(&gps.url)?;
        }
        let mut mqtt_imu = None;
        if let Some(imu) = &cfg.imu {
            match split_url(&imu.url, "").0 {
                "mqtt" => mqtt_imu = Some(split_url(&imu.url, "").1.to_string()),
                _ => s.spawn_imu(&imu.url, imu.rate_hz)?,
            }
        }
        // The filter runs its queue every 50 ms (the reorder window decides what is ready).
        {
            let me = s.clone();
            s.spawn("sensors-fusion", move || {
                while !me.stop.load(Relaxed) {
                    me.fusion().advance(me.clock.now());
                    std::thread::sleep(Duration::from_millis(50));
                }
            })?;
        }
        if !cfg.iot.is_empty() || mqtt_imu.is_some() {
            let task = tokio::spawn(iot_loop(s.clone(), cfg.clone(), mqtt_imu));
            *s.iot_task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        }
        Ok(Some(s))
    }

    fn fusion(&self) -> std::sync::MutexGuard<'_, Fusion> {
        self.fusion.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spawn(&self, name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), SensingError> {
        let h = std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map_err(|source| SensingError::Thread {
                name: name.to_string(),
                source,
            })?;
        self.threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(h);
        Ok(())
    }

    /// A sample from a driver: into the filter, and each receiver epoch's fix into
    /// `sensor_samples`.
    fn take(&self, t: f64, input: Input) {
        match &input {
            Input::Gps(s) => {
                self.counters.gps.fetch_add(1, Relaxed);
                let mut epochs = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
                epochs.push(t, s, |t, fix| self.store_fix(t, &fix));
            }
            Input::Imu(sample) => {
                self.counters.imu.fetch_add(1, Relaxed);
                self.readings.imu(self.clock.wall_us(t), sample);
            }
        }
        self.fusion().push(t, input);
    }

    /// Stores the fix of the epoch still open (the GPS input ended or the agent stops).
    fn finish_epoch(&self) {
        let mut epochs = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
        epochs.finish(|t, fix| self.store_fix(t, &fix));
    }

    fn store_fix(&self, t: f64, f: &Fix) {
        self.readings.gps(self.clock.wall_us(t), f);
        self.sample(
            t,
            "gps",
            serde_json::json!({ "lat": f.lat, "lon": f.lon, "quality": f.quality,
                "hdop": f.hdop, "satellites": f.satellites, "alt_m": f.altitude_m,
                "speed_mps": f.speed_mps, "course_deg": f.course_deg, "utc_s": f.utc_s }),
            f.utc_us,
        );
    }

    fn sample(&self, t: f64, sensor: &str, value: serde_json::Value, utc_us: Option<i64>) {
        if let Some(store) = &self.store {
            store.submit(Record::SensorSample {
                ts_us: self.clock.wall_us(t),
                sensor: sensor.into(),
                value: value.to_string(),
                utc_us,
            });
        }
    }

    fn feed(&self, input: &'static str) -> Feed<'_> {
        Feed {
            sensing: self,
            input,
        }
    }

    fn spawn_gps(self: &Arc<Self>, url: &str) -> Result<(), SensingError> {
        let (scheme, path, baud) = split_url(url, "baud");
        let me = self.clone();
        let path = path.to_string();
        let baud: u32 = baud
            .unwrap_or("9600")
            .parse()
            .map_err(|_| SensingError::BadBaud)?;
        let run: Box<dyn FnOnce() -> std::io::Result<aegis_sensors::source::DriverStats> + Send> =
            match scheme {
                "file" => {
                    let f = std::fs::File::open(&path).map_err(|source| SensingError::Open {
                        key: GPS_URL,
                        path: path.clone(),
                        source,
                    })?;
                    let me2 = me.clone();
                    Box::new(move || {
                        aegis_sensors::source::replay_nmea(
                            std::io::BufReader::new(f),
                            &me2.clock,
                            me2.replay_start,
                            1.0,
                            &me2.stop,
                            me2.feed("gps"),
                        )
                    })
                }
                "udp" => {
                    let sock =
                        std::net::UdpSocket::bind(&path).map_err(|source| SensingError::Bind {
                            path: path.clone(),
                            source,
                        })?;
                    let me2 = me.clone();
                    Box::new(move || {
                        aegis_sensors::source::udp_nmea(
                            &sock,
                            &me2.clock,
                            &me2.stop,
                            me2.feed("gps"),
                        )
                    })
                }
                "serial" => {
                    let port =
                        aegis_sensors::source::open_serial(std::path::Path::new(&path), baud)
                            .map_err(|source| SensingError::Open {
                                key: GPS_URL,
                                path: path.clone(),
                                source,
                            })?;
                    let me2 = me.clone();
                    Box::new(move || {
                        aegis_sensors::source::stream_nmea(
                            port,
                            &me2.clock,
                            &me2.stop,
                            me2.feed("gps"),
                        )
                    })
                }
                other => {
                    return Err(SensingError::UnsupportedScheme {
                        key: GPS_URL,
                        scheme: other.to_string(),
                    });
                }
            };
        self.spawn("sensors-gps", move || {
            match run() {
                Ok(st) => tracing::info!(
                    sentences = st.samples,
                    bad = st.bad,
                    ignored = st.ignored,
                    "GPS input ended"
                ),
                Err(e) => tracing::error!(error = %e, "GPS input failed"),
            }
            me.finish_epoch();
        })
    }

    fn spawn_imu(self: &Arc<Self>, url: &str, rate_hz: f64) -> Result<(), SensingError> {
        let (scheme, path, _) = split_url(url, "");
        let me = self.clone();
        match scheme {
            "file" => {
                let f = std::fs::File::open(path).map_err(|source| SensingError::Open {
                    key: IMU_URL,
                    path: path.to_string(),
                    source,
                })?;
                self.spawn(
                    "sensors-imu",
                    move || match aegis_sensors::source::replay_imu(
                        std::io::BufReader::new(f),
                        &me.clock,
                        me.replay_start,
                        1.0,
                        &me.stop,
                        me.feed("imu"),
                    ) {
                        Ok(st) => {
                            tracing::info!(samples = st.samples, bad = st.bad, "IMU input ended");
                        }
                        Err(e) => tracing::error!(error = %e, "IMU input failed"),
                    },
                )
            }
            "iio" => {
                let imu = aegis_sensors::imu::IioImu::open(std::path::Path::new(path))
                    .map_err(|reason| SensingError::Iio { reason })?;
                self.spawn("sensors-imu", move || {
                    aegis_sensors::source::poll_iio(
                        &imu,
                        rate_hz,
                        &me.clock,
                        &me.stop,
                        me.feed("imu"),
                    );
                })
            }
            other => Err(SensingError::UnsupportedScheme {
                key: IMU_URL,
                scheme: other.to_string(),
            }),
        }
    }

    /// The fused pose at a frame's decode instant.
    pub fn pose_at(&self, at: std::time::Instant) -> Option<Pose> {
        let t = self.clock.at(at);
        self.fusion().pose_at(t)
    }

    /// The IoT values now.
    pub fn iot(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, f64>> {
        self.iot.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest readings (what the web page shows).
    pub fn readings(&self) -> &Arc<Readings> {
        &self.readings
    }

    /// The IoT sensors declared (rules may name only these).
    pub fn iot_names(&self) -> &[String] {
        &self.names
    }

    /// The rules of `sensors.rules`.
    pub fn rules(&self) -> &[RuleConfig] {
        &self.rules
    }

    /// Trusted GPS time now (see `Fusion::gps_time`).
    pub fn gps_time(&self) -> Option<i64> {
        self.fusion().gps_time(self.clock.now())
    }

    /// For status and telemetry.
    pub fn status(&self) -> serde_json::Value {
        let now = self.clock.now();
        let f = self.fusion();
        let pose = f.pose_at(now);
        serde_json::json!({
            "pose": pose.map(|p| serde_json::json!({ "lat": p.lat, "lon": p.lon, "speed_mps": p.speed,
                "heading_deg": p.heading_deg, "sigma_m": p.sigma_m, "since_fix_s": p.since_fix_s })),
            "fixes": f.stats.fixes, "rejected_fixes": f.stats.rejected, "late": f.stats.late,
            "restarts": f.stats.restarts,
            "counters": self.counters.values().into_iter().collect::<HashMap<_, _>>(),
            "iot": *self.iot(),
        })
    }

    /// Stops every driver and waits for them.
    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self
            .iot_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            t.abort();
        }
        let threads: Vec<_> =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// IoT sensors (and an MQTT IMU) over the IoT broker.
async fn iot_loop(s: Arc<Sensing>, cfg: SensorsConfig, imu_topic: Option<String>) {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let (_, rest, _) = split_url(&cfg.iot_broker_url, "");
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(1883)),
        None => (rest.to_string(), 1883),
    };
    let mut o = MqttOptions::new(format!("aegis-sensors-{}", std::process::id()), host, port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(o, 64);
    let mut warned = false;
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                warned = false;
                for sensor in &cfg.iot {
                    let _ = client
                        .subscribe(sensor.topic.clone(), QoS::AtMostOnce)
                        .await;
                }
                if let Some(t) = &imu_topic {
                    let _ = client.subscribe(t.clone(), QoS::AtMostOnce).await;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let topic = String::from_utf8_lossy(&p.topic);
                let t = s.clock.now();
                if imu_topic.as_deref() == Some(&*topic) {
                    match aegis_sensors::imu::parse_json(&p.payload, t) {
                        Ok(mut sample) => {
                            sample.t = t;
                            s.take(t, Input::Imu(sample));
                        }
                        Err(_) => {
                            s.counters.bad.fetch_add(1, Relaxed);
                        }
                    }
                    continue;
                }
                for sensor in cfg.iot.iter().filter(|x| x.topic == topic) {
                    match aegis_sensors::iot::parse_value(&p.payload, &sensor.field) {
                        Ok(v)
                            if sensor.min.is_none_or(|m| v >= m)
                                && sensor.max.is_none_or(|m| v <= m) =>
                        {
                            s.counters.iot.fetch_add(1, Relaxed);
                            s.readings.iot(&sensor.name, s.clock.wall_us(t), v);
                            s.iot
                                .write()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(sensor.name.clone(), v);
                            s.sample(
                                t,
                                &sensor.name,
                                serde_json::json!({ "value": v, "unit": sensor.unit }),
                                None,
                            );
                        }
                        Ok(v) => {
                            s.counters.bad.fetch_add(1, Relaxed);
                            tracing::debug!(sensor = %sensor.name, value = v, "IoT reading outside its range");
                        }
                        Err(e) => {
                            s.counters.bad.fetch_add(1, Relaxed);
                            tracing::debug!(sensor = %sensor.name, error = %e, "IoT message refused");
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, broker = %cfg.iot_broker_url, "IoT broker unreachable; retrying");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

impl std::fmt::Debug for Sensing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sensing")
            .field("iot", &self.names)
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreSettings, open_reader, sensor_samples_since};

    /// Polls (bounded) until `f` holds; returns whether it did.
    fn eventually(mut f: impl FnMut() -> bool) -> bool {
        for _ in 0..500 {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A sensor URL that cannot be used stops the start with an error naming its config
    /// path and the file (or the scheme); nothing is started.
    #[test]
    fn a_sensor_url_that_cannot_be_used_is_refused_by_config_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gps.nmea");
        let cfg = SensorsConfig {
            gps: Some(aegis_config::GpsConfig {
                url: format!("file:{}", missing.display()),
            }),
            ..Default::default()
        };
        let Err(e) = Sensing::start(&cfg, None) else {
            panic!("a missing file is refused");
        };
        assert!(
            matches!(&e, SensingError::Open { key: GPS_URL, path, .. } if *path == missing.display().to_string()),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("sensors.gps.url: {}: ", missing.display())),
            "{e}"
        );
        let cfg = SensorsConfig {
            imu: Some(aegis_config::ImuConfig {
                url: "ftp://imu".into(),
                mounting_ypr_deg: [0.0; 3],
                rate_hz: 100.0,
            }),
            ..Default::default()
        };
        let Err(e) = Sensing::start(&cfg, None) else {
            panic!("an unknown scheme is refused");
        };
        assert_eq!(e.to_string(), "sensors.imu.url: unsupported scheme ftp://");
    }

    /// A GPS input that stays open (a FIFO, as a serial port or a UDP socket never ends):
    /// the counters move while it runs; an RMC-only receiver's epochs and a GGA+RMC
    /// receiver's are stored as one fix each, with the receiver's UTC beside the agent's
    /// clock. Real lines from gpsd's regression logs (test/daemon/magellan-ec10.log and
    /// ublox-lea-5h.log, BSD-2-Clause).
    #[test]
    fn a_gps_input_that_never_ends_is_counted_and_stored_as_it_runs() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("gps.fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Read-write: opening never blocks, and the reader sees no end while it is open.
        let mut tx = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        let store = Store::open(StoreSettings::for_test(dir.path())).unwrap();
        let cfg = SensorsConfig {
            gps: Some(aegis_config::GpsConfig {
                url: format!("file:{}", fifo.display()),
            }),
            ..Default::default()
        };
        let s = Sensing::start(&cfg, Some(store.handle())).unwrap().unwrap();
        use std::io::Write;
        tx.write_all(
            b"# Name: Magellan EC-10X\n\
              $PMTK010,001*2E\n\
              $GPRMB,A,,,,,,,,,,,,V*71\n\
              $GPGGA,garbage*00\n\
              $GPRMC,205206.00,A,4405.556,N,12118.398,W,000.0,000.0,090605,0.0,E*49\n",
        )
        .unwrap();
        let counters = || {
            let c = s.status()["counters"].clone();
            (c["gps"].as_u64(), c["bad"].as_u64(), c["ignored"].as_u64())
        };
        let moved = eventually(|| counters() == (Some(1), Some(1), Some(3)));
        // Still open.
        assert!(moved, "{:?}", counters());
        tx.write_all(
            b"$GPRMC,205208.00,A,4405.556,N,12118.398,W,000.0,000.0,090605,0.0,E*47\n\
              $GPRMC,085516.00,A,5155.55350,N,00434.65733,E,0.050,,210810,,,A*75\n\
              $GPGGA,085516.00,5155.55350,N,00434.65733,E,1,08,1.00,2.0,M,46.0,M,,*5F\n\
              $GPRMC,085517.00,A,5155.55340,N,00434.65739,E,0.025,,210810,,,A*7D\n\
              $GPGGA,085517.00,5155.55340,N,00434.65739,E,1,08,1.00,1.8,M,46.0,M,,*5E\n",
        )
        .unwrap();
        assert!(eventually(|| counters().0 == Some(6)), "{:?}", counters());
        drop(tx);
        s.stop();
        store.close();
        let rows =
            sensor_samples_since(&open_reader(&dir.path().join("aegis.db")).unwrap(), 0, 100)
                .unwrap();
        let utc = |y: i64, mo: i64, d: i64, h: i64, mi: i64, sec: i64| {
            let day = aegis_config::civil::days_from_civil(y, mo, d).unwrap();
            Some((day * 86_400 + h * 3600 + mi * 60 + sec) * 1_000_000)
        };
        let got: Vec<(&str, Option<i64>)> =
            rows.iter().map(|r| (r.sensor.as_str(), r.utc_us)).collect();
        assert_eq!(
            got,
            [
                ("gps", utc(2005, 6, 9, 20, 52, 6)),
                ("gps", utc(2005, 6, 9, 20, 52, 8)),
                ("gps", utc(2010, 8, 21, 8, 55, 16)),
                ("gps", utc(2010, 8, 21, 8, 55, 17)),
            ]
        );
        // The agent's clock, not the receiver's, is the row's time.
        assert!(
            rows.iter()
                .all(|r| r.ts_us > utc(2020, 1, 1, 0, 0, 0).unwrap())
        );
        let v: serde_json::Value = serde_json::from_str(&rows[2].value).unwrap();
        assert_eq!(
            (v["quality"].as_u64(), v["hdop"].as_f64()),
            (Some(1), Some(1.0))
        );
        let first: serde_json::Value = serde_json::from_str(&rows[0].value).unwrap();
        assert!(first["quality"].is_null(), "{first}");
    }

    #[test]
    fn sensor_urls() {
        assert_eq!(
            split_url("serial:///dev/ttyTHS0?baud=115200", "baud"),
            ("serial", "/dev/ttyTHS0", Some("115200"))
        );
        assert_eq!(
            split_url("udp://0.0.0.0:10110", "baud"),
            ("udp", "0.0.0.0:10110", None)
        );
        assert_eq!(
            split_url("file:.samples/t.nmea", ""),
            ("file", ".samples/t.nmea", None)
        );
        assert_eq!(
            split_url("file:///data/t.nmea", ""),
            ("file", "/data/t.nmea", None)
        );
        assert_eq!(split_url("mqtt://imu/raw", ""), ("mqtt", "imu/raw", None));
    }
}
