//! ONNX Runtime fed from device memory: a session on the CUDA or TensorRT provider reads its
//! input from, and writes its output to, buffers the CUDA backend's kernels made and will
//! consume, through ONNX Runtime's I/O binding — no host round trip in the frame loop. The
//! same code runs on a Jetson (TensorRT provider, JetPack's ONNX Runtime) and on a discrete
//! GPU (CUDA provider).
//!
//! The session runs on a CUDA stream of its own (`user_compute_stream`), in the primary
//! context of its device — the one the CUDA backend's `Gpu` uses, so device pointers are
//! valid across both. Ordering across streams is explicit: the caller's kernels that wrote
//! an input have finished before the request is submitted (the client waits for its stream),
//! and [`GpuIo::run`] returns only after its stream has finished writing the outputs.
//!
//! The binding goes through ONNX Runtime's C API (`CreateTensorWithDataAsOrtValue` over the
//! caller's pointer, `BindInput`/`BindOutput`, `RunWithBinding`) rather than the `ort`
//! crate's wrapper, which clones a borrowed input before binding it (on a GPU, through an
//! extra identity session): here nothing is copied but the batch packing below.

use std::ffi::{CStr, CString, c_void};
use std::ptr;
use std::sync::Arc;

use aegis_cuda::cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use ort::AsPointer as _;
use ort::sys;

/// One request of a device batch: `f32` buffers in device memory (CUDA device pointers) of
/// one item, valid until [`GpuIo::run`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceItem {
    /// The model input of one item (`item_shape`'s product of floats).
    pub input: u64,
    /// Where the item's output goes.
    pub output: u64,
    /// The output buffer's length in floats (must be the model's output per item).
    pub output_len: usize,
}

/// The GPU side of an ONNX Runtime session: its context and stream, the memory description
/// of device buffers, the I/O binding, and the buffers a batch of several items is packed
/// into.
pub(crate) struct GpuIo {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    memory: *mut sys::OrtMemoryInfo,
    binding: *mut sys::OrtIoBinding,
    input: CString,
    output: CString,
    /// The first output's declared shape (`-1` for the batch).
    output_dims: Vec<i64>,
    batch_in: Option<CudaSlice<f32>>,
    batch_out: Option<CudaSlice<f32>>,
    /// Set when the session replays a CUDA graph.
    graph: Option<GraphIo>,
}

/// The buffers of a session that replays a CUDA graph: the graph reads and writes fixed
/// addresses, so every call's items are copied into `input` and out of `output` (device to
/// device), which stay bound for the session's life.
struct GraphIo {
    input: CudaSlice<f32>,
    output: CudaSlice<f32>,
    in_dims: Vec<i64>,
    out_dims: Vec<i64>,
    /// Rows of the one shape (the batch dimension).
    rows: usize,
    item_in: usize,
    item_out: usize,
    /// The bound values (created on the first call, kept: the graph holds their addresses).
    bound: Option<(OwnedValue, OwnedValue)>,
}

// SAFETY: the ONNX Runtime objects behind the raw pointers are owned by this value alone and
// used by one thread at a time (the batch thread that owns the engine); ONNX Runtime allows
// them to move between threads.
unsafe impl Send for GpuIo {}

