//! Video4Linux2 cameras: what a device can deliver, and which of that to ask for.
//!
//! [`query`] lists a device's capture formats, frame sizes and frame rates with the V4L2
//! enumeration ioctls; [`negotiate`] picks one for what the config asks (size, rate, an optional
//! pixel format). Capture itself (mmap streaming I/O, buffer queueing) is libavdevice's
//! `video4linux2` input, driven by [`crate::source::LiveSource`] so that an unplugged camera
//! is reconnected like a dropped network stream.

use std::fmt;
use std::path::Path;

/// A V4L2 pixel format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FourCc {
    /// Motion JPEG (most USB webcams at high resolutions).
    Mjpeg,
    /// Packed 4:2:2 YUYV (raw USB webcams; bus-limited at high resolutions).
    Yuyv,
    /// Packed 4:2:2 UYVY (some raw USB and HDMI-capture devices).
    Uyvy,
    /// Semi-planar 4:2:0 (CSI cameras through the Jetson ISP).
    Nv12,
    /// H.264 encoded in the camera.
    H264,
    /// Anything else, by its four characters.
    Other([u8; 4]),
}

impl FourCc {
    /// From the V4L2 `pixelformat` code.
    pub fn from_code(code: u32) -> Self {
        match &code.to_le_bytes() {
            b"MJPG" | b"JPEG" => FourCc::Mjpeg,
            b"YUYV" => FourCc::Yuyv,
            b"UYVY" => FourCc::Uyvy,
            b"NV12" => FourCc::Nv12,
            b"H264" => FourCc::H264,
            other => FourCc::Other(*other),
        }
    }

    /// libavdevice's `input_format` name for it, if it can capture it.
    pub fn av_input_format(self) -> Option<&'static str> {
        match self {
            FourCc::Mjpeg => Some("mjpeg"),
            FourCc::Yuyv => Some("yuyv422"),
            FourCc::Uyvy => Some("uyvy422"),
            FourCc::Nv12 => Some("nv12"),
            FourCc::H264 => Some("h264"),
            FourCc::Other(_) => None,
        }
    }

    /// Preference among formats that deliver the same size and rate: raw NV12 needs no
    /// decode at all, YUYV only a conversion; H.264 and MJPEG need a decoder.
    fn rank(self) -> u8 {
        match self {
            FourCc::Nv12 => 0,
            FourCc::Yuyv | FourCc::Uyvy => 1,
            FourCc::H264 => 2,
            FourCc::Mjpeg => 3,
            FourCc::Other(_) => 9,
        }
    }
}

impl fmt::Display for FourCc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FourCc::Mjpeg => f.write_str("MJPG"),
            FourCc::Yuyv => f.write_str("YUYV"),
            FourCc::Uyvy => f.write_str("UYVY"),
            FourCc::Nv12 => f.write_str("NV12"),
            FourCc::H264 => f.write_str("H264"),
            FourCc::Other(c) => f.write_str(&String::from_utf8_lossy(c)),
        }
    }
}

/// One size of one format, with the frame rates the device offers for it.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureMode {
    /// Pixel format.
    pub fourcc: FourCc,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frame rates as (numerator, denominator) frames per second.
    pub rates: Vec<(u32, u32)>,
}

/// What the config asks of a camera; unset fields mean "the best available".
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CaptureRequest {
    /// Wanted width.
    pub width: Option<u32>,
    /// Wanted height.
    pub height: Option<u32>,
    /// Wanted frames per second.
    pub fps: Option<f64>,
    /// Only this pixel format.
    pub format: Option<FourCc>,
}

/// The mode chosen for a camera.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CaptureChoice {
    /// Pixel format.
    pub fourcc: FourCc,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Frame rate (numerator, denominator).
    pub rate: (u32, u32),
}

/// Without a requested size, the largest up to this many pixels (1080p): more is rarely what
/// an analytics pipeline wants, and USB bandwidth drops the frame rate.
const DEFAULT_MAX_PIXELS: u64 = 1920 * 1080;
/// Without a requested rate, the highest up to this.
const DEFAULT_MAX_FPS: f64 = 30.0;

