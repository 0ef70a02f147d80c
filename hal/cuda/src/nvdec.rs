//! NVDEC through libnvcuvid (own minimal bindings, loaded with libloading at run time):
//! the video parser finds pictures in an Annex-B H.264/HEVC byte stream, the decoder
//! decodes them into its own surfaces, and each displayed picture is copied device to
//! device into a pooled [`DeviceNv12`] (no host copy). A full output pool is
//! backpressure: [`Decoder::feed`] refuses more input until frames are released.
//!
//! Struct layouts follow NVIDIA's Video Codec SDK 12/13 headers (`nvcuvid.h`,
//! `cuviddec.h`; identical sizes in both), checked by size assertions below.

use std::collections::VecDeque;
use std::ffi::{c_int, c_uint, c_ulong, c_void};
use std::sync::Arc;

use cudarc::driver::{DevicePtrMut, sys};

use crate::{CudaError, DeviceNv12, DevicePool, Gpu};

type CuResult = c_int;

/// `cudaVideoCodec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// H.264 / AVC.
    H264 = 4,
    /// H.265 / HEVC.
    Hevc = 8,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Rect16 {
    left: i16,
    top: i16,
    right: i16,
    bottom: i16,
}

#[repr(C)]
struct DecodeCreateInfo {
    ul_width: c_ulong,
    ul_height: c_ulong,
    ul_num_decode_surfaces: c_ulong,
    codec_type: c_int,
    chroma_format: c_int,
    ul_creation_flags: c_ulong,
    bit_depth_minus8: c_ulong,
    ul_intra_decode_only: c_ulong,
    ul_max_width: c_ulong,
    ul_max_height: c_ulong,
    reserved1: c_ulong,
    display_area: Rect16,
    output_format: c_int,
    deinterlace_mode: c_int,
    ul_target_width: c_ulong,
    ul_target_height: c_ulong,
    ul_num_output_surfaces: c_ulong,
    vid_lock: *mut c_void,
    target_rect: Rect16,
    enable_histogram: c_ulong,
    reserved2: [c_ulong; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct VideoFormat {
    codec: c_int,
    frame_rate: [c_uint; 2],
    progressive_sequence: u8,
    bit_depth_luma_minus8: u8,
    bit_depth_chroma_minus8: u8,
    min_num_decode_surfaces: u8,
    coded_width: c_uint,
    coded_height: c_uint,
    display_area: [c_int; 4],
    chroma_format: c_int,
    bitrate: c_uint,
    display_aspect_ratio: [c_int; 2],
    video_signal_description: [u8; 4],
    seqhdr_data_length: c_uint,
}

#[repr(C)]
struct ProcParams {
    progressive_frame: c_int,
    second_field: c_int,
    top_field_first: c_int,
    unpaired_field: c_int,
    reserved_flags: c_uint,
    reserved_zero: c_uint,
    raw_input_dptr: u64,
    raw_input_pitch: c_uint,
    raw_input_format: c_uint,
    raw_output_dptr: u64,
    raw_output_pitch: c_uint,
    reserved1: c_uint,
    output_stream: *mut c_void,
    reserved: [c_uint; 46],
    histogram_dptr: *mut u64,
    reserved2: [*mut c_void; 1],
}

#[repr(C)]
struct DispInfo {
    picture_index: c_int,
    progressive_frame: c_int,
    top_field_first: c_int,
    repeat_first_field: c_int,
    timestamp: i64,
}

#[repr(C)]
struct SourceDataPacket {
    flags: c_ulong,
    payload_size: c_ulong,
    payload: *const u8,
    timestamp: i64,
}

type SeqCb = unsafe extern "C" fn(*mut c_void, *mut VideoFormat) -> c_int;
type DecCb = unsafe extern "C" fn(*mut c_void, *mut c_void) -> c_int;
type DispCb = unsafe extern "C" fn(*mut c_void, *mut DispInfo) -> c_int;

#[repr(C)]
struct ParserParams {
    codec_type: c_int,
    ul_max_num_decode_surfaces: c_uint,
    ul_clock_rate: c_uint,
    ul_error_threshold: c_uint,
    ul_max_display_delay: c_uint,
    flags: c_uint,
    reserved1: [c_uint; 4],
    user_data: *mut c_void,
    sequence: Option<SeqCb>,
    decode: Option<DecCb>,
    display: Option<DispCb>,
    operating_point: Option<unsafe extern "C" fn(*mut c_void, *mut c_void) -> c_int>,
    sei: Option<unsafe extern "C" fn(*mut c_void, *mut c_void) -> c_int>,
    reserved2: [*mut c_void; 5],
    ext_video_info: *mut c_void,
}

const _: () = assert!(std::mem::size_of::<ParserParams>() == 136);
const _: () = assert!(std::mem::size_of::<DecodeCreateInfo>() == 176);
const _: () = assert!(std::mem::size_of::<ProcParams>() == 264);
const _: () = assert!(std::mem::size_of::<VideoFormat>() == 64);
const _: () = assert!(std::mem::size_of::<SourceDataPacket>() == 32);
const _: () = assert!(std::mem::size_of::<DispInfo>() == 24);

const PKT_ENDOFSTREAM: c_ulong = 0x01;
const PKT_TIMESTAMP: c_ulong = 0x02;
const CREATE_PREFER_CUVID: c_ulong = 0x04;

/// The libnvcuvid entry points.
struct Api {
    _lib: libloading::Library,
    create_parser: unsafe extern "C" fn(*mut *mut c_void, *mut ParserParams) -> CuResult,
    parse: unsafe extern "C" fn(*mut c_void, *mut SourceDataPacket) -> CuResult,
    destroy_parser: unsafe extern "C" fn(*mut c_void) -> CuResult,
    create_decoder: unsafe extern "C" fn(*mut *mut c_void, *mut DecodeCreateInfo) -> CuResult,
    decode: unsafe extern "C" fn(*mut c_void, *mut c_void) -> CuResult,
    map: unsafe extern "C" fn(
        *mut c_void,
        c_int,
        *mut u64,
        *mut c_uint,
        *mut ProcParams,
    ) -> CuResult,
    unmap: unsafe extern "C" fn(*mut c_void, u64) -> CuResult,
    destroy_decoder: unsafe extern "C" fn(*mut c_void) -> CuResult,
}

impl Api {
    fn load() -> Result<Api, CudaError> {
        if let Some(why) = crate::hidden("libnvcuvid") {
            return Err(CudaError::NoNvdec(why));
        }
        // SAFETY: loading the driver's video library runs its initialisers only.
        let lib = unsafe { libloading::Library::new("libnvcuvid.so.1") }
            .map_err(|e| CudaError::NoNvdec(e.to_string()))?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the symbol's type is the SDK's documented signature.
                *unsafe { lib.get($name) }.map_err(|e| CudaError::NoNvdec(e.to_string()))?
            };
        }
        Ok(Api {
            create_parser: sym!(b"cuvidCreateVideoParser\0"),
            parse: sym!(b"cuvidParseVideoData\0"),
            destroy_parser: sym!(b"cuvidDestroyVideoParser\0"),
            create_decoder: sym!(b"cuvidCreateDecoder\0"),
            decode: sym!(b"cuvidDecodePicture\0"),
            map: sym!(b"cuvidMapVideoFrame64\0"),
            unmap: sym!(b"cuvidUnmapVideoFrame64\0"),
            destroy_decoder: sym!(b"cuvidDestroyDecoder\0"),
            _lib: lib,
        })
    }
}

