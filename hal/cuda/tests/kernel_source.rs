//! The kernel source NVRTC compiles takes its BT.601 constants from `aegis-bt601` only: no
//! GPU needed. `kernels.cu` must hold no literal copy of a coefficient, offset or clamp
//! bound, must use only the generated `BT601_*` names, and the generated `#define`s must
//! carry exactly the crate's consts (hal/tests/cuda_coefficients.rs then runs the kernel's
//! formula with those values against the CPU conversion on every RGB value).

use aegis_bt601::{RGB_TO_YUV, float};

/// The consts, spelled out here rather than taken from `cuda_constants()`, so a define that
/// drifted from its const (or was mapped to the wrong one) is caught.
fn expected() -> Vec<(&'static str, f64)> {
    let c = RGB_TO_YUV;
    let i = f64::from;
    vec![
        ("BT601_SHIFT", f64::from(aegis_bt601::SHIFT)),
        ("BT601_Y_MIN", i(aegis_bt601::Y_MIN)),
        ("BT601_Y_MAX", i(aegis_bt601::Y_MAX)),
        ("BT601_C_MIN", i(aegis_bt601::C_MIN)),
        ("BT601_C_MAX", i(aegis_bt601::C_MAX)),
        ("BT601_C_ZERO", i(aegis_bt601::C_ZERO)),
        ("BT601_YR", i(c.yr)),
        ("BT601_YG", i(c.yg)),
        ("BT601_YB", i(c.yb)),
        ("BT601_UR", i(c.ur)),
        ("BT601_UG", i(c.ug)),
        ("BT601_UB", i(c.ub)),
        ("BT601_VR", i(c.vr)),
        ("BT601_VG", i(c.vg)),
        ("BT601_VB", i(c.vb)),
        ("BT601_F_Y_MIN", f64::from(float::Y_MIN)),
        ("BT601_F_C_ZERO", f64::from(float::C_ZERO)),
        ("BT601_F_Y_SCALE", f64::from(float::Y_SCALE)),
        ("BT601_F_C_SCALE", f64::from(float::C_SCALE)),
        ("BT601_F_RV", f64::from(float::RV)),
        ("BT601_F_GU", f64::from(float::GU)),
        ("BT601_F_GV", f64::from(float::GV)),
        ("BT601_F_BU", f64::from(float::BU)),
    ]
}

/// `#define NAME VALUE` lines of `text`.
fn defines(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("#define "))
        .filter_map(|l| l.trim().split_once(char::is_whitespace))
        .map(|(n, v)| (n, v.trim()))
        .collect()
}

/// A C literal as `f64`: `(-123)`, `16`, `1.402f`, `1.1643835f`. A float literal is read
/// as `f32`, as C reads a literal with an `f` suffix.
fn c_value(v: &str) -> f64 {
    let v = v.trim_start_matches('(').trim_end_matches(')');
    match v.strip_suffix('f') {
        Some(f) => f64::from(f.parse::<f32>().unwrap_or_else(|e| panic!("{v}: {e}"))),
        None => v.parse::<i64>().unwrap_or_else(|e| panic!("{v}: {e}")) as f64,
    }
}

/// `kernels.cu` without comments.
fn code() -> String {
    aegis_cuda::KERNELS
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Identifiers of `code` that start with `BT601_`.
fn bt601_names(code: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("BT601_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Only whole identifiers (not `XBT601_…`).
        let whole = i == 0 || {
            let c = rest.as_bytes()[i - 1] as char;
            !(c.is_ascii_alphanumeric() || c == '_')
        };
        if whole {
            out.push(&tail[..end]);
        }
        rest = &tail[end..];
    }
    out
}

/// Numeric literals of `code`, with the text of each.
fn numbers(code: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let b = code.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let starts = b[i].is_ascii_digit()
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'));
        if !starts {
            i += 1;
            continue;
        }
        let s = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
            i += 1;
        }
        let text = &code[s..i];
        let digits = text.trim_end_matches(|c: char| "uUlLfF".contains(c));
        if let Ok(v) = digits.parse::<f64>() {
            out.push((text.to_string(), v));
        }
    }
    out
}

