//! Still images from files: a PNG decoded to packed RGB.
//!
//! Backgrounds (the virtual background stage, the synthetic scenes' backdrop) and reference
//! photos in tests come as PNG files; this module turns one into an [`RgbImage`] and nothing
//! more. It does not scale or convert to YCbCr (that is [`crate::pixel`]'s work) and it is
//! not on any per-frame path: images are loaded once, at pipeline build or test setup.

use std::path::Path;

/// An RGB image (8-bit, packed, no padding).
#[derive(Debug, Clone)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height * 3` bytes.
    pub data: Vec<u8>,
}

/// Errors loading a background image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// The PNG could not be decoded or has an unsupported layout.
    #[error("decoding {path}: {message}")]
    Decode {
        /// The file.
        path: String,
        /// What was wrong.
        message: String,
    },
}

/// Loads an 8-bit grey, grey+alpha, RGB or RGBA PNG as RGB.
pub fn load_png(path: &Path) -> Result<RgbImage, ImageError> {
    let p = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| ImageError::Io {
        path: p.clone(),
        source,
    })?;
    let dec_err = |message: String| ImageError::Decode {
        path: p.clone(),
        message,
    };
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| dec_err(e.to_string()))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| dec_err("image too large".into()))?;
    let mut buf = vec![0; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| dec_err(e.to_string()))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => return Err(dec_err(format!("unsupported colour type {other:?}"))),
    };
    let mut data = Vec::with_capacity(w * h * 3);
    for row in buf[..info.line_size * h].chunks_exact(info.line_size) {
        for px in row[..w * channels].chunks_exact(channels) {
            match channels {
                1 | 2 => data.extend_from_slice(&[px[0], px[0], px[0]]),
                _ => data.extend_from_slice(&px[..3]),
            }
        }
    }
    Ok(RgbImage {
        width: w,
        height: h,
        data,
    })
}