/// Whether libnvcuvid can be loaded.
pub fn nvdec_present() -> bool {
    Api::load().is_ok()
}

/// Decoder counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Pictures decoded.
    pub decoded: u64,
    /// Pictures delivered into output surfaces.
    pub delivered: u64,
    /// Pictures lost because no output surface was free (the caller fed past backpressure).
    pub overrun: u64,
    /// Pictures NVDEC refused to decode or map (damaged data).
    pub errors: u64,
}

/// A decoded picture: its surface, its timestamp and the pool it returns to (a resolution
/// change gives the decoder a new pool; earlier pictures still go back to theirs).
pub struct Decoded {
    /// The pixels.
    pub frame: DeviceNv12,
    /// The timestamp fed with its packet.
    pub pts: i64,
    /// Where `frame` goes back.
    pub pool: Arc<DevicePool>,
    /// Whole-frame copies made to deliver it (NVDEC's mapped picture → `frame`: one device
    /// copy), counted where the copy is made; the start of the frame's `copies` count.
    pub copies: u32,
}

/// What the parser callbacks see.
struct State {
    api: Arc<Api>,
    /// The decoder's own stream: its copies and waits do not serialise with other work.
    stream: Arc<cudarc::driver::CudaStream>,
    gpu_stream: sys::CUstream,
    decoder: *mut c_void,
    coded: (u32, u32),
    visible: (usize, usize),
    target_h: u32,
    pool: Option<Arc<DevicePool>>,
    pool_size: usize,
    ready: VecDeque<Decoded>,
    /// Mapped pictures whose copies are still in flight.
    mapped: VecDeque<(u64, cudarc::driver::CudaEvent)>,
    stats: DecodeStats,
    error: Option<String>,
    gpu: Arc<Gpu>,
}

