//! `thumbnail`: decodes a base64 PNG or JPEG and returns a base64 PNG thumbnail that fits
//! in `size` x `size` pixels, keeping the aspect ratio.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jobhost_guest::{Handler, Job, JobError, export_handler};
use serde::{Deserialize, Serialize};

/// The job's payload.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Thumbnail {
    /// The source image, PNG or JPEG, base64-encoded.
    #[schemars(length(min = 1))]
    pub image: String,
    /// The largest side of the thumbnail, in pixels.
    #[schemars(range(min = 1, max = 1024))]
    pub size: u32,
}

/// The job's output.
#[derive(Serialize)]
pub struct Output {
    /// The thumbnail, PNG, base64-encoded.
    pub png: String,
    /// Its width.
    pub width: u32,
    /// Its height.
    pub height: u32,
}

struct ThumbnailHandler;

impl Handler for ThumbnailHandler {
    type Payload = Thumbnail;
    type Output = Output;
    const NAMES: &'static [&'static str] = &["thumbnail"];

    fn handle(job: Job<Thumbnail>) -> Result<Output, JobError> {
        let bytes = STANDARD
            .decode(job.payload.image.as_bytes())
            .map_err(|e| JobError::permanent(format!("image is not base64: {e}")))?;
        let source = image::load_from_memory(&bytes)
            .map_err(|e| JobError::permanent(format!("image is not a PNG or JPEG: {e}")))?;
        jobhost_guest::log::info(&format!("source is {}x{}", source.width(), source.height()));
        let size = job.payload.size;
        // Never upscale: an image that already fits keeps its size.
        let thumb = if source.width() <= size && source.height() <= size { source } else { source.thumbnail(size, size) };
        let mut png = std::io::Cursor::new(Vec::new());
        thumb
            .write_to(&mut png, image::ImageFormat::Png)
            .map_err(|e| JobError::permanent(format!("cannot encode the thumbnail: {e}")))?;
        Ok(Output {
            png: STANDARD.encode(png.into_inner()),
            width: thumb.width(),
            height: thumb.height(),
        })
    }
}

export_handler!(ThumbnailHandler);
