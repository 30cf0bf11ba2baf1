//! The text of a PDF, every step held to bounds: objects loaded, bytes
//! inflated in all, pages read, and one deadline that the load and every
//! page look at. A file built to cost the server (millions of objects,
//! streams that each inflate to just under their bound, pages that each
//! take long to parse) stops at the first bound it meets.

use std::{cell::RefCell, collections::HashSet, time::Instant};

use lopdf::{DecompressError, Document, Object, ObjectId, Stream};

use super::extract::{ExtractError, cut};

/// Bytes one stream may inflate to, so a small compressed stream cannot
/// become gigabytes.
const MAX_PDF_STREAM_BYTES: usize = 8 * 1024 * 1024;

/// Bytes all the streams of a PDF that are read (object streams, page
/// contents, fonts' character maps) may inflate to together.
pub const MAX_PDF_INFLATED_BYTES: usize = 64 * 1024 * 1024;

/// Objects a PDF may have; a thousand-page book has some tens of thousands.
pub const MAX_PDF_OBJECTS: usize = 200_000;

/// Pages of a PDF read at most: past them the text is long enough to
/// describe, or the document is built to waste time.
const MAX_PDF_PAGES: usize = 2_000;

/// Why the budget stopped the work.
#[derive(Debug, Clone, Copy)]
enum Past {
    Deadline,
    Objects,
    Inflated,
    Stream,
}

impl From<Past> for ExtractError {
    fn from(past: Past) -> Self {
        ExtractError::Bound(match past {
            Past::Deadline => "extracting the document's text ran past its time bound".into(),
            Past::Objects => {
                format!("PDFs of more than {MAX_PDF_OBJECTS} objects cannot be described")
            }
            Past::Inflated => format!(
                "the PDF's streams inflate to more than {} MiB in all",
                MAX_PDF_INFLATED_BYTES / (1024 * 1024)
            ),
            Past::Stream => format!(
                "a stream of the PDF inflates to more than {} MiB",
                MAX_PDF_STREAM_BYTES / (1024 * 1024)
            ),
        })
    }
}

/// What one extraction may still spend.
#[derive(Debug)]
struct Budget {
    deadline: Instant,
    objects: usize,
    inflated: usize,
    past: Option<Past>,
}

impl Budget {
    fn time(&mut self) -> Result<(), Past> {
        if Instant::now() > self.deadline {
            self.past = Some(Past::Deadline);
        }
        self.past.map_or(Ok(()), Err)
    }

    /// Inflates a stream in place, counting what it became; a stream that
    /// is not compressed costs nothing it has not already cost as bytes of
    /// the file.
    fn inflate(&mut self, stream: &mut Stream) -> Result<(), Past> {
        if stream.dict.get(b"Filter").is_err() {
            return Ok(());
        }
        let cap = MAX_PDF_STREAM_BYTES.min(self.inflated);
        match stream.decompress_with_limit(cap) {
            Ok(()) => {
                self.inflated -= stream.content.len();
                Ok(())
            }
            Err(lopdf::Error::Decompress(DecompressError::MemoryLimitExceeded { .. })) => {
                let past = if cap < MAX_PDF_STREAM_BYTES {
                    Past::Inflated
                } else {
                    Past::Stream
                };
                self.past = Some(past);
                Err(past)
            }
            // A stream that does not decode has no text to give: emptied, so
            // that no page tries again.
            Err(_) => {
                stream.set_plain_content(Vec::new());
                Ok(())
            }
        }
    }

    /// Whether the load keeps `object` (see [`admit`]).
    fn admit(&mut self, object: &mut Object) -> bool {
        if self.time().is_err() {
            return false;
        }
        if self.objects == 0 {
            self.past = Some(Past::Objects);
            return false;
        }
        self.objects -= 1;
        if let Object::Stream(stream) = object {
            if stream.dict.has_type(b"ObjStm") {
                // Inflated here, under the budget; the loader then reads the
                // plain bytes.
                return self.inflate(stream).is_ok();
            }
            // Images carry no text: their bytes are not kept.
            if stream
                .dict
                .get(b"Subtype")
                .and_then(Object::as_name)
                .is_ok_and(|s| s == b"Image")
            {
                stream.set_content(Vec::new());
            }
        }
        true
    }
}