/// An NVDEC decoder over Annex-B input.
pub struct Decoder {
    state: Box<State>,
    parser: *mut c_void,
}

// SAFETY: the decoder is used from one thread at a time (feed/next/release take &mut self);
// the raw handles are owned and released in Drop.
unsafe impl Send for Decoder {}

unsafe extern "C" fn on_sequence(user: *mut c_void, fmt: *mut VideoFormat) -> c_int {
    // SAFETY: `user` is the Box<State> the decoder registered; `fmt` is valid for the call.
    let (st, f) = unsafe { (&mut *(user as *mut State), *fmt) };
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| st.sequence(&f)));
    match res {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            st.error = Some(e);
            0
        }
        Err(_) => 0,
    }
}

unsafe extern "C" fn on_decode(user: *mut c_void, pic: *mut c_void) -> c_int {
    // SAFETY: as above; `pic` is the parser's CUVIDPICPARAMS, forwarded untouched.
    let st = unsafe { &mut *(user as *mut State) };
    // SAFETY: the decoder was created in the sequence callback.
    let r = unsafe { (st.api.decode)(st.decoder, pic) };
    if r != 0 {
        // A damaged picture: counted, and decoding goes on (as libavcodec does).
        st.stats.errors += 1;
        return 1;
    }
    st.stats.decoded += 1;
    1
}

unsafe extern "C" fn on_display(user: *mut c_void, di: *mut DispInfo) -> c_int {
    // SAFETY: as above.
    let (st, d) = unsafe { (&mut *(user as *mut State), &*di) };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| st.display(d))) {
        Ok(Ok(())) => 1,
        Ok(Err(e)) => {
            st.error = Some(e);
            0
        }
        Err(_) => 0,
    }
}

/// Pictures mapped at once (the decoder has `ul_num_output_surfaces` = 4 slots).
const MAPPED_MAX: usize = 3;

impl State {
    /// Waits for the oldest mapped picture's copies and unmaps it.
    fn unmap_oldest(&mut self) -> Result<(), String> {
        let Some((ptr, ev)) = self.mapped.pop_front() else {
            return Ok(());
        };
        let r = ev.synchronize().map_err(|e| e.to_string());
        // SAFETY: `ptr` was mapped by this decoder and its copies have finished.
        unsafe { (self.api.unmap)(self.decoder, ptr) };
        r
    }

