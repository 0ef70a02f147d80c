//! Compressed-packet plumbing: file demux through libavformat.
//!
//! Only compressed packets pass through here; pixels stay in the HAL's pools. libavformat
//! handles MP4/MOV, Matroska, MPEG-TS and raw Annex-B H.264/H.265 files alike.

use std::path::{Path, PathBuf};

use ffmpeg_next as ff;

use crate::codec::decode_rescale_us;

/// What a demuxed video stream is.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    /// Codec name (e.g. `h264`, `hevc`).
    pub codec: String,
    /// Coded width in pixels.
    pub width: usize,
    /// Coded height in pixels.
    pub height: usize,
    /// Average frame rate as (numerator, denominator); (0, 1) when the container does not say.
    pub frame_rate: (i32, i32),
    /// Stream duration in microseconds, when known.
    pub duration_us: Option<i64>,
    /// Number of video frames, when the container records it.
    pub frames: Option<u64>,
}

impl StreamInfo {
    /// Frame duration in microseconds derived from the frame rate (33 333 µs when unknown).
    pub fn frame_duration_us(&self) -> i64 {
        let (n, d) = self.frame_rate;
        if n > 0 && d > 0 {
            1_000_000 * d as i64 / n as i64
        } else {
            33_333
        }
    }
}

/// Errors opening or reading a container; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// libavformat could not open or probe the file.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// libav's error.
        source: ff::Error,
    },
    /// The file holds no video stream.
    #[error("{path} has no video stream")]
    NoVideo {
        /// The file.
        path: PathBuf,
    },
    /// The file's video is not camera video (e.g. a text file probed as ANSI art).
    #[error(
        "{path}: not a supported video stream (codec {codec}; expected H.264, H.265, MJPEG, MPEG-4/2, VP8/9, AV1 or raw camera video)"
    )]
    UnsupportedCodec {
        /// The file.
        path: PathBuf,
        /// What libavformat found.
        codec: String,
    },
    /// Reading a packet failed (truncated or corrupt file, I/O error).
    #[error("reading {path} failed: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// libav's error.
        source: ff::Error,
    },
    /// Seeking back to the start (for looping) failed.
    #[error("cannot rewind {path}: {source}")]
    Seek {
        /// The file.
        path: PathBuf,
        /// libav's error.
        source: ff::Error,
    },
}

/// Reads the packets of the best video stream of a file.
pub struct FileDemuxer {
    ictx: ff::format::context::Input,
    path: PathBuf,
    index: usize,
    time_base: ff::Rational,
    info: StreamInfo,
}

impl FileDemuxer {
    /// Opens `path` and selects its best video stream. Only libavformat's `file` protocol
    /// may be used (nested protocols inherit the list): a playlist or session description in
    /// the file (`.m3u8`, `.sdp`, `concat:`) cannot make the agent open network connections
    /// the source policy never saw. (FFmpeg 5.1 already limits nested protocols of a file to
    /// `file,crypto,data`; this does not depend on that default.)
    pub fn open(path: &Path) -> Result<Self, ContainerError> {
        crate::init();
        let mut opts = ff::Dictionary::new();
        opts.set("protocol_whitelist", "file");
        let ictx =
            ff::format::input_with_dictionary(path, opts).map_err(|e| ContainerError::Open {
                path: path.to_path_buf(),
                source: e,
            })?;
        Self::select_video(ictx, path)
    }

