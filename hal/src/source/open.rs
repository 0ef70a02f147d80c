//! From a source's config to the running source: the one place where a
//! [`SourceLocation`] picks its [`VideoSource`]. A new kind of source is a module beside
//! this one plus its arm here (and its `SourceLocation` in aegis-config's URL parser).

use aegis_config::{CaptureFormat, SourceConfig, SourceLocation};

use super::{FailedSource, FileSource, FileSourceSettings, LiveSource, LiveSourceSettings};
use super::{PushFeeds, PushedSource, SourceError};
use super::{RtspTransport, VideoSource};
use crate::StreamId;
use crate::backend::{Backend, StreamGpu};
use crate::v4l2::{CaptureRequest, FourCc};

/// What every source of a pipeline shares.
#[derive(Debug, Clone, Copy)]
pub struct OpenSettings<'a> {
    /// Frames in each stream's pool.
    pub pool_frames: usize,
    /// Decoder threads per stream.
    pub decoder_threads: usize,
    /// Pace every source at its frame rate (`Some(true)`), or never; `None`: each source's
    /// `realtime`.
    pub force_realtime: Option<bool>,
    /// The backend: a CUDA backend decodes on the GPU where it can.
    pub backend: Option<&'a Backend>,
    /// Where `whip` sources register their feeds (None: this process takes no pushed
    /// video, and such a source fails).
    pub pushed: Option<&'a PushFeeds>,
}

impl OpenSettings<'_> {
    fn gpu(&self, stream: &str) -> Option<StreamGpu> {
        self.backend?.stream_gpu(stream)
    }
}

/// Opens the source `s` describes. Never fails: a file that cannot be opened becomes a
/// [`FailedSource`] (its stream starts, reports the error and ends; the others run), and
/// live sources connect on their own thread (the agent must start while a camera is down,
/// and says so in the stream's health).
pub fn open(s: &SourceConfig, common: &OpenSettings<'_>) -> Box<dyn VideoSource> {
    let stream = StreamId::new(&s.id);
    match s.location() {
        SourceLocation::File(path) => {
            let settings = FileSourceSettings {
                path: path.clone(),
                stream: stream.clone(),
                looping: s.loop_,
                realtime: common.force_realtime.unwrap_or(s.realtime),
                max_frames: s.max_frames,
                pool_frames: common.pool_frames,
                decoder_threads: common.decoder_threads,
                gpu: common.gpu(&s.id),
            };
            match FileSource::open(settings) {
                Ok(f) => Box::new(f),
                Err(e) => Box::new(FailedSource::new(stream, path, e)),
            }
        }
        // libavformat receives the canonical re-serialisation of the parsed URL, with the
        // configured credentials in place of the URL's: exactly what validation and the
        // workflow policy checked.
        SourceLocation::Rtsp(url) | SourceLocation::Srt(url) | SourceLocation::Rtmp(url) => {
            let mut settings = LiveSourceSettings::new(
                url.to_libav(s.username.as_deref(), s.password.as_ref()),
                stream,
            );
            settings.transport = match s.transport {
                aegis_config::RtspTransport::Tcp => RtspTransport::Tcp,
                aegis_config::RtspTransport::Udp => RtspTransport::Udp,
            };
            settings.pool_frames = common.pool_frames;
            settings.decoder_threads = common.decoder_threads;
            settings.gpu = common.gpu(&s.id);
            Box::new(LiveSource::new(settings))
        }
        SourceLocation::V4l2(device) => {
            let c = s.capture.unwrap_or_default();
            let request = CaptureRequest {
                width: c.width,
                height: c.height,
                fps: c.fps,
                format: c.format.map(|f| match f {
                    CaptureFormat::Mjpeg => FourCc::Mjpeg,
                    CaptureFormat::Yuyv => FourCc::Yuyv,
                    CaptureFormat::Uyvy => FourCc::Uyvy,
                    CaptureFormat::Nv12 => FourCc::Nv12,
                    CaptureFormat::H264 => FourCc::H264,
                }),
            };
            let mut settings = LiveSourceSettings::v4l2(&device, request, stream);
            settings.pool_frames = common.pool_frames;
            settings.decoder_threads = common.decoder_threads;
            settings.gpu = common.gpu(&s.id);
            Box::new(LiveSource::new(settings))
        }
        SourceLocation::Whip => match common.pushed {
            Some(feeds) => Box::new(PushedSource::new(
                stream,
                feeds,
                common.pool_frames,
                common.decoder_threads,
                common.gpu(&s.id),
            )),
            None => Box::new(FailedSource::new(
                stream,
                format!("whip:{}", s.id).into(),
                SourceError::NotHere("this process takes no pushed video (WHIP)".into()),
            )),
        },
    }
}
