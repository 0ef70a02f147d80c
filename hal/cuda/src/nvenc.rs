//! NVENC's run-time gate: whether this GPU has a hardware H.264/H.265 encoder, asked of
//! libnvidia-encode (loaded with libloading, own minimal bindings) by opening and closing an
//! encode session on the GPU's context. Data-centre GPUs such as the H100 and H200 have no
//! NVENC: the session is refused and the pipeline encodes on the CPU after its one download.
//!
//! Only the gate is built: an encoder that takes the device frames directly (register the
//! surface, map, encode, lock the bitstream) needs a GPU with NVENC to be tested on, which
//! the project's GPU machine does not have.
//!
//! Layouts follow NVIDIA's `nvEncodeAPI.h` (Video Codec SDK 9–13 agree on these two
//! structs; sizes asserted below). API version 12.0 is asked for; drivers serve older
//! versions than their own.

use std::ffi::c_void;

use crate::Gpu;

/// API 12.0: `NVENCAPI_MAJOR_VERSION | NVENCAPI_MINOR_VERSION << 24`.
const API_VERSION: u32 = 12;

const fn struct_version(v: u32) -> u32 {
    API_VERSION | (v << 16) | (0x7 << 28)
}

/// `NV_ENCODE_API_FUNCTION_LIST`: version, reserved, then 318 pointer slots (functions and
/// reserved entries).
#[repr(C)]
struct FunctionList {
    version: u32,
    reserved: u32,
    slots: [*mut c_void; 318],
}

/// Slots used (the header's order).
const SLOT_GET_ENCODE_GUID_COUNT: usize = 1;
const SLOT_DESTROY_ENCODER: usize = 27;
const SLOT_OPEN_ENCODE_SESSION_EX: usize = 29;

/// `NV_ENC_OPEN_ENCODE_SESSION_EX_PARAMS`.
#[repr(C)]
struct OpenSessionParams {
    version: u32,
    device_type: u32,
    device: *mut c_void,
    reserved: *mut c_void,
    api_version: u32,
    reserved1: [u32; 253],
    reserved2: [*mut c_void; 64],
}

const _: () = assert!(std::mem::size_of::<FunctionList>() == 2552);
const _: () = assert!(std::mem::size_of::<OpenSessionParams>() == 1552);

/// `NV_ENC_DEVICE_TYPE_CUDA`.
const DEVICE_TYPE_CUDA: u32 = 1;

/// What the NVENC gate found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nvenc {
    /// An encode session opened: the GPU encodes, `codecs` codecs.
    Present {
        /// Highest API version the driver serves, as (major, minor).
        driver_api: (u32, u32),
        /// Codecs the encoder offers (H.264, H.265, AV1 …).
        codecs: u32,
    },
    /// No hardware encoder here; why.
    Absent(String),
}

fn status_name(s: i32) -> &'static str {
    match s {
        1 => "NV_ENC_ERR_NO_ENCODE_DEVICE",
        2 => "NV_ENC_ERR_UNSUPPORTED_DEVICE",
        3 => "NV_ENC_ERR_INVALID_ENCODERDEVICE",
        4 => "NV_ENC_ERR_INVALID_DEVICE",
        5 => "NV_ENC_ERR_DEVICE_NOT_EXIST",
        10 => "NV_ENC_ERR_OUT_OF_MEMORY",
        15 => "NV_ENC_ERR_INVALID_VERSION",
        _ => "NVENC error",
    }
}

