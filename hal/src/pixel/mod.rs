//! Pure-Rust pixel plumbing for the video pipeline.
//!
//! Frames arrive from the decoder / camera as planar YUV 4:2:0 (NV12 or
//! I420) in pooled host buffers, and leave towards the models as packed
//! RGB24 or towards the encoder as YUV again. This module provides the small
//! set of operations the agent needs between those points — colour
//! conversion ([`convert`]), resizing ([`scale`]) and burning a timestamp
//! into the picture ([`overlay`], using the bitmap font in [`font`]) —
//! without pulling in a C library such as libyuv or swscale.
//!
//! Design rules shared by every function here:
//!
//! * **No allocation.** Every function reads caller-provided [`Plane`]s and
//!   writes into caller-provided [`PlaneMut`]s, so buffers can come from a
//!   pool and the hot path never touches the allocator.
//! * **Strides are honoured.** A plane is a byte slice plus a stride (bytes
//!   from the start of one row to the start of the next). Only the first
//!   `width` bytes of each row are read or written; padding bytes past the
//!   visible width are never modified. The last row does not need to be
//!   padded, i.e. a plane of `rows` rows needs at least
//!   `stride * (rows - 1) + row_bytes` bytes.
//! * **Validation up front, no panics.** Sizes are checked before any pixel
//!   is touched; a short buffer, a stride narrower than a row, or odd
//!   dimensions where 4:2:0 requires even ones yield a [`PixelError`] naming
//!   the plane and the sizes involved.
//! * **Integer fixed-point arithmetic** with rounding, in plain row loops
//!   over `chunks_exact` so LLVM can auto-vectorise them.
//! * **No `unsafe`.**

use std::fmt;

pub mod convert;
pub mod font;
pub mod overlay;
pub mod scale;

pub use convert::{
    copy_plane, i420_to_nv12, i420_to_rgb24, nv12_to_i420, nv12_to_rgb24, rgb24_to_i420,
    rgb24_to_nv12,
};
pub use overlay::{
    CODE_BLOCKS, draw_code_i420, draw_code_nv12, draw_text_i420, draw_text_nv12, read_code,
    text_size,
};
pub use scale::{scale_i420, scale_nv12, scale_plane, scale_plane_uv};

/// A read-only image plane: pixel bytes plus the row stride in bytes.
///
/// Row `r` starts at `data[r * stride]`. The width and height of the plane
/// are passed separately to each function, because the same buffer layout
/// is interpreted differently (e.g. the NV12 chroma plane holds `w / 2`
/// two-byte pixels per row).
#[derive(Clone, Copy, Debug)]
pub struct Plane<'a> {
    /// Pixel bytes, row-major.
    pub data: &'a [u8],
    /// Distance in bytes between the starts of consecutive rows.
    pub stride: usize,
}

impl<'a> Plane<'a> {
    /// Creates a plane view over `data` with the given row `stride` (bytes).
    pub const fn new(data: &'a [u8], stride: usize) -> Self {
        Self { data, stride }
    }
}

/// A writable image plane: pixel bytes plus the row stride in bytes.
///
/// See [`Plane`] for the layout. Functions writing into a `PlaneMut` only
/// touch the visible bytes of each row, never the padding after them.
#[derive(Debug)]
pub struct PlaneMut<'a> {
    /// Pixel bytes, row-major.
    pub data: &'a mut [u8],
    /// Distance in bytes between the starts of consecutive rows.
    pub stride: usize,
}

impl<'a> PlaneMut<'a> {
    /// Creates a writable plane view over `data` with the given row
    /// `stride` (bytes).
    pub const fn new(data: &'a mut [u8], stride: usize) -> Self {
        Self { data, stride }
    }

    /// Reborrows this plane as a shorter-lived writable view, so it can be
    /// passed to a function without giving it up.
    pub fn reborrow(&mut self) -> PlaneMut<'_> {
        PlaneMut {
            data: self.data,
            stride: self.stride,
        }
    }

    /// Returns a read-only view of this plane.
    pub fn as_plane(&self) -> Plane<'_> {
        Plane {
            data: self.data,
            stride: self.stride,
        }
    }
}