    fn sequence(&mut self, f: &VideoFormat) -> Result<c_int, String> {
        if f.bit_depth_luma_minus8 != 0 || f.chroma_format != 1 {
            return Err("only 8-bit 4:2:0 video is supported".into());
        }
        let n = (u32::from(f.min_num_decode_surfaces) + 4).max(8);
        let [l, t, r, b] = f.display_area;
        let visible = (((r - l) as usize) & !1, ((b - t) as usize) & !1);
        if self.decoder.is_null() || self.coded != (f.coded_width, f.coded_height) {
            if !self.decoder.is_null() {
                while !self.mapped.is_empty() {
                    self.unmap_oldest()?;
                }
                // SAFETY: created below in an earlier call.
                unsafe { (self.api.destroy_decoder)(self.decoder) };
                self.decoder = std::ptr::null_mut();
            }
            let target_h = (f.coded_height + 1) & !1;
            let mut ci = DecodeCreateInfo {
                ul_width: f.coded_width as c_ulong,
                ul_height: f.coded_height as c_ulong,
                ul_num_decode_surfaces: n as c_ulong,
                codec_type: f.codec,
                chroma_format: f.chroma_format,
                ul_creation_flags: CREATE_PREFER_CUVID,
                bit_depth_minus8: 0,
                ul_intra_decode_only: 0,
                ul_max_width: f.coded_width as c_ulong,
                ul_max_height: f.coded_height as c_ulong,
                reserved1: 0,
                display_area: Rect16 {
                    left: 0,
                    top: 0,
                    right: 0,
                    bottom: 0,
                },
                output_format: 0, // NV12
                deinterlace_mode: if f.progressive_sequence != 0 { 0 } else { 2 },
                ul_target_width: f.coded_width as c_ulong,
                ul_target_height: target_h as c_ulong,
                ul_num_output_surfaces: 4,
                vid_lock: std::ptr::null_mut(),
                target_rect: Rect16 {
                    left: 0,
                    top: 0,
                    right: 0,
                    bottom: 0,
                },
                enable_histogram: 0,
                reserved2: [0; 4],
            };
            // SAFETY: ci is fully initialised; the CUDA context is current on this thread.
            let r = unsafe { (self.api.create_decoder)(&mut self.decoder, &mut ci) };
            if r != 0 {
                return Err(format!(
                    "cuvidCreateDecoder failed ({r}) for {}x{}",
                    f.coded_width, f.coded_height
                ));
            }
            self.coded = (f.coded_width, f.coded_height);
            self.target_h = target_h;
        }
        if self.visible != visible || self.pool.is_none() {
            let gpu = &self.gpu;
            self.pool = Some(Arc::new(
                DevicePool::new(gpu, visible.0, visible.1, self.pool_size)
                    .map_err(|e| e.to_string())?,
            ));
            self.visible = visible;
        }
        Ok(n as c_int)
    }

    fn display(&mut self, d: &DispInfo) -> Result<(), String> {
        let Some(pool) = self.pool.clone() else {
            return Err("picture before sequence header".into());
        };
        let Some(mut out) = pool.acquire() else {
            self.stats.overrun += 1;
            return Ok(());
        };
        // SAFETY: ProcParams is plain C data (integers and raw pointers): all-zero is valid.
        let mut pp: ProcParams = unsafe { std::mem::zeroed() };
        pp.progressive_frame = d.progressive_frame;
        pp.second_field = d.repeat_first_field + 1;
        pp.top_field_first = d.top_field_first;
        pp.unpaired_field = i32::from(d.repeat_first_field < 0);
        pp.output_stream = self.gpu_stream as *mut c_void;
        // At most MAPPED_MAX pictures stay mapped while their copies finish.
        while self.mapped.len() >= MAPPED_MAX {
            self.unmap_oldest()?;
        }
        let (mut src, mut pitch) = (0u64, 0u32);
        // SAFETY: the decoder exists; the out-pointers are valid.
        let r =
            unsafe { (self.api.map)(self.decoder, d.picture_index, &mut src, &mut pitch, &mut pp) };
        if r != 0 {
            pool.release(out);
            self.stats.errors += 1;
            return Ok(());
        }
        let (w, h, dp) = (out.width, out.height, out.pitch);
        let copied = {
            let (dst, _guard) = out.data.device_ptr_mut(&self.stream);
            let copy = |src_dev: u64, dst_dev: u64, rows: usize| -> Result<(), String> {
                let cp = sys::CUDA_MEMCPY2D {
                    srcXInBytes: 0,
                    srcY: 0,
                    srcMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
                    srcHost: std::ptr::null(),
                    srcDevice: src_dev,
                    srcArray: std::ptr::null_mut(),
                    srcPitch: pitch as usize,
                    dstXInBytes: 0,
                    dstY: 0,
                    dstMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
                    dstHost: std::ptr::null_mut(),
                    dstDevice: dst_dev,
                    dstArray: std::ptr::null_mut(),
                    dstPitch: dp,
                    WidthInBytes: w,
                    Height: rows,
                };
                // SAFETY: both regions lie inside their allocations (sizes from the format).
                unsafe { sys::cuMemcpy2DAsync_v2(&cp, self.gpu_stream) }
                    .result()
                    .map_err(|e| format!("device copy: {e}"))
            };
            copy(src, dst, h).and_then(|()| {
                copy(
                    src + u64::from(pitch) * u64::from(self.target_h),
                    dst + (dp * h) as u64,
                    h / 2,
                )
            })
        };
        // The copies are queued on our stream; the picture is unmapped once they are done,
        // without waiting here: an event marks them and the unmap happens when the next
        // picture needs the mapping slot (consumers on other streams wait for the copy
        // through the surface's own write event, which cudarc tracks).
        let done = self.stream.record_event(None).map_err(|e| e.to_string());
        let mut copies = 0;
        match (copied, done) {
            (Ok(()), Ok(ev)) => {
                copies += 1;
                self.mapped.push_back((src, ev));
            }
            (c, d) => {
                let _ = self.stream.synchronize();
                // SAFETY: `src` was mapped above and its copies are finished.
                unsafe { (self.api.unmap)(self.decoder, src) };
                c?;
                d?;
            }
        }
        self.stats.delivered += 1;
        self.ready.push_back(Decoded {
            frame: out,
            pts: d.timestamp,
            pool,
            copies,
        });
        Ok(())
    }
}

