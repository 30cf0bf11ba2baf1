//! The request bodies the benches send intake: multipart/form-data streamed
//! in 1 MiB pieces (never copied whole), and file contents that its type
//! check accepts.

use bytes::Bytes;

/// One MiB.
pub const MIB: usize = 1024 * 1024;

/// A file type intake accepts: its name's ending, its media type and the
/// first bytes that make content look like it.
pub struct Kind {
    pub ext: &'static str,
    pub media_type: &'static str,
    pub header: &'static [u8],
}

impl Kind {
    /// An MP4 (`ftyp` box).
    pub const MP4: Kind = Kind {
        ext: "mp4",
        media_type: "video/mp4",
        header: b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom",
    };
    /// A PNG (signature and a 1 × 1 IHDR).
    pub const PNG: Kind = Kind {
        ext: "png",
        media_type: "image/png",
        header: b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89",
    };

    /// `len` bytes: this type's header, then random bytes.
    pub fn random(&self, len: usize) -> Bytes {
        let mut v = vec![0u8; len];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut v);
        v[..self.header.len()].copy_from_slice(self.header);
        Bytes::from(v)
    }
}

/// `files` as the parts named `field` of a multipart/form-data body, each
/// called `clip<i>.<ext>` of `kind`'s media type: the content type, the
/// length and the body.
pub fn form(field: &str, files: &[Bytes], kind: &Kind) -> (String, u64, reqwest::Body) {
    let boundary = "benchboundary7d3a";
    let mut pieces: Vec<Bytes> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        pieces.push(Bytes::from(format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"clip{i}.{}\"\r\nContent-Type: {}\r\n\r\n",
            kind.ext, kind.media_type
        )));
        for start in (0..f.len()).step_by(MIB) {
            pieces.push(f.slice(start..(start + MIB).min(f.len())));
        }
        pieces.push(Bytes::from_static(b"\r\n"));
    }
    pieces.push(Bytes::from(format!("--{boundary}--\r\n")));
    let len = pieces.iter().map(|p| p.len() as u64).sum();
    let stream = futures_util::stream::iter(pieces.into_iter().map(Ok::<_, std::io::Error>));
    (
        format!("multipart/form-data; boundary={boundary}"),
        len,
        reqwest::Body::wrap_stream(stream),
    )
}