/// YCbCr colour matrix, always with limited ("TV") range: Y in 16..=235,
/// Cb/Cr in 16..=240. This is what H.264/H.265 cameras emit in practice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Matrix {
    /// ITU-R BT.601 (SD video; Kr = 0.299, Kb = 0.114).
    Bt601,
    /// ITU-R BT.709 (HD video; Kr = 0.2126, Kb = 0.0722).
    Bt709,
}

impl Matrix {
    /// The luma weights `(Kr, Kb)` defining this matrix (`Kg = 1 - Kr - Kb`).
    pub const fn kr_kb(self) -> (f64, f64) {
        match self {
            Matrix::Bt601 => (aegis_bt601::KR, aegis_bt601::KB),
            Matrix::Bt709 => (0.2126, 0.0722),
        }
    }
}

/// Errors reported by the pixel functions. All checks happen before any
/// output byte is written, so on error the outputs are untouched.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PixelError {
    /// A plane's stride is smaller than the number of bytes in one row.
    StrideTooSmall {
        /// Which plane, e.g. `"dst UV"`.
        plane: &'static str,
        /// The stride given, in bytes.
        stride: usize,
        /// Bytes needed per row.
        row_bytes: usize,
    },
    /// A plane's slice is too short for its stride, row size and row count.
    BufferTooSmall {
        /// Which plane, e.g. `"src Y"`.
        plane: &'static str,
        /// Length of the slice given.
        len: usize,
        /// Minimum length needed: `stride * (rows - 1) + row_bytes`.
        needed: usize,
        /// The stride given, in bytes.
        stride: usize,
        /// Bytes needed per row.
        row_bytes: usize,
        /// Number of rows.
        rows: usize,
    },
    /// 4:2:0 chroma subsampling requires even width and height.
    OddDimensions {
        /// Which frame, e.g. `"src frame"`.
        what: &'static str,
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
    },
    /// Scaling from an empty (zero-width or zero-height) source into a
    /// non-empty destination is impossible.
    EmptySource {
        /// Which plane.
        plane: &'static str,
        /// Source width in pixels.
        width: usize,
        /// Source height in pixels.
        height: usize,
    },
}

impl fmt::Display for PixelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PixelError::StrideTooSmall {
                plane,
                stride,
                row_bytes,
            } => write!(
                f,
                "{plane} plane: stride {stride} is smaller than the row size of {row_bytes} bytes"
            ),
            PixelError::BufferTooSmall {
                plane,
                len,
                needed,
                stride,
                row_bytes,
                rows,
            } => write!(
                f,
                "{plane} plane: buffer of {len} bytes is too short, need {needed} \
                 ({rows} rows of {row_bytes} bytes at stride {stride})"
            ),
            PixelError::OddDimensions {
                what,
                width,
                height,
            } => write!(
                f,
                "{what}: 4:2:0 needs even dimensions, got {width}x{height}"
            ),
            PixelError::EmptySource {
                plane,
                width,
                height,
            } => write!(
                f,
                "{plane} plane: cannot scale from an empty {width}x{height} source"
            ),
        }
    }
}

impl std::error::Error for PixelError {}

/// Checks that a plane with `len` bytes and `stride` can hold `rows` rows
/// of `row_bytes` bytes.
pub(crate) fn check_plane(
    plane: &'static str,
    len: usize,
    stride: usize,
    row_bytes: usize,
    rows: usize,
) -> Result<(), PixelError> {
    if rows == 0 || row_bytes == 0 {
        return Ok(());
    }
    if stride < row_bytes {
        return Err(PixelError::StrideTooSmall {
            plane,
            stride,
            row_bytes,
        });
    }
    let needed = stride
        .checked_mul(rows - 1)
        .and_then(|n| n.checked_add(row_bytes))
        .unwrap_or(usize::MAX);
    if len < needed {
        return Err(PixelError::BufferTooSmall {
            plane,
            len,
            needed,
            stride,
            row_bytes,
            rows,
        });
    }
    Ok(())
}