/// The body of the function `name` in `code` (from its first `{` to the matching `}`).
fn body<'a>(code: &'a str, name: &str) -> &'a str {
    let at = code
        .find(&format!(" {name}("))
        .unwrap_or_else(|| panic!("kernels.cu has no function {name}"));
    let open = at + code[at..].find('{').expect("a body");
    let mut depth = 0;
    for (k, c) in code[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &code[open..=open + k];
                }
            }
            _ => {}
        }
    }
    panic!("{name}: unbalanced braces")
}

#[test]
fn generated_defines_carry_the_bt601_consts() {
    let source = aegis_cuda::kernel_source();
    let got = defines(&source);
    for (name, want) in expected() {
        let hits: Vec<_> = got.iter().filter(|(n, _)| *n == name).collect();
        assert_eq!(hits.len(), 1, "{name} is defined {} times", hits.len());
        let v = c_value(hits[0].1);
        assert!(
            v == want,
            "{name} is {} in the kernel source, the const is {want}",
            hits[0].1
        );
    }
    // What NVRTC compiles starts with the constants, then the file as written.
    assert!(source.ends_with(aegis_cuda::KERNELS));
    assert!(source.starts_with(&aegis_bt601::cuda_defines()));
}

#[test]
fn kernels_use_only_generated_bt601_names() {
    let code = code();
    let generated: Vec<&str> = expected().iter().map(|(n, _)| *n).collect();
    // Names kernels.cu defines itself from the generated ones (never one of those).
    let local: Vec<&str> = defines(&code).iter().map(|(n, _)| *n).collect();
    for n in &local {
        assert!(
            !generated.contains(n),
            "kernels.cu defines {n} itself: it must come from aegis-bt601"
        );
    }
    let used = bt601_names(&code);
    for n in &used {
        assert!(
            generated.contains(n) || local.contains(n),
            "kernels.cu uses {n}, which aegis-bt601 does not generate"
        );
    }
    for n in &generated {
        assert!(
            used.contains(n),
            "{n} is generated but kernels.cu never uses it"
        );
    }
}

#[test]
fn kernels_carry_no_literal_bt601_value() {
    let code = code();
    // Every const's value, and the ratios the scales were written with (255/219, 255/224),
    // and Kr/Kb/Kg themselves. 16 is left out here (the mask upsample's fixed point uses it
    // too); the colour functions are checked literal by literal below.
    let mut forbidden: Vec<f64> = expected()
        .iter()
        .map(|(_, v)| *v)
        .filter(|v| *v != 16.0)
        .collect();
    forbidden.extend([219.0, 224.0, 0.299, 0.114, 0.587]);
    for (text, v) in numbers(&code) {
        assert!(
            !forbidden.contains(&v) && !forbidden.contains(&-v),
            "kernels.cu carries the literal {text}: BT.601 values come from aegis-bt601"
        );
    }
    // In the colour conversions, only indices, loop bounds and the 8-bit full scale.
    for f in ["yuv_to_rgb01", "rgb_to_nv12"] {
        for (text, v) in numbers(body(&code, f)) {
            assert!(
                [0.0, 1.0, 2.0, 3.0, 4.0, 255.0].contains(&v),
                "{f} carries the literal {text}: BT.601 values come from aegis-bt601"
            );
        }
    }
}

#[test]
fn the_checks_see_a_literal_copy() {
    // The helpers the tests above rest on find what they look for.
    let copy = "__device__ void f() { float r = y + 1.402f * v; int l = (yr * r) >> 16; }";
    let n: Vec<f64> = numbers(copy).into_iter().map(|(_, v)| v).collect();
    assert_eq!(n, [1.402, 16.0]);
    assert_eq!(
        bt601_names("x = BT601_YR + XBT601_YG * BT601_F_RV;"),
        ["BT601_YR", "BT601_F_RV"]
    );
    assert!(body(copy, "f").starts_with('{') && body(copy, "f").ends_with('}'));
    assert_eq!(c_value("(-11071)"), -11071.0);
    assert_eq!(c_value("1.402f"), f64::from(1.402f32));
}
