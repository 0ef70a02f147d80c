//! IMU samples: accelerometer, gyroscope (and magnetometer when present), from a replay CSV
//! file, Linux IIO sysfs, or MQTT JSON; rotated from the sensor's mounting into the vehicle
//! frame (x forward, y left, z up — ROS REP 103).

use std::path::{Path, PathBuf};

/// One sample in the sensor's frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImuSample {
    /// Seconds (the source's clock; the caller maps it onto the agent's).
    pub t: f64,
    /// Specific force, m/s².
    pub accel: [f64; 3],
    /// Angular rate, rad/s.
    pub gyro: [f64; 3],
    /// Magnetic field (any unit), if the device has a magnetometer.
    pub mag: Option<[f64; 3]>,
}

/// How the IMU is mounted: the rotation from the sensor frame to the vehicle frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mounting {
    r: [[f64; 3]; 3],
}

impl Default for Mounting {
    fn default() -> Self {
        Mounting::from_ypr_deg(0.0, 0.0, 0.0)
    }
}

impl Mounting {
    /// The sensor's yaw, pitch and roll relative to the vehicle (degrees; Z-Y-X order).
    pub fn from_ypr_deg(yaw: f64, pitch: f64, roll: f64) -> Mounting {
        let (sy, cy) = yaw.to_radians().sin_cos();
        let (sp, cp) = pitch.to_radians().sin_cos();
        let (sr, cr) = roll.to_radians().sin_cos();
        Mounting {
            r: [
                [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                [-sp, cp * sr, cp * cr],
            ],
        }
    }

    /// A sensor-frame vector in the vehicle frame.
    pub fn apply(&self, v: [f64; 3]) -> [f64; 3] {
        let r = &self.r;
        [
            r[0][0] * v[0] + r[0][1] * v[1] + r[0][2] * v[2],
            r[1][0] * v[0] + r[1][1] * v[1] + r[1][2] * v[2],
            r[2][0] * v[0] + r[2][1] * v[1] + r[2][2] * v[2],
        ]
    }

    /// What the filter needs: forward acceleration and yaw rate in the vehicle frame.
    pub fn drive_inputs(&self, s: &ImuSample) -> (f64, f64) {
        (self.apply(s.accel)[0], self.apply(s.gyro)[2])
    }
}

/// Parses one replay CSV line `t,ax,ay,az,gx,gy,gz[,mx,my,mz]`; `Ok(None)` for blank,
/// comment (`#`) and header lines.
pub fn parse_csv_line(line: &str) -> Result<Option<ImuSample>, String> {
    let line = line.trim();
    if line.is_empty()
        || line.starts_with('#')
        || line.starts_with(|c: char| c.is_ascii_alphabetic())
    {
        return Ok(None);
    }
    let mut v = [0.0f64; 10];
    let mut n = 0;
    for (i, f) in line.split(',').enumerate() {
        if i >= v.len() {
            return Err(format!("more than {} columns", v.len()));
        }
        v[i] = f
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("column {}: {f:?} is not a number", i + 1))?;
        n = i + 1;
    }
    if n != 7 && n != 10 {
        return Err(format!(
            "{n} columns; expected t,ax,ay,az,gx,gy,gz[,mx,my,mz]"
        ));
    }
    Ok(Some(ImuSample {
        t: v[0],
        accel: [v[1], v[2], v[3]],
        gyro: [v[4], v[5], v[6]],
        mag: (n == 10).then_some([v[7], v[8], v[9]]),
    }))
}

/// An IMU through Linux IIO sysfs (`/sys/bus/iio/devices/iio:deviceN`): `in_accel_{x,y,z}_raw`
/// with `in_accel_scale` (m/s² per count), `in_anglvel_{x,y,z}_raw` with `in_anglvel_scale`
/// (rad/s per count), optional `in_magn_*`. Polled; each read is one sample.
#[derive(Debug, Clone)]
pub struct IioImu {
    dir: PathBuf,
    accel_scale: f64,
    gyro_scale: f64,
    magn_scale: Option<f64>,
}

fn read_num(path: &Path) -> Result<f64, String> {
    let t = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    t.trim()
        .parse()
        .map_err(|_| format!("{}: {:?} is not a number", path.display(), t.trim()))
}

impl IioImu {
    /// Opens the device directory; fails naming the missing attribute.
    pub fn open(dir: &Path) -> Result<IioImu, String> {
        let scale = |kind: &str| read_num(&dir.join(format!("in_{kind}_scale")));
        Ok(IioImu {
            dir: dir.to_path_buf(),
            accel_scale: scale("accel")?,
            gyro_scale: scale("anglvel")?,
            magn_scale: scale("magn").ok(),
        })
    }

    fn axes(&self, kind: &str, scale: f64) -> Result<[f64; 3], String> {
        let mut v = [0.0; 3];
        for (i, a) in ["x", "y", "z"].iter().enumerate() {
            v[i] = read_num(&self.dir.join(format!("in_{kind}_{a}_raw")))? * scale;
        }
        Ok(v)
    }