fn fps((n, d): (u32, u32)) -> f64 {
    n as f64 / d.max(1) as f64
}

/// Picks the mode closest to `want`: the size first (exact, else the nearest in pixel count),
/// then the rate (exact, else the nearest at or below, else the nearest above), then the
/// cheapest format among those that reach that size and rate. Errors name what the device
/// offers instead.
pub fn negotiate(modes: &[CaptureMode], want: &CaptureRequest) -> Result<CaptureChoice, String> {
    let usable: Vec<&CaptureMode> = modes
        .iter()
        .filter(|m| m.fourcc.av_input_format().is_some() && !m.rates.is_empty())
        .filter(|m| want.format.is_none_or(|f| f == m.fourcc))
        .collect();
    if usable.is_empty() {
        let mut offered: Vec<String> = Vec::new();
        for m in modes {
            let f = m.fourcc.to_string();
            if !offered.contains(&f) {
                offered.push(f);
            }
        }
        return Err(match want.format {
            Some(f) => format!(
                "the camera does not offer {f} (it offers: {})",
                offered.join(", ")
            ),
            None => format!(
                "no usable capture format (the camera offers: {})",
                offered.join(", ")
            ),
        });
    }
    let area = |m: &CaptureMode| m.width as u64 * m.height as u64;
    let target_area = match (want.width, want.height) {
        (Some(w), Some(h)) => Some(w as u64 * h as u64),
        _ => None,
    };
    let target_fps = want.fps.unwrap_or(DEFAULT_MAX_FPS);
    let reaches_rate = |m: &CaptureMode| m.rates.iter().any(|&r| fps(r) + 0.01 >= target_fps);
    let size_score = |m: &CaptureMode| -> (u8, u64) {
        match target_area {
            Some(_) if (Some(m.width), Some(m.height)) == (want.width, want.height) => (0, 0),
            Some(t) => (1, area(m).abs_diff(t)),
            // No size asked: the largest up to 1080p that reaches the rate, else the largest
            // up to 1080p, else the smallest above.
            None if area(m) <= DEFAULT_MAX_PIXELS && reaches_rate(m) => {
                (0, DEFAULT_MAX_PIXELS - area(m))
            }
            None if area(m) <= DEFAULT_MAX_PIXELS => (1, DEFAULT_MAX_PIXELS - area(m)),
            None => (2, area(m)),
        }
    };
    let best_size = usable.iter().map(|m| size_score(m)).min().unwrap_or((0, 0));
    let at_size: Vec<&&CaptureMode> = usable
        .iter()
        .filter(|m| size_score(m) == best_size)
        .collect();
    let rate_score = |r: (u32, u32)| -> (u8, u64) {
        let f = fps(r);
        let diff = ((f - target_fps).abs() * 1000.0) as u64;
        if diff == 0 {
            (0, 0)
        } else if f < target_fps {
            (1, diff)
        } else {
            (2, diff)
        }
    };
    let mut best: Option<((u8, u64), u8, CaptureChoice)> = None;
    for m in at_size {
        for &r in &m.rates {
            let key = (rate_score(r), m.fourcc.rank());
            let choice = CaptureChoice {
                fourcc: m.fourcc,
                width: m.width,
                height: m.height,
                rate: r,
            };
            if best.as_ref().is_none_or(|(s, k, _)| key < (*s, *k)) {
                best = Some((key.0, key.1, choice));
            }
        }
    }
    best.map(|b| b.2)
        .ok_or_else(|| "no usable capture mode".to_string())
}

// ---- the V4L2 ioctls (layouts from linux/videodev2.h; identical on x86-64 and aarch64) ----

const BUF_TYPE_VIDEO_CAPTURE: u32 = 1;
const FRMSIZE_TYPE_DISCRETE: u32 = 1;
const FRMIVAL_TYPE_DISCRETE: u32 = 1;

#[repr(C)]
#[derive(Default)]
struct FmtDesc {
    index: u32,
    type_: u32,
    flags: u32,
    description: [u8; 32],
    pixelformat: u32,
    mbus_code: u32,
    reserved: [u32; 3],
}