/// Asks the driver whether `gpu` has NVENC (opens and closes one encode session).
pub fn probe(gpu: &Gpu) -> Nvenc {
    // SAFETY: loading the driver's encode library runs its initialisers only.
    let lib = match unsafe { libloading::Library::new("libnvidia-encode.so.1") } {
        Ok(l) => l,
        Err(e) => return Nvenc::Absent(format!("libnvidia-encode.so.1 not installed: {e}")),
    };
    type MaxVersion = unsafe extern "C" fn(*mut u32) -> i32;
    type CreateInstance = unsafe extern "C" fn(*mut FunctionList) -> i32;
    type OpenSession = unsafe extern "C" fn(*mut OpenSessionParams, *mut *mut c_void) -> i32;
    type GuidCount = unsafe extern "C" fn(*mut c_void, *mut u32) -> i32;
    type Destroy = unsafe extern "C" fn(*mut c_void) -> i32;
    // SAFETY: the symbols have the SDK's documented signatures.
    let (max, create) = match unsafe {
        (
            lib.get::<MaxVersion>(b"NvEncodeAPIGetMaxSupportedVersion\0"),
            lib.get::<CreateInstance>(b"NvEncodeAPICreateInstance\0"),
        )
    } {
        (Ok(m), Ok(c)) => (*m, *c),
        _ => {
            return Nvenc::Absent(
                "libnvidia-encode.so.1 lacks the NvEncodeAPI entry points".into(),
            );
        }
    };
    let mut v = 0u32;
    // SAFETY: `v` is a valid out-pointer.
    unsafe { max(&mut v) };
    let driver_api = (v >> 4, v & 0xf);
    if driver_api < (12, 0) {
        return Nvenc::Absent(format!(
            "the driver serves NVENC API {}.{}, 12.0 is needed",
            driver_api.0, driver_api.1
        ));
    }
    let mut list = FunctionList {
        version: struct_version(2),
        reserved: 0,
        slots: [std::ptr::null_mut(); 318],
    };
    // SAFETY: `list` is the documented struct with its version set.
    let r = unsafe { create(&mut list) };
    let slot = |i: usize| list.slots[i];
    if r != 0 || slot(SLOT_OPEN_ENCODE_SESSION_EX).is_null() || slot(SLOT_DESTROY_ENCODER).is_null()
    {
        return Nvenc::Absent(format!("NvEncodeAPICreateInstance failed ({r})"));
    }
    // SAFETY: non-null slots of the list the driver filled hold these functions.
    let (open, count, destroy) = unsafe {
        (
            std::mem::transmute::<*mut c_void, OpenSession>(slot(SLOT_OPEN_ENCODE_SESSION_EX)),
            std::mem::transmute::<*mut c_void, GuidCount>(slot(SLOT_GET_ENCODE_GUID_COUNT)),
            std::mem::transmute::<*mut c_void, Destroy>(slot(SLOT_DESTROY_ENCODER)),
        )
    };
    if let Err(e) = gpu.ctx.bind_to_thread() {
        return Nvenc::Absent(format!("CUDA context: {e}"));
    }
    let mut params = OpenSessionParams {
        version: struct_version(1),
        device_type: DEVICE_TYPE_CUDA,
        device: gpu.ctx.cu_ctx().cast(),
        reserved: std::ptr::null_mut(),
        api_version: API_VERSION,
        reserved1: [0; 253],
        reserved2: [std::ptr::null_mut(); 64],
    };
    let mut encoder = std::ptr::null_mut();
    // SAFETY: documented call with initialised parameters and a valid out-pointer.
    let r = unsafe { open(&mut params, &mut encoder) };
    if r != 0 {
        if !encoder.is_null() {
            // SAFETY: the SDK asks for the handle to be destroyed after a failed open.
            unsafe { destroy(encoder) };
        }
        return Nvenc::Absent(format!(
            "this GPU has no NVENC: opening an encode session failed ({}, {r})",
            status_name(r)
        ));
    }
    let mut codecs = 0u32;
    // SAFETY: `encoder` is the open session; `codecs` a valid out-pointer.
    unsafe {
        if !slot(SLOT_GET_ENCODE_GUID_COUNT).is_null() {
            count(encoder, &mut codecs);
        }
        destroy(encoder);
    }
    Nvenc::Present { driver_api, codecs }
}

#[cfg(test)]
mod tests {
    #[test]
    fn struct_versions_follow_the_header_macro() {
        // NVENCAPI_STRUCT_VERSION(2) with API 12.0.
        assert_eq!(super::struct_version(2), 0x7002_000c);
        assert_eq!(super::struct_version(1), 0x7001_000c);
    }
}