impl Plane<'_> {
    /// Validates this plane for `rows` rows of `row_bytes` bytes.
    pub(crate) fn check(
        &self,
        name: &'static str,
        row_bytes: usize,
        rows: usize,
    ) -> Result<(), PixelError> {
        check_plane(name, self.data.len(), self.stride, row_bytes, rows)
    }
}

impl PlaneMut<'_> {
    /// Validates this plane for `rows` rows of `row_bytes` bytes.
    pub(crate) fn check(
        &self,
        name: &'static str,
        row_bytes: usize,
        rows: usize,
    ) -> Result<(), PixelError> {
        check_plane(name, self.data.len(), self.stride, row_bytes, rows)
    }
}

/// Checks that a 4:2:0 frame has even dimensions.
pub(crate) fn check_even(
    what: &'static str,
    width: usize,
    height: usize,
) -> Result<(), PixelError> {
    if !width.is_multiple_of(2) || !height.is_multiple_of(2) {
        return Err(PixelError::OddDimensions {
            what,
            width,
            height,
        });
    }
    Ok(())
}

/// Iterates over the visible part (`row_bytes`) of the first `rows` rows.
/// The plane must have been validated with [`check_plane`].
pub(crate) fn rows(
    data: &[u8],
    stride: usize,
    row_bytes: usize,
    rows: usize,
) -> impl Iterator<Item = &[u8]> {
    data.chunks(stride.max(1))
        .take(rows)
        .map(move |r| &r[..row_bytes])
}

/// Mutable counterpart of [`rows`].
pub(crate) fn rows_mut(
    data: &mut [u8],
    stride: usize,
    row_bytes: usize,
    rows: usize,
) -> impl Iterator<Item = &mut [u8]> {
    data.chunks_mut(stride.max(1))
        .take(rows)
        .map(move |r| &mut r[..row_bytes])
}

/// Iterates over pairs of consecutive rows `(2i, 2i + 1)` for `pairs`
/// pairs. The plane must have been validated for `2 * pairs` rows, and
/// `row_bytes` must be non-zero.
pub(crate) fn row_pairs(
    data: &[u8],
    stride: usize,
    row_bytes: usize,
    pairs: usize,
) -> impl Iterator<Item = (&[u8], &[u8])> {
    data.chunks(2 * stride.max(1)).take(pairs).map(move |c| {
        let (a, b) = c.split_at(stride);
        (&a[..row_bytes], &b[..row_bytes])
    })
}

