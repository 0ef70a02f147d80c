//! BELUGA sensor fusion: GPS (NMEA 0183), IMU and MQTT IoT sensors on one clock, fused into
//! a pose (position, speed, heading) that video tracks and events are stamped with, and
//! rules over video metadata and sensor state. See `docs/sensors.md`.
//!
//! - [`nmea`]: GGA/RMC/VTG/GSA with checksum validation; ignored vs. damaged lines; one fix
//!   a receiver epoch from its GGA and/or RMC; a line splitter for byte streams.
//! - [`imu`]: samples from replay CSV, IIO sysfs or MQTT JSON; mounting rotation.
//! - [`iot`]: IoT readings (numbers, booleans, state words) from MQTT JSON.
//! - [`ekf`]: the filter (state, noise, gating, dead reckoning) and the local tangent plane.
//! - [`fusion`]: the clock, reordering of late samples, pose history and queries, GPS time,
//!   filter restarts at receiver time jumps.
//! - [`rules`]: conditions, truth, episodes.
//! - [`sim`]: synthetic trajectories with known truth (tests, benchmarks, the demo track).
//! - [`source`]: drivers (serial, UDP, replay files, IIO) feeding a [`fusion::Fusion`].
//!
//! This crate never touches frames (DESIGN §8): the agent passes it timestamps and labels.

pub mod ekf;
pub mod fusion;
pub mod imu;
pub mod iot;
pub mod nmea;
pub mod rules;
pub mod sim;
pub mod source;
