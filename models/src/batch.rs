//! One model, many streams: a [`Batcher`] owns a model's session on its own thread and
//! runs the requests of several streams' stages as one batched inference call when they
//! arrive together (within `window`), which is where a GPU earns its throughput and what
//! keeps one copy of the weights in memory however many cameras there are.
//!
//! Each stage holds a [`BatchClient`] with its own input and output buffers; a request swaps
//! the client's buffers into its slot (no copy, no allocation once the buffers have their
//! size), the batch thread packs the submitted inputs into one tensor, runs it and unpacks
//! the outputs into the slots. A model with a fixed batch dimension of 1 still serves every
//! stream, one request after another.
//!
//! The batch thread waits for more requests only while some registered client has not
//! submitted yet, and at most `window`: a single stream never waits. A call takes the
//! requests of one kind (host tensors or device buffers), that of the longest-waiting one.
//! On a GPU engine every call runs as many rows as the batcher has clients (at most
//! `max_batch`), the rows without a request being padding, so that the model sees one
//! input shape while the pipeline runs (see `serve`).

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::engine::{DeviceItem, EngineError, InferenceEngine};

#[derive(Default)]
enum SlotState {
    /// Free for the client's next request.
    #[default]
    Idle,
    /// Input in place, waiting for the batch thread.
    Submitted,
    /// Being run.
    Running,
    /// Output (or error) in place.
    Done(Option<String>),
}

#[derive(Default)]
struct Slot {
    alive: bool,
    /// A request whose buffers are in device memory (else `input` holds it).
    device: Option<DeviceItem>,
    input: Vec<f32>,
    output: Vec<f32>,
    out_shape: Vec<usize>,
    state: SlotState,
    /// When the pending request was submitted.
    since: Option<Instant>,
}

struct State {
    slots: Vec<Slot>,
    shutdown: bool,
    batches: u64,
    items: u64,
    engine: Duration,
    queued: Duration,
    slowest: Duration,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled on submit and on shutdown.
    submitted: Condvar,
    /// Signalled when a batch finished.
    done: Condvar,
    model: PathBuf,
    /// The engine takes device buffers.
    on_device: bool,
    /// The engine runs on a GPU: its calls are padded to one batch size.
    pads: bool,
    /// The engine's calls replay a CUDA graph.
    graph: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Batch statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Inference calls made.
    pub batches: u64,
    /// Requests served.
    pub items: u64,
    /// Time spent inside the engine.
    pub engine: Duration,
    /// Time requests waited from their submission to the start of their call, summed.
    pub queued: Duration,
    /// The longest single call.
    pub slowest: Duration,
}

/// Stops the batch thread when the last [`Batcher`] or [`BatchClient`] handle goes.
struct Owner {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.submitted.notify_all();
        self.shared.done.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The owner of a model's session; serves [`BatchClient`]s. The batch thread runs while
/// this or any client is alive.
pub struct Batcher {
    owner: Arc<Owner>,
}

/// One stage's handle on a [`Batcher`]; dropping it unregisters it.
pub struct BatchClient {
    owner: Arc<Owner>,
    index: usize,
    input: Vec<f32>,
    output: Vec<f32>,
    out_shape: Vec<usize>,
}

impl Batcher {
    /// Starts the batch thread for `engine`. `item_shape` is one request's input shape
    /// without the batch dimension (e.g. `[3, 256, 256]`); `max_batch` is capped at 1 when
    /// the model's batch dimension is fixed.
    pub fn start(
        engine: Box<dyn InferenceEngine>,
        item_shape: &[usize],
        max_batch: usize,
        window: Duration,
    ) -> Result<Batcher, EngineError> {
        let model = engine.model().to_path_buf();
        let declared = engine.input_shape();
        let max_batch = match declared.first() {
            Some(&d) if d < 0 => max_batch.max(1),
            _ => 1,
        };
        let shape_ok = declared.len() == item_shape.len() + 1
            && declared[1..]
                .iter()
                .zip(item_shape)
                .all(|(&d, &want)| d < 0 || d as usize == want);
        if !shape_ok {
            return Err(EngineError::Model {
                path: model,
                reason: format!(
                    "input shape {declared:?} does not fit the configured input [N, {}]",
                    item_shape
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                slots: Vec::new(),
                shutdown: false,
                batches: 0,
                items: 0,
                engine: Duration::ZERO,
                queued: Duration::ZERO,
                slowest: Duration::ZERO,
            }),
            submitted: Condvar::new(),
            done: Condvar::new(),
            model,
            on_device: engine.on_device(),
            pads: engine.on_gpu(),
            graph: engine.cuda_graph(),
        });
        let item_shape = item_shape.to_vec();
        let s = shared.clone();
        let name = format!(
            "infer-{}",
            shared
                .model
                .file_stem()
                .and_then(|n| n.to_str())
                .unwrap_or("model")
        );
        let thread = std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || serve(&s, engine, &item_shape, max_batch, window))
            .map_err(|e| EngineError::Model {
                path: shared.model.clone(),
                reason: format!("cannot start the inference thread: {e}"),
            })?;
        Ok(Batcher {
            owner: Arc::new(Owner {
                shared,
                thread: Some(thread),
            }),
        })
    }