thread_local! {
    /// The budget of the load running on this thread. lopdf takes its
    /// object filter as a plain `fn`, which can hold no state; the load
    /// runs on the calling thread (lopdf's `rayon` feature is off), so the
    /// filter finds its budget here.
    static LOADING: RefCell<Option<Budget>> = const { RefCell::new(None) };
}

/// lopdf's object filter: each object the load reads is counted, the
/// clock is looked at, object streams are inflated under the budget; past
/// a bound, every further object is dropped (cheaply) and the load ends
/// with the bound named.
///
/// lopdf keeps the object it passed in, changed in place, for an object of
/// the file, and the returned one for an object of an object stream. Both
/// are the same object here; a stream (never inside an object stream) is
/// returned without its bytes, which are not copied for nothing.
fn admit(id: ObjectId, object: &mut Object) -> Option<(ObjectId, Object)> {
    LOADING.with_borrow_mut(|budget| {
        let budget = budget.as_mut()?;
        budget.admit(object).then(|| {
            let kept = match object {
                Object::Stream(stream) => {
                    Object::Stream(Stream::new(stream.dict.clone(), Vec::new()))
                }
                other => other.clone(),
            };
            (id, kept)
        })
    })
}

/// Puts the budget on this thread for one load and takes it back, however
/// the load ends.
struct Loading;

impl Loading {
    fn start(budget: Budget) -> Self {
        LOADING.set(Some(budget));
        Self
    }

    fn finish(self) -> Option<Budget> {
        LOADING.take()
    }
}

impl Drop for Loading {
    fn drop(&mut self) {
        LOADING.take();
    }
}

fn load(
    bytes: &[u8],
    budget: Budget,
    reconstruct: bool,
) -> (Result<Document, lopdf::Error>, Budget) {
    let options = lopdf::LoadOptions {
        filter: Some(admit),
        max_decompressed_size: Some(MAX_PDF_STREAM_BYTES),
        force_reconstruct: reconstruct,
        ..Default::default()
    };
    let deadline = budget.deadline;
    let loading = Loading::start(budget);
    let doc = Document::load_mem_with_options(bytes, options);
    let budget = loading.finish().unwrap_or(Budget {
        deadline,
        objects: 0,
        inflated: 0,
        past: Some(Past::Objects),
    });
    (doc, budget)
}

/// Whether the catalog leads to a page tree.
fn has_page_tree(doc: &Document) -> bool {
    doc.catalog()
        .and_then(|c| c.get_deref(b"Pages", doc))
        .and_then(Object::as_dict)
        .is_ok_and(|pages| pages.has(b"Kids"))
}

/// The text of a PDF, up to `max_chars` characters, giving up past
/// `deadline` or past a bound of objects or inflated bytes.
pub fn pdf_text(bytes: &[u8], max_chars: usize, deadline: Instant) -> Result<String, ExtractError> {
    let unreadable = |e: lopdf::Error| {
        ExtractError::Unsupported(format!("the PDF's text cannot be extracted: {e}"))
    };
    let budget = Budget {
        deadline,
        objects: MAX_PDF_OBJECTS,
        inflated: MAX_PDF_INFLATED_BYTES,
        past: None,
    };
    let (doc, mut budget) = load(bytes, budget, false);
    budget.time()?;
    let mut doc = doc.map_err(unreadable)?;
    // lopdf rebuilds a damaged file's cross-references only for loads
    // without a filter: asked here, under what is left of the budget.
    if !has_page_tree(&doc) && doc.xref_recovery != Some(lopdf::xref::XrefRecovery::Reconstructed) {
        drop(doc);
        budget.objects = MAX_PDF_OBJECTS;
        let (again, left) = load(bytes, budget, true);
        budget = left;
        budget.time()?;
        doc = again.map_err(unreadable)?;
    }
    let pages: Vec<ObjectId> = doc.page_iter().take(MAX_PDF_PAGES).collect();
    let mut inflated = HashSet::new();
    let mut text = String::new();
    let mut chars = 0;
    for (number, page) in (1..).zip(pages) {
        budget.time()?;
        inflate_page(&mut doc, page, &mut budget, &mut inflated)?;
        for chunk in doc
            .extract_text_chunks_with_limit(&[number], MAX_PDF_STREAM_BYTES)
            .into_iter()
            .flatten()
        {
            chars += chunk.chars().count();
            text.push_str(&chunk);
        }
        if chars >= max_chars {
            break;
        }
    }
    let text = cut(text.trim(), max_chars);
    if text.is_empty() {
        return Err(ExtractError::Unsupported(
            "the PDF has no text that can be extracted".into(),
        ));
    }
    Ok(text.to_owned())
}