#[repr(C)]
#[derive(Default)]
struct FrmSizeEnum {
    index: u32,
    pixel_format: u32,
    type_: u32,
    /// discrete: width, height; stepwise: min_w, max_w, step_w, min_h, max_h, step_h.
    u: [u32; 6],
    reserved: [u32; 2],
}

#[repr(C)]
#[derive(Default)]
struct FrmIvalEnum {
    index: u32,
    pixel_format: u32,
    width: u32,
    height: u32,
    type_: u32,
    /// discrete: numerator, denominator (a frame *interval*); stepwise: min, max, step.
    u: [u32; 6],
    reserved: [u32; 2],
}

const fn iowr(nr: u32, size: usize) -> libc::c_ulong {
    ((3u32 << 30) | ((size as u32) << 16) | ((b'V' as u32) << 8) | nr) as libc::c_ulong
}
const VIDIOC_ENUM_FMT: libc::c_ulong = iowr(2, std::mem::size_of::<FmtDesc>());
const VIDIOC_ENUM_FRAMESIZES: libc::c_ulong = iowr(74, std::mem::size_of::<FrmSizeEnum>());
const VIDIOC_ENUM_FRAMEINTERVALS: libc::c_ulong = iowr(75, std::mem::size_of::<FrmIvalEnum>());

/// Sizes offered for a stepwise/continuous frame-size range: the common ones that fit.
const STEPWISE_SIZES: [(u32, u32); 4] = [(1920, 1080), (1280, 720), (640, 480), (320, 240)];

/// The enumeration structs, each tied to its ioctl request (which encodes its size).
trait EnumIoctl {
    const REQUEST: libc::c_ulong;
}
impl EnumIoctl for FmtDesc {
    const REQUEST: libc::c_ulong = VIDIOC_ENUM_FMT;
}
impl EnumIoctl for FrmSizeEnum {
    const REQUEST: libc::c_ulong = VIDIOC_ENUM_FRAMESIZES;
}
impl EnumIoctl for FrmIvalEnum {
    const REQUEST: libc::c_ulong = VIDIOC_ENUM_FRAMEINTERVALS;
}

fn ioctl<T: EnumIoctl>(fd: libc::c_int, arg: &mut T) -> bool {
    // SAFETY: `arg` is a live, exclusively borrowed #[repr(C)] struct whose layout and size
    // match what `T::REQUEST` (encoded with that size) makes the kernel read and write; the
    // trait ties each struct to its own request.
    unsafe { libc::ioctl(fd, T::REQUEST as _, arg as *mut T) == 0 }
}