    /// A new client (one per stream's stage).
    pub fn client(&self) -> BatchClient {
        let mut st = self.owner.shared.lock();
        let index = match st.slots.iter().position(|s| !s.alive) {
            Some(i) => i,
            None => {
                st.slots.push(Slot::default());
                st.slots.len() - 1
            }
        };
        st.slots[index] = Slot {
            alive: true,
            ..Slot::default()
        };
        BatchClient {
            owner: self.owner.clone(),
            index,
            input: Vec::new(),
            output: Vec::new(),
            out_shape: Vec::new(),
        }
    }

    /// Whether the engine's calls replay a CUDA graph
    /// ([`crate::engine::EngineSettings::cuda_graph`], where the provider took it).
    pub fn cuda_graph(&self) -> bool {
        self.owner.shared.graph
    }

    /// Calls and requests so far.
    pub fn stats(&self) -> BatchStats {
        let st = self.owner.shared.lock();
        BatchStats {
            batches: st.batches,
            items: st.items,
            engine: st.engine,
            queued: st.queued,
            slowest: st.slowest,
        }
    }
}

/// The requests of the next call, into `members` (slot indices): of one kind, host tensors
/// or device buffers, the kind of the request that has waited longest, and of that kind the
/// oldest `max_batch`. (In slot order, a host request waited behind busy device clients, and
/// with more clients than `max_batch` the last slots waited behind the first.) Returns
/// whether they are device requests. `by_age` is scratch space.
fn pick(
    slots: &[Slot],
    max_batch: usize,
    by_age: &mut Vec<(Option<Instant>, usize)>,
    members: &mut Vec<usize>,
) -> bool {
    by_age.clear();
    by_age.extend(
        slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.state, SlotState::Submitted))
            .map(|(i, s)| (s.since, i)),
    );
    by_age.sort_unstable();
    let device = by_age
        .first()
        .is_some_and(|&(_, i)| slots[i].device.is_some());
    members.clear();
    members.extend(
        by_age
            .iter()
            .map(|&(_, i)| i)
            .filter(|&i| slots[i].device.is_some() == device)
            .take(max_batch),
    );
    device
}

