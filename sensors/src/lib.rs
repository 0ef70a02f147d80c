//! BELUGA sensor fusion: GPS (NMEA), IMU and MQTT IoT sensors, time-aligned to frame
//! timestamps and fused with video tracks.
//!
//! **Status: not implemented yet** (the BELUGA issue). The config schema already has its
//! `sensors:` section (`aegis_config::SensorsConfig`), validated so that configs written
//! today stay valid. The crate exports nothing until its drivers exist; it must never touch
//! frames (see `shared/DESIGN.md` §8).