    /// Reads one sample stamped `t`.
    pub fn read(&self, t: f64) -> Result<ImuSample, String> {
        Ok(ImuSample {
            t,
            accel: self.axes("accel", self.accel_scale)?,
            gyro: self.axes("anglvel", self.gyro_scale)?,
            mag: match self.magn_scale {
                Some(s) => self.axes("magn", s).ok(),
                None => None,
            },
        })
    }
}

/// An IMU sample from an MQTT JSON message `{"t":…, "accel":[…], "gyro":[…], "mag":[…]}`
/// (`t` optional: arrival time is used).
pub fn parse_json(payload: &[u8], arrival_t: f64) -> Result<ImuSample, String> {
    let v: serde_json::Value = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    let vec3 = |k: &str| -> Result<Option<[f64; 3]>, String> {
        match v.get(k) {
            None => Ok(None),
            Some(a) => {
                let a = a
                    .as_array()
                    .filter(|a| a.len() == 3)
                    .ok_or(format!("{k}: not [x, y, z]"))?;
                let mut out = [0.0; 3];
                for (i, x) in a.iter().enumerate() {
                    out[i] = x
                        .as_f64()
                        .filter(|x| x.is_finite())
                        .ok_or(format!("{k}[{i}]: not a number"))?;
                }
                Ok(Some(out))
            }
        }
    };
    Ok(ImuSample {
        t: v.get("t").and_then(|t| t.as_f64()).unwrap_or(arrival_t),
        accel: vec3("accel")?.ok_or("accel missing")?,
        gyro: vec3("gyro")?.ok_or("gyro missing")?,
        mag: vec3("mag")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_lines_parse_or_name_the_column() {
        assert_eq!(parse_csv_line("t,ax,ay,az,gx,gy,gz"), Ok(None));
        assert_eq!(parse_csv_line("# comment"), Ok(None));
        let s = parse_csv_line("1.5, 0.1,0,9.81, 0,0,0.2").unwrap().unwrap();
        assert_eq!((s.t, s.accel[2], s.gyro[2], s.mag), (1.5, 9.81, 0.2, None));
        assert!(
            parse_csv_line("1,2,3,4,5,6,7,8,9,10")
                .unwrap()
                .unwrap()
                .mag
                .is_some()
        );
        assert_eq!(
            parse_csv_line("1,2,x,4,5,6,7"),
            Err("column 3: \"x\" is not a number".into())
        );
        assert!(parse_csv_line("1,2,3").unwrap_err().contains("3 columns"));
        assert!(parse_csv_line("1,2,3,4,5,6,NaN").is_err());
    }

    #[test]
    fn mounting_rotates_into_the_vehicle_frame() {
        // Mounted yawed 90° left: the sensor's +x points to the vehicle's left, so its −y
        // axis points forward.
        let m = Mounting::from_ypr_deg(90.0, 0.0, 0.0);
        let v = m.apply([0.0, -1.0, 0.0]);
        assert!((v[0] - 1.0).abs() < 1e-12 && v[1].abs() < 1e-12, "{v:?}");
        // Upside down (roll 180°): yaw rate flips sign.
        let m = Mounting::from_ypr_deg(0.0, 0.0, 180.0);
        let s = ImuSample {
            t: 0.0,
            accel: [1.0, 0.0, -9.81],
            gyro: [0.0, 0.0, -0.3],
            mag: None,
        };
        let (a, w) = m.drive_inputs(&s);
        assert!(
            (a - 1.0).abs() < 1e-12 && (w - 0.3).abs() < 1e-12,
            "{a} {w}"
        );
    }

    #[test]
    fn iio_sysfs_reads_scaled_axes() {
        let d = tempfile::tempdir().unwrap();
        let w = |n: &str, v: &str| std::fs::write(d.path().join(n), v).unwrap();
        w("in_accel_scale", "0.000598\n");
        w("in_anglvel_scale", "0.001064724\n");
        for (a, v) in [("x", "100"), ("y", "-200"), ("z", "16405")] {
            w(&format!("in_accel_{a}_raw"), v);
            w(&format!("in_anglvel_{a}_raw"), v);
        }
        let imu = IioImu::open(d.path()).unwrap();
        let s = imu.read(2.0).unwrap();
        assert!((s.accel[2] - 16405.0 * 0.000598).abs() < 1e-9);
        assert!((s.gyro[1] + 200.0 * 0.001064724).abs() < 1e-9);
        std::fs::remove_file(d.path().join("in_anglvel_scale")).unwrap();
        assert!(
            IioImu::open(d.path())
                .unwrap_err()
                .contains("in_anglvel_scale")
        );
    }

    #[test]
    fn json_samples() {
        let s = parse_json(br#"{"accel":[0,0,9.8],"gyro":[0,0,0.1]}"#, 7.0).unwrap();
        assert_eq!((s.t, s.gyro[2]), (7.0, 0.1));
        assert!(parse_json(br#"{"accel":[0,0],"gyro":[0,0,0]}"#, 0.0).is_err());
    }
}