fn serve(
    shared: &Shared,
    mut engine: Box<dyn InferenceEngine>,
    item_shape: &[usize],
    max_batch: usize,
    window: Duration,
) {
    let item_len: usize = item_shape.iter().product();
    let mut batch_in: Vec<f32> = Vec::new();
    let mut batch_out: Vec<f32> = Vec::new();
    let mut shape = Vec::with_capacity(item_shape.len() + 1);
    let mut members: Vec<usize> = Vec::with_capacity(max_batch);
    let mut items: Vec<DeviceItem> = Vec::with_capacity(max_batch);
    // The waiting requests, oldest first: (submitted at, slot).
    let mut by_age: Vec<(Option<Instant>, usize)> = Vec::new();
    loop {
        let mut st = shared.lock();
        // Wait for a first request.
        while !st.shutdown
            && !st
                .slots
                .iter()
                .any(|s| matches!(s.state, SlotState::Submitted))
        {
            st = shared.submitted.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.shutdown {
            return;
        }
        // Give the other live clients up to `window` to join.
        let deadline = Instant::now() + window;
        let mut live;
        loop {
            let waiting;
            (live, waiting) = st.slots.iter().fold((0, 0), |(l, w), s| {
                (
                    l + usize::from(s.alive),
                    w + usize::from(matches!(s.state, SlotState::Submitted)),
                )
            });
            let now = Instant::now();
            if waiting >= live.min(max_batch) || now >= deadline || st.shutdown {
                break;
            }
            st = shared
                .submitted
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let device = pick(&st.slots, max_batch, &mut by_age, &mut members);
        batch_in.clear();
        items.clear();
        let start = Instant::now();
        let mut queued = Duration::ZERO;
        for &i in &members {
            let slot = &mut st.slots[i];
            slot.state = SlotState::Running;
            queued += slot.since.map_or(Duration::ZERO, |t| start - t);
            match slot.device {
                Some(item) => items.push(item),
                None => batch_in.extend_from_slice(&slot.input),
            }
        }
        drop(st);
        let n = members.len();
        shape.clear();
        shape.push(n);
        shape.extend_from_slice(item_shape);
        // A call on a GPU engine always has as many rows as this batcher has clients (at most
        // `max_batch`), padded where fewer came: the clients come and go only when a
        // pipeline starts or switches, so the model sees one input shape. On an H100, ONNX
        // Runtime's CUDA provider made a call 30-60 times slower whenever the batch size
        // changed from the previous call (a detector batched across 8 streams: 72 ms per
        // call instead of 2.3; docs/cuda.md). A CPU engine runs the requests that came.
        let rows = if shared.pads {
            live.min(max_batch).max(n)
        } else {
            n
        };
        let t0 = Instant::now();
        let result = if device {
            engine
                .run_device(&items, item_shape, rows)
                .map(|mut one| {
                    // Report the batch's shape, as the host path does.
                    one[0] = n;
                    one
                })
                .map_err(|e| e.to_string())
        } else if batch_in.len() != n * item_len {
            Err(format!(
                "request size {} does not match the input shape {shape:?}",
                batch_in.len()
            ))
        } else {
            // Padding rows of zeros (the buffer keeps its size once grown).
            batch_in.resize(rows * item_len, 0.0);
            shape[0] = rows;
            engine
                .run(&batch_in, &shape, &mut batch_out)
                .map(|mut out| {
                    // Report the requests' batch, as the device path does.
                    if out.first() == Some(&rows) {
                        out[0] = n;
                    }
                    out
                })
                .map_err(|e| e.to_string())
        };
        let took = t0.elapsed();
        let mut st = shared.lock();
        st.engine += took;
        st.queued += queued;
        st.slowest = st.slowest.max(took);
        st.batches += 1;
        st.items += n as u64;
        for (k, &i) in members.iter().enumerate() {
            let slot = &mut st.slots[i];
            slot.state = match &result {
                Ok(out_shape) if out_shape.first() == Some(&n) => {
                    if !device {
                        let per = batch_out.len() / rows;
                        slot.output.clear();
                        slot.output
                            .extend_from_slice(&batch_out[k * per..(k + 1) * per]);
                    }
                    slot.out_shape.clear();
                    slot.out_shape.push(1);
                    slot.out_shape.extend_from_slice(&out_shape[1..]);
                    SlotState::Done(None)
                }
                Ok(out_shape) => SlotState::Done(Some(format!(
                    "output shape {out_shape:?} has no batch dimension of {n}"
                ))),
                Err(e) => SlotState::Done(Some(e.clone())),
            };
        }
        drop(st);
        shared.done.notify_all();
    }
}

impl BatchClient {
    /// The input buffer of the next request, resized to `len` (stays allocated).
    pub fn input(&mut self, len: usize) -> &mut [f32] {
        self.input.resize(len, 0.0);
        &mut self.input
    }

    /// Whether the model's engine takes device buffers ([`run_device`](Self::run_device)):
    /// it runs on a GPU provider with device I/O binding.
    pub fn on_device(&self) -> bool {
        self.owner.shared.on_device
    }

    /// Runs the request whose input [`input`](Self::input) holds, waiting for its batch;
    /// returns the output and its shape (batch dimension 1).
    pub fn run(&mut self) -> Result<(&[f32], &[usize]), EngineError> {
        self.submit(None)?;
        Ok((&self.output, &self.out_shape))
    }

    /// Runs one request whose input and output are in device memory (see [`DeviceItem`];
    /// the writes to its input must have finished: wait for their stream first), batched
    /// with the other streams' device requests; returns when the output is written, with
    /// its shape (batch dimension 1). Fails unless [`on_device`](Self::on_device).
    pub fn run_device(&mut self, item: DeviceItem) -> Result<&[usize], EngineError> {
        self.submit(Some(item))?;
        Ok(&self.out_shape)
    }

    /// Submits the request (the host input, or `device`) and waits for its result.
    fn submit(&mut self, device: Option<DeviceItem>) -> Result<(), EngineError> {
        let err = |reason: String| EngineError::Run {
            path: self.owner.shared.model.clone(),
            reason,
        };
        let mut st = self.owner.shared.lock();
        if st.shutdown {
            return Err(err("the inference thread has stopped".into()));
        }
        {
            let slot = &mut st.slots[self.index];
            std::mem::swap(&mut slot.input, &mut self.input);
            slot.device = device;
            slot.state = SlotState::Submitted;
            slot.since = Some(Instant::now());
        }
        self.owner.shared.submitted.notify_all();
        loop {
            if let SlotState::Done(_) = st.slots[self.index].state {
                break;
            }
            if st.shutdown {
                return Err(err("the inference thread has stopped".into()));
            }
            st = self
                .owner
                .shared
                .done
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
        let slot = &mut st.slots[self.index];
        std::mem::swap(&mut slot.input, &mut self.input);
        std::mem::swap(&mut slot.output, &mut self.output);
        std::mem::swap(&mut slot.out_shape, &mut self.out_shape);
        let failure = match std::mem::take(&mut slot.state) {
            SlotState::Done(e) => e,
            _ => None,
        };
        drop(st);
        match failure {
            Some(e) => Err(err(e)),
            None => Ok(()),
        }
    }
}

impl Drop for BatchClient {
    fn drop(&mut self) {
        let mut st = self.owner.shared.lock();
        let slot = &mut st.slots[self.index];
        slot.alive = false;
        // A request in flight is unpacked into a slot nobody reads; it is reset on reuse.
        drop(st);
        self.owner.shared.submitted.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Adds the batch index offset to nothing: output = input * 2, and records batch sizes.
    struct Doubler {
        shape: Vec<i64>,
        sizes: Arc<Mutex<Vec<usize>>>,
    }

    impl InferenceEngine for Doubler {
        fn run(
            &mut self,
            input: &[f32],
            shape: &[usize],
            out: &mut Vec<f32>,
        ) -> Result<Vec<usize>, EngineError> {
            self.sizes.lock().unwrap().push(shape[0]);
            std::thread::sleep(Duration::from_millis(2));
            out.clear();
            out.extend(input.iter().map(|v| v * 2.0));
            Ok(shape.to_vec())
        }
        fn input_shape(&self) -> &[i64] {
            &self.shape
        }
        fn model(&self) -> &Path {
            Path::new("doubler.onnx")
        }
    }

    /// A stand-in for a GPU engine: its "device pointers" are host pointers to `f32`s; it
    /// writes input * 3 to each item's output and records the batch sizes and the rows
    /// it was asked to run.
    struct DeviceTripler {
        sizes: Arc<Mutex<Vec<usize>>>,
        rows: Arc<Mutex<Vec<usize>>>,
        host_rows: Arc<Mutex<Vec<usize>>>,
    }

    impl InferenceEngine for DeviceTripler {
        fn run(
            &mut self,
            input: &[f32],
            shape: &[usize],
            out: &mut Vec<f32>,
        ) -> Result<Vec<usize>, EngineError> {
            self.host_rows.lock().unwrap().push(shape[0]);
            out.clear();
            out.extend(input.iter().map(|v| v * 2.0));
            Ok(shape.to_vec())
        }
        fn input_shape(&self) -> &[i64] {
            &[-1, 4]
        }
        fn model(&self) -> &Path {
            Path::new("tripler.onnx")
        }
        fn on_device(&self) -> bool {
            true
        }
        fn run_device(
            &mut self,
            items: &[DeviceItem],
            item_shape: &[usize],
            rows: usize,
        ) -> Result<Vec<usize>, EngineError> {
            self.rows.lock().unwrap().push(rows);
            self.sizes.lock().unwrap().push(items.len());
            std::thread::sleep(Duration::from_millis(2));
            for item in items {
                // SAFETY: the test's clients pass pointers to live `[f32; 4]` arrays that
                // they do not touch until their request returns.
                let (input, output) = unsafe {
                    (
                        std::slice::from_raw_parts(item.input as *const f32, item_shape[0]),
                        std::slice::from_raw_parts_mut(item.output as *mut f32, item.output_len),
                    )
                };
                for (o, i) in output.iter_mut().zip(input) {
                    *o = i * 3.0;
                }
            }
            Ok(vec![1, 4])
        }
    }

    #[test]
    fn device_requests_are_batched_apart_from_host_ones_and_answered_in_place() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let rows = Arc::new(Mutex::new(Vec::new()));
        let host_rows = Arc::new(Mutex::new(Vec::new()));
        let engine = DeviceTripler {
            sizes: sizes.clone(),
            rows: rows.clone(),
            host_rows: host_rows.clone(),
        };
        let b = Batcher::start(Box::new(engine), &[4], 8, Duration::from_millis(200)).unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|k| {
                let mut c = b.client();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    assert!(c.on_device());
                    barrier.wait();
                    for round in 0..5 {
                        let v = (k * 100 + round) as f32;
                        if k == 3 {
                            // One stream on the host path: its requests never join a
                            // device batch.
                            c.input(4).fill(v);
                            assert_eq!(c.run().unwrap().0, &[2.0 * v; 4]);
                            continue;
                        }
                        let input = [v; 4];
                        let mut output = [0.0f32; 4];
                        let item = DeviceItem {
                            input: input.as_ptr() as u64,
                            output: output.as_mut_ptr() as u64,
                            output_len: 4,
                        };
                        assert_eq!(c.run_device(item).unwrap(), &[1, 4]);
                        assert_eq!(output, [3.0 * v; 4], "client {k} round {round}");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let sizes = sizes.lock().unwrap();
        // 15 device requests in device calls, several per call; the 5 host ones elsewhere.
        assert_eq!(sizes.iter().sum::<usize>(), 15, "{sizes:?}");
        assert!(
            sizes.iter().any(|&n| n > 1),
            "no device batching: {sizes:?}"
        );
        // Every device call ran as many rows as the model had clients (4 while all were
        // alive, fewer once some had finished and dropped theirs), never fewer than its
        // requests: one shape while the clients stay.
        let rows = rows.lock().unwrap();
        assert_eq!(rows.first(), Some(&4), "{rows:?}");
        assert!(
            rows.iter()
                .zip(sizes.iter())
                .all(|(&r, &n)| n <= r && r <= 4),
            "rows {rows:?} for requests {sizes:?}"
        );
        // The host requests to this GPU engine were padded the same way (their answers,
        // checked above, are the requests' own rows).
        let host_rows = host_rows.lock().unwrap();
        assert_eq!(host_rows.first(), Some(&4), "{host_rows:?}");
        assert_eq!(b.stats().items, 20);
    }

    #[test]
    fn a_host_engine_refuses_device_requests_by_name() {
        let (b, _) = batcher(-1, 1);
        let mut c = b.client();
        assert!(!c.on_device());
        let (input, mut output) = ([1.0f32; 4], [0.0f32; 4]);
        let e = c
            .run_device(DeviceItem {
                input: input.as_ptr() as u64,
                output: output.as_mut_ptr() as u64,
                output_len: 4,
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("doubler.onnx") && e.contains("host"), "{e}");
        // The client goes on working on the host.
        c.input(4).fill(1.0);
        assert_eq!(c.run().unwrap().0, &[2.0; 4]);
    }

    fn batcher(batch_dim: i64, window_ms: u64) -> (Batcher, Arc<Mutex<Vec<usize>>>) {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let engine = Doubler {
            shape: vec![batch_dim, 4],
            sizes: sizes.clone(),
        };
        let b =
            Batcher::start(Box::new(engine), &[4], 8, Duration::from_millis(window_ms)).unwrap();
        (b, sizes)
    }

    #[test]
    fn a_call_takes_the_oldest_requests_of_the_oldest_requests_kind() {
        let t0 = Instant::now();
        let at = |ms: u64| Some(t0 + Duration::from_millis(ms));
        let item = DeviceItem {
            input: 0,
            output: 0,
            output_len: 0,
        };
        let slot = |since, device: bool, state| Slot {
            alive: true,
            since,
            device: device.then_some(item),
            state,
            ..Slot::default()
        };
        let submitted = || SlotState::Submitted;
        // Slots 0-3 host, 4-5 device; slot 2 idle. Oldest first: 5 (device), 3, 4, 1, 0.
        let slots = vec![
            slot(at(50), false, submitted()),
            slot(at(40), false, submitted()),
            slot(at(1), false, SlotState::Idle),
            slot(at(20), false, submitted()),
            slot(at(30), true, submitted()),
            slot(at(10), true, submitted()),
        ];
        let (mut by_age, mut members) = (Vec::new(), Vec::new());
        // The oldest is a device request: the device ones, oldest first.
        assert!(pick(&slots, 8, &mut by_age, &mut members));
        assert_eq!(members, [5, 4]);
        // Without the device ones: the host ones, the two oldest of three (not slots 0, 1).
        let host: Vec<Slot> = slots
            .into_iter()
            .map(|mut s| {
                if s.device.is_some() {
                    s.state = SlotState::Running;
                }
                s
            })
            .collect();
        assert!(!pick(&host, 2, &mut by_age, &mut members));
        assert_eq!(members, [3, 1]);
    }

    #[test]
    fn every_client_gets_its_own_result() {
        let (b, sizes) = batcher(-1, 200);
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|k| {
                let mut c = b.client();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    for round in 0..5 {
                        let v = (k * 100 + round) as f32;
                        c.input(4).fill(v);
                        let (out, shape) = c.run().unwrap();
                        assert_eq!(shape, &[1, 4]);
                        assert_eq!(out, &[2.0 * v; 4], "client {k} round {round}");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        // With four clients in lock step and a generous window, calls carry several requests.
        assert!(
            sizes.iter().any(|&n| n > 1),
            "no batching happened: {sizes:?}"
        );
        assert_eq!(b.stats().items, 20);
    }

    #[test]
    fn fixed_batch_models_run_one_request_at_a_time() {
        let (b, sizes) = batcher(1, 50);
        let handles: Vec<_> = (0..3)
            .map(|k| {
                let mut c = b.client();
                std::thread::spawn(move || {
                    c.input(4).fill(k as f32);
                    assert_eq!(c.run().unwrap().0, &[2.0 * k as f32; 4]);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(sizes.lock().unwrap().iter().all(|&n| n == 1));
    }

    #[test]
    fn a_single_client_does_not_wait_for_absent_ones() {
        // A window of an hour: the test would hang if a lone client waited for it.
        let (b, _) = batcher(-1, 3_600_000);
        let mut c = b.client();
        c.input(4).fill(1.0);
        assert_eq!(c.run().unwrap().0, &[2.0; 4]);
        // A second client that never submits, then goes away: the first still is not held.
        drop(b.client());
        c.input(4).fill(3.0);
        assert_eq!(c.run().unwrap().0, &[6.0; 4]);
    }

    #[test]
    fn wrong_request_size_and_wrong_model_shape_are_errors() {
        let (b, _) = batcher(-1, 1);
        let mut c = b.client();
        // The client keeps the batch thread alive on its own.
        drop(b);
        c.input(3).fill(1.0);
        let e = c.run().err().unwrap().to_string();
        assert!(
            e.contains("doubler.onnx") && e.contains("request size 3"),
            "{e}"
        );
        let engine = Doubler {
            shape: vec![1, 5],
            sizes: Default::default(),
        };
        let e = Batcher::start(Box::new(engine), &[4], 8, Duration::ZERO)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("[1, 5]") && e.contains("[N, 4]"), "{e}");
    }
}