    /// Opens a network input (`rtsp://…`) with libavformat `options`; `interrupt` is polled
    /// during every blocking operation and aborts it by returning true (stall watchdog,
    /// shutdown). It receives the URL libavformat is working on *now*, which differs from
    /// `url` once an RTSP server's 3xx redirect made libavformat switch (it does so inside
    /// `avformat_open_input`; it checks the interrupt before every write, so returning true
    /// then stops the redirected connection before a byte is sent on it). `shown_as` is what
    /// errors print instead of the URL (no credentials).
    pub(crate) fn open_live(
        url: &str,
        shown_as: &Path,
        options: ff::Dictionary,
        mut interrupt: impl FnMut(Option<&str>) -> bool + Send + 'static,
    ) -> Result<Self, ContainerError> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicPtr, Ordering};
        crate::init();
        let open_err = |source| ContainerError::Open {
            path: shown_as.to_path_buf(),
            source,
        };
        let c_url = std::ffi::CString::new(url).map_err(|_| open_err(ff::Error::InvalidData))?;
        let context = Arc::new(AtomicPtr::<ff::ffi::AVFormatContext>::default());
        let seen_by_callback = context.clone();
        let callback = move || {
            let ps = seen_by_callback.load(Ordering::Acquire);
            // SAFETY: libavformat calls the interrupt callback only from the thread running an
            // operation on this context, while the context is alive (the callback is dropped
            // with it), and changes `url` only on that same thread between calls; `url` is a
            // NUL-terminated string or null.
            let current = unsafe {
                match ps.as_ref() {
                    Some(ctx) if !ctx.url.is_null() => {
                        std::ffi::CStr::from_ptr(ctx.url).to_str().ok()
                    }
                    _ => None,
                }
            };
            interrupt(current)
        };
        Self::open_input(
            &c_url,
            std::ptr::null(),
            options,
            false,
            Some(&context),
            callback,
            shown_as,
        )
    }

    /// The open sequence of `ff::format::input_with_interrupt_and_dictionary`, shared by
    /// network inputs and capture devices: allocate the context, install the interrupt
    /// callback (and, for `context`, publish the context's address so the callback can read
    /// it), open with input format `fmt` (null: probe), probe the streams, select the video
    /// stream. `nonblock` sets `AVFMT_FLAG_NONBLOCK`.
    fn open_input(
        url: &std::ffi::CStr,
        fmt: *const ff::ffi::AVInputFormat,
        options: ff::Dictionary,
        nonblock: bool,
        context: Option<&std::sync::atomic::AtomicPtr<ff::ffi::AVFormatContext>>,
        callback: impl FnMut() -> bool + Send + 'static,
        shown_as: &Path,
    ) -> Result<Self, ContainerError> {
        let open_err = |source| ContainerError::Open {
            path: shown_as.to_path_buf(),
            source,
        };
        // SAFETY: `ps` comes from avformat_alloc_context (checked for null); on failure
        // avformat_open_input frees it (and the callback, dropped with `interrupt.guard` at
        // the end of this scope, is never called again); after a failed stream probe it is
        // closed here; on success it is owned by the returned `Input` together with the
        // callback's guard, which keeps the interrupt's opaque pointer alive. `fmt` is null or
        // a format libavformat returned. `opts` is disowned into a raw dictionary and re-owned
        // after the call, as `Dictionary` expects.
        unsafe {
            let mut ps = ff::ffi::avformat_alloc_context();
            if ps.is_null() {
                return Err(open_err(ff::Error::Other {
                    errno: libc::ENOMEM,
                }));
            }
            if let Some(c) = context {
                c.store(ps, std::sync::atomic::Ordering::Release);
            }
            let interrupt = ff::util::interrupt::new(Box::new(callback));
            (*ps).interrupt_callback = interrupt.interrupt;
            if nonblock {
                (*ps).flags |= ff::ffi::AVFMT_FLAG_NONBLOCK;
            }
            let mut opts = options.disown();
            let res = ff::ffi::avformat_open_input(&mut ps, url.as_ptr(), fmt, &mut opts);
            ff::Dictionary::own(opts);
            if res < 0 {
                return Err(open_err(ff::Error::from(res)));
            }
            let res = ff::ffi::avformat_find_stream_info(ps, std::ptr::null_mut());
            if res < 0 {
                ff::ffi::avformat_close_input(&mut ps);
                return Err(open_err(ff::Error::from(res)));
            }
            let ictx = ff::format::context::Input::wrap_with_interrupt(ps, interrupt.guard);
            Self::select_video(ictx, shown_as)
        }
    }

    /// Opens a capture device through a libavdevice input format (`video4linux2`) with
    /// `options` (`input_format`, `video_size`, `framerate`), in non-blocking mode: reads return
    /// `EAGAIN` instead of waiting, so a silent camera is noticed by the caller's watchdog.
    pub(crate) fn open_device(
        device: &Path,
        input_format: &str,
        options: ff::Dictionary,
        interrupt: impl FnMut() -> bool + Send + 'static,
    ) -> Result<Self, ContainerError> {
        use std::ffi::CString;
        crate::init();
        let open_err = |source| ContainerError::Open {
            path: device.to_path_buf(),
            source,
        };
        let name = CString::new(input_format).map_err(|_| open_err(ff::Error::InvalidData))?;
        let url = CString::new(device.as_os_str().as_encoded_bytes())
            .map_err(|_| open_err(ff::Error::InvalidData))?;
        // SAFETY: av_find_input_format takes a NUL-terminated name and returns a static
        // format or null.
        let fmt = unsafe { ff::ffi::av_find_input_format(name.as_ptr()) };
        if fmt.is_null() {
            return Err(open_err(ff::Error::DemuxerNotFound));
        }
        Self::open_input(&url, fmt, options, true, None, interrupt, device)
    }

    fn select_video(ictx: ff::format::context::Input, path: &Path) -> Result<Self, ContainerError> {
        let st =
            ictx.streams()
                .best(ff::media::Type::Video)
                .ok_or_else(|| ContainerError::NoVideo {
                    path: path.to_path_buf(),
                })?;
        let params = st.parameters();
        use ff::codec::Id;
        if !matches!(
            params.id(),
            Id::H264
                | Id::HEVC
                | Id::MJPEG
                | Id::MPEG4
                | Id::MPEG2VIDEO
                | Id::VP8
                | Id::VP9
                | Id::AV1
                | Id::RAWVIDEO
        ) {
            return Err(ContainerError::UnsupportedCodec {
                path: path.to_path_buf(),
                codec: params.id().name().to_string(),
            });
        }
        // SAFETY: `params` wraps the stream's live AVCodecParameters, valid while `ictx` is.
        let (w, h) = unsafe {
            let p = &*params.as_ptr();
            (p.width.max(0) as usize, p.height.max(0) as usize)
        };
        let rate = st.avg_frame_rate();
        let time_base = st.time_base();
        let duration = st.duration();
        let frames = st.frames();
        let info = StreamInfo {
            codec: params.id().name().to_string(),
            width: w,
            height: h,
            frame_rate: (rate.numerator(), rate.denominator().max(1)),
            duration_us: (duration > 0).then(|| decode_rescale_us(duration, time_base)),
            frames: (frames > 0).then_some(frames as u64),
        };
        let index = st.index();
        Ok(FileDemuxer {
            ictx,
            path: path.to_path_buf(),
            index,
            time_base,
            info,
        })
    }

    /// The selected stream.
    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn time_base(&self) -> ff::Rational {
        self.time_base
    }

    pub(crate) fn parameters(&self) -> ff::codec::Parameters {
        self.ictx
            .stream(self.index)
            .map(|s| s.parameters())
            .unwrap_or_default()
    }

    /// Wall-clock time (µs since the Unix epoch) of the stream's timestamp zero, once the
    /// input knows it (RTSP sets it from the first RTCP sender report).
    pub(crate) fn start_time_realtime_us(&self) -> Option<i64> {
        // SAFETY: reading a plain integer field of the live AVFormatContext `ictx` owns.
        let t = unsafe { (*self.ictx.as_ptr()).start_time_realtime };
        (t != ff::ffi::AV_NOPTS_VALUE && t > 0).then_some(t)
    }

    /// Next packet of the video stream into `pkt`; `Ok(false)` at end of file.
    pub(crate) fn read(&mut self, pkt: &mut ff::Packet) -> Result<bool, ContainerError> {
        loop {
            *pkt = ff::Packet::empty();
            match pkt.read(&mut self.ictx) {
                Ok(()) if pkt.stream() == self.index => return Ok(true),
                Ok(()) => continue,
                Err(ff::Error::Eof) => return Ok(false),
                Err(e) => {
                    return Err(ContainerError::Read {
                        path: self.path.clone(),
                        source: e,
                    });
                }
            }
        }
    }

    /// Seeks back to the first keyframe.
    pub(crate) fn rewind(&mut self) -> Result<(), ContainerError> {
        self.ictx
            .seek(i64::MIN + 1, ..)
            .or_else(|_| self.ictx.seek(0, ..))
            .map_err(|e| ContainerError::Seek {
                path: self.path.clone(),
                source: e,
            })
    }
}