impl Decoder {
    /// A decoder for `codec` on `gpu`, delivering into a pool of `pool_size` surfaces.
    /// `display_delay` pictures may queue on NVDEC before the first is mapped (0 = lowest
    /// latency; 2–4 let decode and copy overlap, NVIDIA's recommendation for throughput).
    pub fn new(
        gpu: &Arc<Gpu>,
        codec: Codec,
        pool_size: usize,
        display_delay: u32,
    ) -> Result<Decoder, CudaError> {
        let api = Arc::new(Api::load()?);
        gpu.ctx.bind_to_thread()?;
        crate::relax_capture_mode();
        let stream = gpu.ctx.new_stream()?;
        let mut state = Box::new(State {
            api: api.clone(),
            gpu_stream: stream.cu_stream(),
            stream,
            decoder: std::ptr::null_mut(),
            coded: (0, 0),
            visible: (0, 0),
            target_h: 0,
            pool: None,
            pool_size: pool_size.max(2),
            ready: VecDeque::new(),
            mapped: VecDeque::new(),
            stats: DecodeStats::default(),
            error: None,
            gpu: gpu.clone(),
        });
        let mut p = ParserParams {
            codec_type: codec as c_int,
            ul_max_num_decode_surfaces: 1,
            ul_clock_rate: 0,
            ul_error_threshold: 0,
            ul_max_display_delay: display_delay,
            flags: 0,
            reserved1: [0; 4],
            user_data: &mut *state as *mut State as *mut c_void,
            sequence: Some(on_sequence),
            decode: Some(on_decode),
            display: Some(on_display),
            operating_point: None,
            sei: None,
            reserved2: [std::ptr::null_mut(); 5],
            ext_video_info: std::ptr::null_mut(),
        };
        let mut parser = std::ptr::null_mut();
        // SAFETY: p is fully initialised; state outlives the parser (both owned by Decoder).
        let r = unsafe { (api.create_parser)(&mut parser, &mut p) };
        if r != 0 {
            return Err(CudaError::Size(format!(
                "cuvidCreateVideoParser failed ({r})"
            )));
        }
        Ok(Decoder { state, parser })
    }

    /// Frames waiting to be taken.
    pub fn ready(&self) -> usize {
        self.state.ready.len()
    }

    /// Free output surfaces (0 = backpressure: take and release frames first).
    pub fn free_surfaces(&self) -> usize {
        self.state
            .pool
            .as_ref()
            .map_or(self.state.pool_size, |p| p.available())
    }