/// Mutable counterpart of [`row_pairs`].
pub(crate) fn row_pairs_mut(
    data: &mut [u8],
    stride: usize,
    row_bytes: usize,
    pairs: usize,
) -> impl Iterator<Item = (&mut [u8], &mut [u8])> {
    data.chunks_mut(2 * stride.max(1))
        .take(pairs)
        .map(move |c| {
            let (a, b) = c.split_at_mut(stride);
            (&mut a[..row_bytes], &mut b[..row_bytes])
        })
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Helpers shared by the pixel tests.

    /// Sentinel written into padding bytes; tests check it survives.
    pub const SENTINEL: u8 = 0xA5;

    pub use crate::rng::XorShift;

    /// A plane buffer with `pad` sentinel bytes after each row.
    pub struct Buf {
        pub data: Vec<u8>,
        pub stride: usize,
        pub row_bytes: usize,
        pub rows: usize,
    }

    impl Buf {
        /// Buffer whose visible bytes are filled by `f(x_byte, row)`.
        pub fn new(
            row_bytes: usize,
            rows: usize,
            pad: usize,
            mut f: impl FnMut(usize, usize) -> u8,
        ) -> Self {
            let stride = row_bytes + pad;
            let mut data = vec![SENTINEL; stride * rows];
            for r in 0..rows {
                for x in 0..row_bytes {
                    data[r * stride + x] = f(x, r);
                }
            }
            Buf {
                data,
                stride,
                row_bytes,
                rows,
            }
        }
        pub fn filled(row_bytes: usize, rows: usize, pad: usize, v: u8) -> Self {
            Self::new(row_bytes, rows, pad, |_, _| v)
        }
        pub fn random(row_bytes: usize, rows: usize, pad: usize, rng: &mut XorShift) -> Self {
            Self::new(row_bytes, rows, pad, |_, _| rng.byte())
        }
        pub fn plane(&self) -> super::Plane<'_> {
            super::Plane::new(&self.data, self.stride)
        }
        pub fn plane_mut(&mut self) -> super::PlaneMut<'_> {
            super::PlaneMut::new(&mut self.data, self.stride)
        }
        pub fn at(&self, x: usize, r: usize) -> u8 {
            assert!(x < self.row_bytes && r < self.rows);
            self.data[r * self.stride + x]
        }
        /// Panics if any padding byte differs from [`SENTINEL`].
        pub fn assert_padding_intact(&self) {
            for r in 0..self.rows {
                for x in self.row_bytes..self.stride {
                    assert_eq!(
                        self.data[r * self.stride + x],
                        SENTINEL,
                        "padding byte {x} of row {r} was modified"
                    );
                }
            }
        }
        /// Visible bytes only, row by row.
        pub fn visible(&self) -> Vec<u8> {
            let mut v = Vec::with_capacity(self.row_bytes * self.rows);
            for r in 0..self.rows {
                v.extend_from_slice(&self.data[r * self.stride..r * self.stride + self.row_bytes]);
            }
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_plane_accepts_unpadded_last_row() {
        // 3 rows of 4 bytes at stride 6: 6 + 6 + 4 = 16 bytes.
        assert!(check_plane("p", 16, 6, 4, 3).is_ok());
        let e = check_plane("src Y", 15, 6, 4, 3).unwrap_err();
        assert_eq!(
            e,
            PixelError::BufferTooSmall {
                plane: "src Y",
                len: 15,
                needed: 16,
                stride: 6,
                row_bytes: 4,
                rows: 3
            }
        );
        let msg = e.to_string();
        assert!(
            msg.contains("src Y") && msg.contains("15") && msg.contains("16"),
            "{msg}"
        );
    }

    #[test]
    fn check_plane_rejects_narrow_stride_and_overflow() {
        let e = check_plane("dst UV", 1000, 3, 4, 2).unwrap_err();
        assert!(matches!(
            e,
            PixelError::StrideTooSmall {
                plane: "dst UV",
                ..
            }
        ));
        assert!(e.to_string().contains("dst UV"));
        let e = check_plane("huge", 10, usize::MAX / 2, 4, 4).unwrap_err();
        assert!(matches!(
            e,
            PixelError::BufferTooSmall {
                needed: usize::MAX,
                ..
            }
        ));
        // Empty planes are always fine.
        assert!(check_plane("empty", 0, 0, 0, 10).is_ok());
        assert!(check_plane("empty", 0, 0, 10, 0).is_ok());
    }

    #[test]
    fn odd_dimension_message() {
        let e = check_even("src frame", 641, 480).unwrap_err();
        assert_eq!(
            e.to_string(),
            "src frame: 4:2:0 needs even dimensions, got 641x480"
        );
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        assert!(boxed.to_string().contains("641x480"));
    }

    #[test]
    fn row_pair_iteration_handles_short_last_row() {
        let data: Vec<u8> = (0..(5 * 3 + 2) as u8).collect(); // 4 rows of 2 bytes, stride 5
        let pairs: Vec<_> = row_pairs(&data, 5, 2, 2).collect();
        assert_eq!(
            pairs,
            vec![
                (&[0u8, 1][..], &[5u8, 6][..]),
                (&[10, 11][..], &[15, 16][..])
            ]
        );
    }
}