/// `status` as a `Result` (released either way).
///
/// # Safety
/// `status` is null or a status an ONNX Runtime call just returned.
unsafe fn check(status: sys::OrtStatusPtr, what: &str) -> Result<(), String> {
    if status.0.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a non-null status from the runtime has a NUL-terminated message that lives
    // until the status is released (below, after the copy).
    let message = unsafe { CStr::from_ptr((api.GetErrorMessage)(status.0)) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: released once, not used after.
    unsafe { (api.ReleaseStatus)(status.0) };
    Err(format!("{what}: {message}"))
}

/// A GPU session's context and stream.
pub(crate) type SessionStream = (Arc<CudaContext>, Arc<CudaStream>);

/// The stream a session on device `device` should run on, with its context; `None` when no
/// CUDA driver is present (the provider then fails to register, and the caller's fallback
/// rules apply).
pub(crate) fn session_stream(device: i32) -> Option<SessionStream> {
    if !aegis_cuda::driver_present() {
        return None;
    }
    let ctx = CudaContext::new(usize::try_from(device).ok()?).ok()?;
    // The loading thread: a capture of another session must not fail the load.
    aegis_cuda::relax_capture_mode();
    let stream = ctx.new_stream().ok()?;
    Some((ctx, stream))
}

/// An owned `OrtValue`, released on drop.
struct OwnedValue(*mut sys::OrtValue);

impl Drop for OwnedValue {
    fn drop(&mut self) {
        // SAFETY: created by CreateTensorWithDataAsOrtValue, released once.
        unsafe { (ort::api().ReleaseValue)(self.0) }
    }
}

impl GpuIo {
    /// The binding for `session` (whose provider runs on `stream`, device `device`).
    pub(crate) fn new(
        session: &mut ort::session::Session,
        (ctx, stream): SessionStream,
        device: i32,
        input: &str,
        output: &str,
        output_dims: Vec<i64>,
    ) -> Result<GpuIo, String> {
        let api = ort::api();
        let mut memory = ptr::null_mut();
        // SAFETY: valid NUL-terminated name and out-pointer.
        unsafe {
            check(
                (api.CreateMemoryInfo)(
                    c"Cuda".as_ptr(),
                    sys::OrtAllocatorType::OrtDeviceAllocator,
                    device,
                    sys::OrtMemType::OrtMemTypeDefault,
                    &mut memory,
                ),
                "CreateMemoryInfo",
            )?
        };
        let mut binding = ptr::null_mut();
        // SAFETY: the session pointer is valid for the session's life, which outlives the
        // binding (the engine drops this value first: see `OrtSession`'s field order).
        let made = unsafe {
            check(
                (api.CreateIoBinding)(session.ptr_mut(), &mut binding),
                "CreateIoBinding",
            )
        };
        if let Err(e) = made {
            // SAFETY: created above, released once.
            unsafe { (api.ReleaseMemoryInfo)(memory) };
            return Err(e);
        }
        let name = |s: &str| CString::new(s).map_err(|_| format!("tensor name {s:?} has a NUL"));
        Ok(GpuIo {
            ctx,
            stream,
            memory,
            binding,
            input: name(input)?,
            output: name(output)?,
            output_dims,
            batch_in: None,
            batch_out: None,
            graph: None,
        })
    }

    /// Whether the session replays a CUDA graph ([`GpuIo::use_graph`]).
    pub(crate) fn graph(&self) -> bool {
        self.graph.is_some()
    }

    /// Makes every call go through one pair of buffers of shapes `input` and `output`
    /// (batch first), as a session built with a CUDA graph needs.
    pub(crate) fn use_graph(&mut self, input: &[usize], output: &[usize]) -> Result<(), String> {
        let rows = *input.first().ok_or("an input without a batch dimension")?;
        if output.first() != Some(&rows) || rows == 0 {
            return Err(format!(
                "graph shapes {input:?} -> {output:?} do not share a batch"
            ));
        }
        self.ctx
            .bind_to_thread()
            .map_err(|e| format!("CUDA context: {e}"))?;
        let alloc = |n: usize| {
            self.stream
                .alloc_zeros::<f32>(n)
                .map_err(|e| format!("device buffer: {e}"))
        };
        let dims = |s: &[usize]| s.iter().map(|&d| d as i64).collect::<Vec<_>>();
        self.graph = Some(GraphIo {
            input: alloc(input.iter().product())?,
            output: alloc(output.iter().product())?,
            in_dims: dims(input),
            out_dims: dims(output),
            rows,
            item_in: input[1..].iter().product(),
            item_out: output[1..].iter().product(),
            bound: None,
        });
        Ok(())
    }

    /// Runs a graph session on what its input buffer holds (binding the buffers on the
    /// first call), leaving the result in its output buffer (queued on the stream).
    fn run_graph(&mut self, session: &mut ort::session::Session) -> Result<(), String> {
        let g = self.graph.as_mut().ok_or("not a graph session")?;
        if g.bound.is_none() {
            let (i, _) = g.input.device_ptr(&self.stream);
            let (o, _) = g.output.device_ptr_mut(&self.stream);
            let (in_dims, out_dims) = (g.in_dims.clone(), g.out_dims.clone());
            // The values and the buffers under them live in `self.graph` as long as the
            // binding (released in `drop` first).
            let bound = self.bind((i, &in_dims), (o, &out_dims))?;
            self.graph.as_mut().expect("checked above").bound = Some(bound);
        }
        // SAFETY: the session and the binding are valid; the bound buffers are this value's.
        unsafe {
            check(
                (ort::api().RunWithBinding)(session.ptr_mut(), ptr::null(), self.binding),
                "RunWithBinding",
            )
        }
    }

    /// A host request on a graph session: `input` (`shape`, batch first, at most the
    /// graph's rows) uploaded into the input buffer, the graph run, the requests' rows
    /// downloaded into `out`; returns the output shape for those rows.
    pub(crate) fn run_host(
        &mut self,
        session: &mut ort::session::Session,
        input: &[f32],
        shape: &[usize],
        out: &mut Vec<f32>,
    ) -> Result<Vec<usize>, String> {
        let g = self.graph.as_mut().ok_or("not a graph session")?;
        let n = shape.first().copied().unwrap_or(0);
        if n == 0
            || n > g.rows
            || shape[1..].iter().product::<usize>() != g.item_in
            || input.len() != n * g.item_in
        {
            return Err(format!(
                "input {shape:?} ({} values) does not fit the graph's {:?}",
                input.len(),
                g.in_dims
            ));
        }
        self.ctx
            .bind_to_thread()
            .map_err(|e| format!("CUDA context: {e}"))?;
        aegis_cuda::relax_capture_mode();
        let (item_out, rows) = (g.item_out, g.rows);
        self.stream
            .memcpy_htod(input, &mut g.input.slice_mut(0..input.len()))
            .map_err(|e| format!("upload: {e}"))?;
        self.run_graph(session)?;
        let g = self.graph.as_ref().expect("checked above");
        out.resize(rows * item_out, 0.0);
        self.stream
            .memcpy_dtoh(&g.output, out.as_mut_slice())
            .map_err(|e| format!("download: {e}"))?;
        self.stream
            .synchronize()
            .map_err(|e| format!("CUDA stream: {e}"))?;
        out.truncate(n * item_out);
        Ok(with_batch(n, &g.out_dims))
    }

    /// [`GpuIo::run`] on a graph session: the items copied into its input buffer, the graph
    /// run, the outputs copied out.
    fn run_device_graph(
        &mut self,
        session: &mut ort::session::Session,
        items: &[DeviceItem],
        item_shape: &[usize],
    ) -> Result<Vec<usize>, String> {
        let g = self.graph.as_mut().ok_or("not a graph session")?;
        let (rows, item_in, item_out) = (g.rows, g.item_in, g.item_out);
        if items.len() > rows || item_shape.iter().product::<usize>() != item_in {
            return Err(format!(
                "{} items of {item_shape:?} do not fit the graph's {:?}",
                items.len(),
                g.in_dims
            ));
        }
        outputs_fit(items, item_out)?;
        self.ctx
            .bind_to_thread()
            .map_err(|e| format!("CUDA context: {e}"))?;
        let (bin, _) = g.input.device_ptr(&self.stream);
        let (bout, _) = g.output.device_ptr(&self.stream);
        self.pack(bin, items, item_in)?;
        self.run_graph(session)?;
        self.unpack(bout, items, item_out)?;
        self.stream
            .synchronize()
            .map_err(|e| format!("CUDA stream: {e}"))?;
        let g = self.graph.as_ref().expect("checked above");
        Ok(with_batch(1, &g.out_dims))
    }

    /// A tensor over device memory at `ptr` (`dims`, `f32`).
    fn tensor(&self, ptr: u64, dims: &[i64]) -> Result<OwnedValue, String> {
        let len: i64 = dims.iter().product();
        let mut value = ptr::null_mut();
        // SAFETY: the memory description says CUDA device memory; `ptr` points to at least
        // `len` floats (the callers check the buffer lengths) that outlive the value (it is
        // dropped before `run` returns, or, bound for a graph, kept in `GraphIo` beside its
        // buffer and released after the binding).
        unsafe {
            check(
                (ort::api().CreateTensorWithDataAsOrtValue)(
                    self.memory,
                    ptr as *mut c_void,
                    len as usize * size_of::<f32>(),
                    dims.as_ptr(),
                    dims.len(),
                    sys::ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
                    &mut value,
                ),
                "CreateTensorWithDataAsOrtValue",
            )?
        };
        Ok(OwnedValue(value))
    }

    /// Tensors over `input` and `output` (device pointer, dims), bound as the session's
    /// input and output; the values must outlive every run that uses the binding.
    fn bind(
        &self,
        input: (u64, &[i64]),
        output: (u64, &[i64]),
    ) -> Result<(OwnedValue, OwnedValue), String> {
        let input = self.tensor(input.0, input.1)?;
        let output = self.tensor(output.0, output.1)?;
        let api = ort::api();
        // SAFETY: binding, names and values are valid; ONNX Runtime keeps its own reference
        // to each bound value (the caller keeps the values and their buffers alive).
        unsafe {
            check(
                (api.BindInput)(self.binding, self.input.as_ptr(), input.0),
                "BindInput",
            )?;
            check(
                (api.BindOutput)(self.binding, self.output.as_ptr(), output.0),
                "BindOutput",
            )?;
        }
        Ok((input, output))
    }

    /// Each item's input (`item` floats) into row k of the batch buffer at `base`.
    fn pack(&self, base: u64, items: &[DeviceItem], item: usize) -> Result<(), String> {
        for (k, it) in items.iter().enumerate() {
            self.copy(base + (k * item * size_of::<f32>()) as u64, it.input, item)?;
        }
        Ok(())
    }

    /// Row k of the batch output at `base` (`item` floats) into each item's output.
    fn unpack(&self, base: u64, items: &[DeviceItem], item: usize) -> Result<(), String> {
        for (k, it) in items.iter().enumerate() {
            self.copy(it.output, base + (k * item * size_of::<f32>()) as u64, item)?;
        }
        Ok(())
    }

    /// Device-to-device copy of `floats` values on the session's stream.
    fn copy(&self, dst: u64, src: u64, floats: usize) -> Result<(), String> {
        // SAFETY: both ranges are device memory of at least `floats` values (checked by the
        // callers); the copy is ordered on the session's stream.
        unsafe {
            aegis_cuda::cudarc::driver::result::memcpy_dtod_async(
                dst,
                src,
                floats * size_of::<f32>(),
                self.stream.cu_stream(),
            )
        }
        .map_err(|e| format!("device copy: {e}"))
    }

    /// A buffer of at least `len` floats in `slot`, grown (never per request once sized).
    fn scratch(
        stream: &Arc<CudaStream>,
        slot: &mut Option<CudaSlice<f32>>,
        len: usize,
    ) -> Result<u64, String> {
        if slot.as_ref().is_none_or(|b| b.len() < len) {
            *slot = Some(
                stream
                    .alloc_zeros::<f32>(len)
                    .map_err(|e| format!("device buffer: {e}"))?,
            );
        }
        let buf = slot.as_mut().expect("allocated above");
        let (p, _record) = buf.device_ptr_mut(stream);
        Ok(p)
    }

    /// Runs `session` on the items' inputs (each `item_shape`), writing each output into
    /// its item's buffer, as a batch of `rows` (padding after the items); returns the output
    /// shape of one item (batch dimension 1). A batch of one is bound in place; a larger one
    /// is packed into one batch tensor and unpacked after, device to device. Returns when
    /// the outputs are written.
    pub(crate) fn run(
        &mut self,
        session: &mut ort::session::Session,
        items: &[DeviceItem],
        item_shape: &[usize],
        rows: usize,
    ) -> Result<Vec<usize>, String> {
        let n = items.len();
        if n == 0 {
            return Err("an empty device batch".into());
        }
        // A capture on another session's thread must not fail this one's calls (nor they
        // spoil it): see `aegis_cuda::relax_capture_mode`.
        aegis_cuda::relax_capture_mode();
        if self.graph.is_some() {
            // The graph's rows, whatever `rows` says: its one shape.
            return self.run_device_graph(session, items, item_shape);
        }
        // The batch that runs: the items, then padding rows (whatever the batch buffer
        // held: earlier inputs, or zeros) whose outputs are dropped.
        let rows = rows.max(n);
        self.ctx
            .bind_to_thread()
            .map_err(|e| format!("CUDA context: {e}"))?;
        let mut in_dims = vec![rows as i64];
        in_dims.extend(item_shape.iter().map(|&d| d as i64));
        let item_in: usize = item_shape.iter().product();
        let mut out_dims = self.output_dims.clone();
        match out_dims.first_mut() {
            Some(d) if *d < 0 || *d as usize == rows => *d = rows as i64,
            _ => {
                return Err(format!(
                    "output shape {:?} has no batch dimension for {rows} row(s)",
                    self.output_dims
                ));
            }
        }
        // One dimension the model leaves open (YOLOv8's anchors: [-1, 4 + classes, -1]) is
        // what the caller's buffer holds over the known ones: the warm-up run on the host
        // measured it and the stages size their buffers from that.
        let open: Vec<usize> = (1..out_dims.len()).filter(|&k| out_dims[k] < 0).collect();
        let known: i64 = out_dims[1..].iter().filter(|&&d| d >= 0).product();
        let len = items[0].output_len as i64;
        match open.as_slice() {
            [] => {}
            [k] if known > 0 && len > 0 && len % known == 0 => out_dims[*k] = len / known,
            _ => {
                return Err(format!(
                    "output shape {:?} cannot be resolved for an output buffer of {len} floats",
                    self.output_dims
                ));
            }
        }
        let item_out = out_dims[1..].iter().product::<i64>() as usize;
        outputs_fit(items, item_out)?;
        let (in_ptr, out_ptr) = if rows == 1 {
            (items[0].input, items[0].output)
        } else {
            let bin = Self::scratch(&self.stream, &mut self.batch_in, rows * item_in)?;
            let bout = Self::scratch(&self.stream, &mut self.batch_out, rows * item_out)?;
            self.pack(bin, items, item_in)?;
            (bin, bout)
        };
        // The buffers outlive the run (the caller's until `run` returns, the batch ones in
        // `self`).
        let (_input, _output) = self.bind((in_ptr, &in_dims), (out_ptr, &out_dims))?;
        let api = ort::api();
        // SAFETY: the session and the binding are valid, and so are the bound values.
        unsafe {
            check(
                (api.RunWithBinding)(session.ptr_mut(), ptr::null(), self.binding),
                "RunWithBinding",
            )?;
        }
        if rows > 1 {
            self.unpack(out_ptr, items, item_out)?;
        }
        self.stream
            .synchronize()
            .map_err(|e| format!("CUDA stream: {e}"))?;
        // SAFETY: drops the binding's references to this run's values (the values are
        // released when `input` and `output` drop, after this).
        unsafe {
            (api.ClearBoundInputs)(self.binding);
            (api.ClearBoundOutputs)(self.binding);
        }
        Ok(with_batch(1, &out_dims))
    }
}

impl Drop for GpuIo {
    fn drop(&mut self) {
        let api = ort::api();
        // SAFETY: created in `new`, released once; the session is still alive (it is
        // dropped after this value).
        unsafe {
            (api.ReleaseIoBinding)(self.binding);
            (api.ReleaseMemoryInfo)(self.memory);
        }
    }
}

/// Every item's output buffer holds one item's output (`item_out` floats).
fn outputs_fit(items: &[DeviceItem], item_out: usize) -> Result<(), String> {
    match items.iter().find(|i| i.output_len != item_out) {
        Some(bad) => Err(format!(
            "an output buffer of {} floats for outputs of {item_out}",
            bad.output_len
        )),
        None => Ok(()),
    }
}

/// The shape `dims` (batch first) with `n` rows.
fn with_batch(n: usize, dims: &[i64]) -> Vec<usize> {
    let mut shape = vec![n];
    shape.extend(dims[1..].iter().map(|&d| d as usize));
    shape
}

/// A device pointer for `buf`'s data, read on `stream` (for [`DeviceItem::input`]).
pub fn device_ptr(buf: &CudaSlice<f32>, stream: &Arc<CudaStream>) -> u64 {
    buf.device_ptr(stream).0
}

/// A device pointer for `buf`'s data, written on `stream` (for [`DeviceItem::output`]).
pub fn device_ptr_mut(buf: &mut CudaSlice<f32>, stream: &Arc<CudaStream>) -> u64 {
    buf.device_ptr_mut(stream).0
}