    fn packet(&mut self, data: &[u8], flags: c_ulong, pts: i64) -> Result<(), CudaError> {
        // The callbacks need the context current on this thread.
        self.state.gpu.ctx.bind_to_thread()?;
        let mut pkt = SourceDataPacket {
            flags,
            payload_size: data.len() as c_ulong,
            payload: if data.is_empty() {
                std::ptr::null()
            } else {
                data.as_ptr()
            },
            timestamp: pts,
        };
        // SAFETY: the parser exists; pkt points to `data`, alive for the call.
        let r = unsafe { (self.state.api.parse)(self.parser, &mut pkt) };
        if let Some(e) = self.state.error.take() {
            return Err(CudaError::Size(format!("NVDEC: {e}")));
        }
        if r != 0 {
            return Err(CudaError::Size(format!("cuvidParseVideoData failed ({r})")));
        }
        Ok(())
    }

    /// Feeds Annex-B bytes (any split; the parser finds the pictures). Returns false
    /// without consuming anything while half the output surfaces are in use: feed at most
    /// that many pictures at once (a demuxer's access unit is one).
    pub fn feed(&mut self, annexb: &[u8], pts: Option<i64>) -> Result<bool, CudaError> {
        if self.free_surfaces() < self.state.pool_size / 2 {
            return Ok(false);
        }
        // The parser's callbacks map and copy on this thread.
        crate::relax_capture_mode();
        self.packet(
            annexb,
            if pts.is_some() { PKT_TIMESTAMP } else { 0 },
            pts.unwrap_or(0),
        )?;
        Ok(true)
    }

    /// End of stream: the remaining pictures come out, and every mapping is released.
    pub fn flush(&mut self) -> Result<(), CudaError> {
        self.packet(&[], PKT_ENDOFSTREAM, 0)?;
        while !self.state.mapped.is_empty() {
            self.state
                .unmap_oldest()
                .map_err(|e| CudaError::Size(format!("NVDEC: {e}")))?;
        }
        Ok(())
    }

    /// The next decoded frame, with its timestamp and the pool it goes back to.
    pub fn next_frame(&mut self) -> Option<Decoded> {
        self.state.ready.pop_front()
    }

    /// The output pool (known once the first sequence header was parsed): frames taken
    /// with [`Decoder::next_frame`] go back here when released, from any thread.
    pub fn pool(&self) -> Option<Arc<DevicePool>> {
        self.state.pool.clone()
    }

    /// Counters.
    pub fn stats(&self) -> DecodeStats {
        self.state.stats
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        let _ = self.state.gpu.ctx.bind_to_thread();
        while !self.state.mapped.is_empty() {
            let _ = self.state.unmap_oldest();
        }
        // SAFETY: created in new() / the sequence callback, destroyed once here.
        unsafe {
            (self.state.api.destroy_parser)(self.parser);
            if !self.state.decoder.is_null() {
                (self.state.api.destroy_decoder)(self.state.decoder);
            }
        }
    }
}

/// MP4 (AVCC) sample → Annex-B: each NAL's big-endian length prefix (`nal_len` bytes, from
/// the avcC record) becomes a 4-byte start code. Appends to `out`.
pub fn avcc_to_annexb(sample: &[u8], nal_len: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let mut i = 0;
    while i < sample.len() {
        if i + nal_len > sample.len() {
            return Err(format!("truncated NAL length at byte {i}"));
        }
        let n = sample[i..i + nal_len]
            .iter()
            .fold(0usize, |a, b| (a << 8) | usize::from(*b));
        i += nal_len;
        if i + n > sample.len() {
            return Err(format!("NAL of {n} bytes overruns the sample at byte {i}"));
        }
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(&sample[i..i + n]);
        i += n;
    }
    Ok(())
}

