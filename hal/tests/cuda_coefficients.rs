//! The CUDA `rgb_to_nv12` kernel gets its BT.601 constants as `#define`s generated from
//! `aegis-bt601` (`aegis_bt601::cuda_constants`, checked against the consts by
//! `hal/cuda/tests/kernel_source.rs`). Applied the way `hal/cuda/src/kernels.cu` applies
//! them, those values must give exactly what this crate's `pixel::rgb24_to_nv12` gives, on
//! every RGB value. The device test (`hal/cuda/tests/kernels.rs`) then checks the kernel
//! itself against this crate's output.

use aegis_hal::pixel::{Matrix, Plane, PlaneMut, rgb24_to_nv12};

/// 4096² pixels: every 8-bit RGB triple exactly once (`r, g, b` = the index's three bytes),
/// and 4096²/4 different 2×2 blocks for the chroma.
const SIDE: usize = 4096;

fn every_colour() -> Vec<u8> {
    (0..SIDE * SIDE)
        .flat_map(|i| [(i >> 16) as u8, (i >> 8) as u8, i as u8])
        .collect()
}

/// The kernel's constants as NVRTC sees them: the generated `#define` values.
struct Defines {
    /// `BT601_YR` … `BT601_VB`.
    c: [i32; 9],
    // `BT601_SHIFT`, `BT601_Y_MIN`, `BT601_Y_MAX`, `BT601_C_MIN`, `BT601_C_MAX`, `BT601_C_ZERO`.
    shift: i32,
    y_min: i32,
    y_max: i32,
    c_min: i32,
    c_max: i32,
    c_zero: i32,
}

fn defines() -> Defines {
    let all = aegis_bt601::cuda_constants();
    let get = |name: &str| -> i32 {
        let v = &all
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{name} is not generated"))
            .1;
        v.trim_start_matches('(')
            .trim_end_matches(')')
            .parse()
            .unwrap_or_else(|e| panic!("{name} = {v}: {e}"))
    };
    let names = ["YR", "YG", "YB", "UR", "UG", "UB", "VR", "VG", "VB"];
    Defines {
        c: names.map(|n| get(&format!("BT601_{n}"))),
        shift: get("BT601_SHIFT"),
        y_min: get("BT601_Y_MIN"),
        y_max: get("BT601_Y_MAX"),
        c_min: get("BT601_C_MIN"),
        c_max: get("BT601_C_MAX"),
        c_zero: get("BT601_C_ZERO"),
    }
}

/// `rgb_to_nv12` of kernels.cu, on the host: luma per pixel, chroma from the 2×2 sums, fixed
/// point with two extra bits for the sums, with coefficients `c`.
fn kernel_formula(rgb: &[u8], d: &Defines, c: [i32; 9]) -> Vec<u8> {
    let [yr, yg, yb, ur, ug, ub, vr, vg, vb] = c;
    let (s, cs) = (d.shift, d.shift + 2);
    let (w, h) = (SIDE, SIDE);
    let mut out = vec![0u8; w * h * 3 / 2];
    let (y, uv) = out.split_at_mut(w * h);
    for cy in 0..h / 2 {
        for cx in 0..w / 2 {
            let (mut rs, mut gs, mut bs) = (0, 0, 0);
            for k in 0..4 {
                let (x, yy) = (2 * cx + (k & 1), 2 * cy + (k >> 1));
                let p = &rgb[3 * (yy * w + x)..][..3];
                let (r, g, b) = (i32::from(p[0]), i32::from(p[1]), i32::from(p[2]));
                let l = (yr * r + yg * g + yb * b + (d.y_min << s) + (1 << (s - 1))) >> s;
                y[yy * w + x] = l.clamp(d.y_min, d.y_max) as u8;
                rs += r;
                gs += g;
                bs += b;
            }
            let u = (ur * rs + ug * gs + ub * bs + (d.c_zero << cs) + (1 << (cs - 1))) >> cs;
            let v = (vr * rs + vg * gs + vb * bs + (d.c_zero << cs) + (1 << (cs - 1))) >> cs;
            uv[cy * w + 2 * cx] = u.clamp(d.c_min, d.c_max) as u8;
            uv[cy * w + 2 * cx + 1] = v.clamp(d.c_min, d.c_max) as u8;
        }
    }
    out
}

fn hal_nv12(rgb: &[u8]) -> Vec<u8> {
    let (w, h) = (SIDE, SIDE);
    let mut out = vec![0u8; w * h * 3 / 2];
    let (y, uv) = out.split_at_mut(w * h);
    rgb24_to_nv12(
        Plane::new(rgb, 3 * w),
        w,
        h,
        Matrix::Bt601,
        PlaneMut::new(y, w),
        PlaneMut::new(uv, w),
    )
    .expect("convert");
    out
}

fn differing(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

#[test]
fn cuda_coefficients_reproduce_the_cpu_conversion_on_every_colour() {
    let rgb = every_colour();
    let want = hal_nv12(&rgb);
    let k = defines();
    let c = k.c;
    let n = differing(&kernel_formula(&rgb, &k, c), &want);
    assert_eq!(n, 0, "{n} NV12 bytes differ with coefficients {c:?}");
    // The inputs are fine enough to see any coefficient off by one (so the comparison above
    // would catch a drifted copy of the formula).
    for i in 0..9 {
        for d in [-1, 1] {
            let mut off = c;
            off[i] += d;
            let n = differing(&kernel_formula(&rgb, &k, off), &want);
            assert!(n > 0, "coefficient {i} off by {d} went unnoticed");
        }
    }
}