/// Inflates, once each and under the budget, the streams the text of a
/// page is read from: its contents and its fonts' character maps. lopdf
/// then finds them plain, so a stream shown on every page is inflated once.
fn inflate_page(
    doc: &mut Document,
    page: ObjectId,
    budget: &mut Budget,
    inflated: &mut HashSet<ObjectId>,
) -> Result<(), Past> {
    let mut streams = doc.get_page_contents(page);
    if let Ok(fonts) = doc.get_page_fonts(page) {
        for font in fonts.values() {
            for key in [&b"ToUnicode"[..], b"Encoding"] {
                if let Ok(Object::Reference(id)) = font.get(key) {
                    streams.push(*id);
                }
            }
        }
    }
    for id in streams {
        if !inflated.insert(id) {
            continue;
        }
        if let Some(Object::Stream(stream)) = doc.objects.get_mut(&id) {
            budget.time()?;
            budget.inflate(stream)?;
        }
    }
    Ok(())
}

/// A PDF of `objects` (numbered from 1, the first the catalog) with a
/// correct cross-reference table: the smallest document the loader reads
/// whole. Built by the tests of this module and of the API alike, so both
/// hold the extraction to the same documents.
#[doc(hidden)]
pub fn assemble(objects: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::new();
    for (i, obj) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(obj);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for o in offsets {
        out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    /// A PDF of `objects` (the first the catalog) with its cross-references.
    fn pdf(objects: &[&str]) -> Vec<u8> {
        let objects: Vec<Vec<u8>> = objects.iter().map(|o| o.as_bytes().to_vec()).collect();
        assemble(&objects)
    }

    fn hello(objects_before: usize) -> Vec<u8> {
        let content = "BT /F1 12 Tf 72 720 Td (Hello there) Tj ET";
        let mut objects = vec![
            "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
            "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".into(),
            "<< /Type /Page /Parent 2 0 R /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>".into(),
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".into(),
            format!("<< /Length {} >>\nstream\n{content}\nendstream", content.len()),
        ];
        objects.extend((0..objects_before).map(|_| "null".to_string()));
        let refs: Vec<&str> = objects.iter().map(String::as_str).collect();
        pdf(&refs)
    }

    #[test]
    fn a_pdf_gives_its_text_and_too_many_objects_a_bound() {
        assert_eq!(pdf_text(&hello(0), 100, far()).unwrap(), "Hello there");
        match pdf_text(&hello(MAX_PDF_OBJECTS), 100, far()) {
            Err(ExtractError::Bound(detail)) => assert!(detail.contains("objects"), "{detail}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_is_not_a_pdf() {
        assert!(matches!(
            pdf_text(b"%PDF-1.7\nnothing else", 100, far()),
            Err(ExtractError::Unsupported(_))
        ));
    }

    #[test]
    fn a_deadline_already_past_stops_the_load() {
        let past = Instant::now() - Duration::from_millis(1);
        assert!(matches!(
            pdf_text(b"%PDF-1.7\n1 0 obj\nnull\nendobj\n", 100, past),
            Err(ExtractError::Bound(_))
        ));
    }

    #[test]
    fn the_load_leaves_no_budget_on_its_thread() {
        let _ = pdf_text(b"%PDF-1.7\n1 0 obj\nnull\nendobj\n", 100, far());
        assert!(LOADING.with_borrow(Option::is_none));
    }

    #[test]
    fn inflation_counts_against_the_total() {
        let mut budget = Budget {
            deadline: far(),
            objects: 1,
            inflated: 1000,
            past: None,
        };
        let mut plain = Stream::new(lopdf::Dictionary::new(), vec![b' '; 600]);
        plain.compress().unwrap();
        let mut again = plain.clone();
        assert!(budget.inflate(&mut plain).is_ok());
        assert_eq!((plain.content.len(), budget.inflated), (600, 400));
        assert!(matches!(budget.inflate(&mut again), Err(Past::Inflated)));
    }
}