/// Every capture mode `device` offers (formats × sizes × rates).
pub fn query(device: &Path) -> std::io::Result<Vec<CaptureMode>> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)?;
    let fd = file.as_raw_fd();
    let mut modes = Vec::new();
    for fi in 0.. {
        let mut desc = FmtDesc {
            index: fi,
            type_: BUF_TYPE_VIDEO_CAPTURE,
            ..Default::default()
        };
        if !ioctl(fd, &mut desc) {
            break;
        }
        let fourcc = FourCc::from_code(desc.pixelformat);
        let mut sizes = Vec::new();
        for si in 0.. {
            let mut fs = FrmSizeEnum {
                index: si,
                pixel_format: desc.pixelformat,
                ..Default::default()
            };
            if !ioctl(fd, &mut fs) {
                break;
            }
            if fs.type_ == FRMSIZE_TYPE_DISCRETE {
                sizes.push((fs.u[0], fs.u[1]));
            } else {
                let [min_w, max_w, step_w, min_h, max_h, step_h] = fs.u;
                sizes.extend(STEPWISE_SIZES.iter().copied().filter(|&(w, h)| {
                    (min_w..=max_w).contains(&w)
                        && (min_h..=max_h).contains(&h)
                        && (w - min_w) % step_w.max(1) == 0
                        && (h - min_h) % step_h.max(1) == 0
                }));
                break;
            }
        }
        for (width, height) in sizes {
            let mut rates = Vec::new();
            for ii in 0.. {
                let mut iv = FrmIvalEnum {
                    index: ii,
                    pixel_format: desc.pixelformat,
                    width,
                    height,
                    ..Default::default()
                };
                if !ioctl(fd, &mut iv) {
                    break;
                }
                if iv.type_ == FRMIVAL_TYPE_DISCRETE {
                    // An interval of n/d seconds is d/n frames per second.
                    rates.push((iv.u[1], iv.u[0].max(1)));
                } else {
                    // Stepwise: offer the fastest (minimum interval) and 30 fps if in range.
                    let (min_n, min_d, max_n, max_d) = (iv.u[0], iv.u[1], iv.u[2], iv.u[3]);
                    rates.push((min_d, min_n.max(1)));
                    let (fast, slow) = (fps((min_d, min_n.max(1))), fps((max_d, max_n.max(1))));
                    if (slow..=fast).contains(&30.0) {
                        rates.push((30, 1));
                    }
                    break;
                }
            }
            modes.push(CaptureMode {
                fourcc,
                width,
                height,
                rates,
            });
        }
    }
    Ok(modes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(f: FourCc, w: u32, h: u32, rates: &[u32]) -> CaptureMode {
        CaptureMode {
            fourcc: f,
            width: w,
            height: h,
            rates: rates.iter().map(|&r| (r, 1)).collect(),
        }
    }

    /// A Logitech C920-class USB webcam (recorded from `v4l2-ctl --list-formats-ext`): YUYV is
    /// bus-limited at high resolutions, MJPEG and H.264 are not.
    fn c920() -> Vec<CaptureMode> {
        vec![
            mode(FourCc::Yuyv, 640, 480, &[30, 24, 20, 15, 10, 5]),
            mode(FourCc::Yuyv, 1280, 720, &[10, 5]),
            mode(FourCc::Yuyv, 1920, 1080, &[5]),
            mode(FourCc::Mjpeg, 640, 480, &[30, 24, 15]),
            mode(FourCc::Mjpeg, 1280, 720, &[30, 24, 15]),
            mode(FourCc::Mjpeg, 1920, 1080, &[30, 24, 15]),
            mode(FourCc::H264, 1280, 720, &[30, 24, 15]),
            mode(FourCc::H264, 1920, 1080, &[30, 24, 15]),
        ]
    }

    /// A UVC camera that also offers raw NV12 (Logitech Brio-class).
    fn brio() -> Vec<CaptureMode> {
        vec![
            mode(FourCc::Yuyv, 640, 480, &[30]),
            mode(FourCc::Yuyv, 1920, 1080, &[5]),
            mode(FourCc::Nv12, 640, 480, &[30]),
            mode(FourCc::Nv12, 1280, 720, &[30]),
            mode(FourCc::Nv12, 1920, 1080, &[30]),
            mode(FourCc::Mjpeg, 1920, 1080, &[60, 30]),
            mode(FourCc::Mjpeg, 1280, 720, &[90, 60, 30]),
            mode(FourCc::Mjpeg, 3840, 2160, &[30]),
        ]
    }

    /// An IMX219 CSI sensor as V4L2 shows it on a Jetson: raw Bayer only (NV12 comes from the
    /// ISP through libargus, not through V4L2).
    fn imx219() -> Vec<CaptureMode> {
        vec![
            mode(FourCc::Other(*b"RG10"), 3264, 2464, &[21]),
            mode(FourCc::Other(*b"RG10"), 1920, 1080, &[30]),
        ]
    }

    /// A camera with 1080p30 and 720p60.
    fn fast720() -> Vec<CaptureMode> {
        vec![
            mode(FourCc::Mjpeg, 1920, 1080, &[30]),
            mode(FourCc::Mjpeg, 1280, 720, &[60, 30]),
        ]
    }

    #[test]
    fn default_request_takes_1080p30_with_the_cheapest_format_that_reaches_it() {
        let c = negotiate(&c920(), &CaptureRequest::default()).unwrap();
        // YUYV 1080p only does 5 fps; H.264 beats MJPEG at 30.
        assert_eq!(
            (c.fourcc, c.width, c.height, c.rate),
            (FourCc::H264, 1920, 1080, (30, 1))
        );
        let c = negotiate(&brio(), &CaptureRequest::default()).unwrap();
        assert_eq!(
            (c.fourcc, c.width, c.height, c.rate),
            (FourCc::Nv12, 1920, 1080, (30, 1))
        );
        // Only a rate asked: the largest size that reaches it.
        let want = CaptureRequest {
            fps: Some(60.0),
            ..Default::default()
        };
        let c = negotiate(&fast720(), &want).unwrap();
        assert_eq!((c.width, c.height, c.rate), (1280, 720, (60, 1)));
    }

    #[test]
    fn requested_size_rate_and_format_are_honoured_or_approached() {
        let want = CaptureRequest {
            width: Some(640),
            height: Some(480),
            fps: Some(15.0),
            format: None,
        };
        let c = negotiate(&c920(), &want).unwrap();
        assert_eq!((c.fourcc, c.width, c.rate), (FourCc::Yuyv, 640, (15, 1)));
        let want = CaptureRequest {
            width: Some(1280),
            height: Some(720),
            fps: Some(25.0),
            format: Some(FourCc::Mjpeg),
        };
        let c = negotiate(&c920(), &want).unwrap();
        assert_eq!(
            (c.fourcc, c.width, c.rate),
            (FourCc::Mjpeg, 1280, (24, 1)),
            "nearest rate below"
        );
        // A size the camera lacks: the nearest in pixel count (1600x900 is nearer 1280x720).
        let want = CaptureRequest {
            width: Some(1600),
            height: Some(900),
            ..Default::default()
        };
        let c = negotiate(&brio(), &want).unwrap();
        assert_eq!((c.width, c.height), (1280, 720));
        // Only faster rates exist: take the nearest above.
        let want = CaptureRequest {
            width: Some(1280),
            height: Some(720),
            fps: Some(30.0),
            format: None,
        };
        assert_eq!(negotiate(&fast720(), &want).unwrap().rate, (30, 1));
        let want = CaptureRequest {
            width: Some(1280),
            height: Some(720),
            fps: Some(120.0),
            format: None,
        };
        assert_eq!(
            negotiate(&brio(), &want).unwrap().rate,
            (90, 1),
            "nearest below"
        );
        let want = CaptureRequest {
            width: Some(1920),
            height: Some(1080),
            fps: Some(45.0),
            format: Some(FourCc::Nv12),
        };
        assert_eq!(negotiate(&brio(), &want).unwrap().rate, (30, 1));
    }

    #[test]
    fn impossible_requests_say_what_the_camera_offers() {
        let want = CaptureRequest {
            format: Some(FourCc::Nv12),
            ..Default::default()
        };
        let e = negotiate(&c920(), &want).unwrap_err();
        assert!(
            e.contains("does not offer NV12") && e.contains("MJPG"),
            "{e}"
        );
        let e = negotiate(&imx219(), &CaptureRequest::default()).unwrap_err();
        assert!(e.contains("RG10"), "{e}");
    }

    #[test]
    fn fourcc_codes_and_ioctl_numbers_match_videodev2() {
        assert_eq!(
            FourCc::from_code(u32::from_le_bytes(*b"MJPG")),
            FourCc::Mjpeg
        );
        assert_eq!(
            FourCc::from_code(u32::from_le_bytes(*b"GREY")).to_string(),
            "GREY"
        );
        // The values videodev2.h defines (checked against the header's _IOWR expansion).
        assert_eq!(VIDIOC_ENUM_FMT, 0xc040_5602);
        assert_eq!(VIDIOC_ENUM_FRAMESIZES, 0xc02c_564a);
        assert_eq!(VIDIOC_ENUM_FRAMEINTERVALS, 0xc034_564b);
    }

    #[test]
    fn querying_a_non_camera_fails_cleanly() {
        // /dev/null accepts open but not the V4L2 ioctls: no modes, no panic.
        assert_eq!(query(Path::new("/dev/null")).unwrap(), vec![]);
        assert!(query(Path::new("/dev/does-not-exist")).is_err());
    }
}