/// The SPS and PPS of an `avcC` record as Annex-B, and the NAL length size.
pub fn avcc_parameter_sets(avcc: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let bad = || "malformed avcC record".to_string();
    if avcc.len() < 7 || avcc[0] != 1 {
        return Err(bad());
    }
    let nal_len = usize::from(avcc[4] & 3) + 1;
    let mut out = Vec::new();
    let mut i = 5;
    for mask in [0x1f_u8, 0xff] {
        let count = usize::from(*avcc.get(i).ok_or_else(bad)? & mask);
        i += 1;
        for _ in 0..count {
            let n = usize::from(u16::from_be_bytes([
                *avcc.get(i).ok_or_else(bad)?,
                *avcc.get(i + 1).ok_or_else(bad)?,
            ]));
            i += 2;
            let nal = avcc.get(i..i + n).ok_or_else(bad)?;
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
            i += n;
        }
    }
    Ok((out, nal_len))
}

/// The VPS, SPS and PPS of an `hvcC` record (MP4 H.265) as Annex-B, and the NAL length
/// size (samples are length-prefixed like AVCC, so [`avcc_to_annexb`] converts them).
pub fn hvcc_parameter_sets(hvcc: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let bad = || "malformed hvcC record".to_string();
    if hvcc.len() < 23 || hvcc[0] != 1 {
        return Err(bad());
    }
    let nal_len = usize::from(hvcc[21] & 3) + 1;
    let arrays = usize::from(hvcc[22]);
    let mut out = Vec::new();
    let mut i = 23;
    for _ in 0..arrays {
        i += 1; // array_completeness, reserved, NAL unit type
        let count = usize::from(u16::from_be_bytes([
            *hvcc.get(i).ok_or_else(bad)?,
            *hvcc.get(i + 1).ok_or_else(bad)?,
        ]));
        i += 2;
        for _ in 0..count {
            let n = usize::from(u16::from_be_bytes([
                *hvcc.get(i).ok_or_else(bad)?,
                *hvcc.get(i + 1).ok_or_else(bad)?,
            ]));
            i += 2;
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(hvcc.get(i..i + n).ok_or_else(bad)?);
            i += n;
        }
    }
    Ok((out, nal_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avcc_samples_become_annexb() {
        let sample = [0, 0, 0, 2, 0x65, 0xaa, 0, 0, 0, 1, 0x41];
        let mut out = Vec::new();
        avcc_to_annexb(&sample, 4, &mut out).unwrap();
        assert_eq!(out, [0, 0, 0, 1, 0x65, 0xaa, 0, 0, 0, 1, 0x41]);
        assert!(
            avcc_to_annexb(&[0, 0, 0, 9, 1], 4, &mut out)
                .unwrap_err()
                .contains("overruns")
        );
        // avcC: version 1, profile, compat, level, 0xff (4-byte lengths), 1 SPS, 1 PPS.
        let avcc = [
            1, 0x64, 0, 0x28, 0xff, 0xe1, 0, 2, 0x67, 0x64, 1, 0, 1, 0x68,
        ];
        let (ps, n) = avcc_parameter_sets(&avcc).unwrap();
        assert_eq!(n, 4);
        assert_eq!(ps, [0, 0, 0, 1, 0x67, 0x64, 0, 0, 0, 1, 0x68]);
        assert!(avcc_parameter_sets(&avcc[..9]).is_err());
    }

    #[test]
    fn hvcc_parameter_sets_become_annexb() {
        // 22 header bytes (version 1, 4-byte lengths in byte 21), 2 arrays: VPS (1 NAL of
        // 2 bytes), SPS (1 NAL of 1 byte).
        let mut hvcc = vec![1u8];
        hvcc.extend_from_slice(&[0; 20]);
        hvcc.push(0xf3);
        hvcc.push(2);
        hvcc.extend_from_slice(&[0xa0, 0, 1, 0, 2, 0x40, 0x01]);
        hvcc.extend_from_slice(&[0xa1, 0, 1, 0, 1, 0x42]);
        let (ps, n) = hvcc_parameter_sets(&hvcc).unwrap();
        assert_eq!(n, 4);
        assert_eq!(ps, [0, 0, 0, 1, 0x40, 0x01, 0, 0, 0, 1, 0x42]);
        assert!(hvcc_parameter_sets(&hvcc[..hvcc.len() - 1]).is_err());
        assert!(hvcc_parameter_sets(&[2; 30]).is_err());
    }
}
