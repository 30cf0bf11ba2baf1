//! What a file is, decided from its first bytes (magic numbers), reconciled
//! with the type the client declared and the file's extension.
//!
//! This file holds the decision; the types intake accepts (with their
//! aliases and extensions) and the UTF-8 check of text documents live
//! beside it.

mod types;
mod utf8;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use types::{
    BINARY_TYPES, TEXT_TYPES, extension, extension_category, is_generic, normalize, same_type,
};
pub use utf8::Utf8Stream;
use utf8::utf8_prefix_valid;

/// The categories the tier table caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Category {
    /// Photos and pictures.
    Image,
    /// PDF, office documents and text documents.
    Document,
    /// Videos.
    Video,
}

impl Category {
    /// The JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Document => "document",
            Self::Video => "video",
        }
    }
}

/// How many leading bytes the decision may look at.
pub const SNIFF_BYTES: usize = 64 * 1024;

/// The accepted type of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kind {
    /// Canonical MIME type, as stored and served.
    pub mime: &'static str,
    /// Its category.
    pub category: Category,
    /// Text documents must be valid UTF-8 to the last byte.
    pub text: bool,
}

/// Why a file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SniffError {
    /// A type intake does not accept, or content it cannot recognise.
    #[error("{0}")]
    Unsupported(String),
    /// The declared type or extension disagrees with the bytes.
    #[error("{0}")]
    Mismatch(String),
}

/// Decides a file's type from its first bytes (`head`, up to
/// [`SNIFF_BYTES`]; `complete` when the file is shorter), its declared
/// content type and its filename.
pub fn sniff(
    head: &[u8],
    complete: bool,
    declared: &str,
    filename: &str,
) -> Result<Kind, SniffError> {
    let declared = normalize(declared);
    let ext = extension(filename);
    let ext_category = ext.as_deref().and_then(extension_category);
    if let Some(found) = infer::get(head) {
        let mime = found.mime_type();
        let Some(&(mime, category)) = BINARY_TYPES.iter().find(|(m, _)| *m == mime) else {
            return Err(SniffError::Unsupported(format!(
                "files of type {mime} are not accepted"
            )));
        };
        if !is_generic(&declared) && !same_type(&declared, mime) {
            return Err(SniffError::Mismatch(format!(
                "declared as {declared}, but the content is {mime}"
            )));
        }
        if let Some(ext_category) = ext_category.filter(|c| *c != category) {
            return Err(SniffError::Mismatch(format!(
                "named as {} (.{}), but the content is {mime}",
                ext_category.as_str(),
                ext.unwrap_or_default()
            )));
        }
        return Ok(Kind {
            mime,
            category,
            text: false,
        });
    }
    // No magic number: only text documents remain.
    let by_ext = ext
        .as_deref()
        .and_then(|e| TEXT_TYPES.iter().find(|(_, exts)| exts.contains(&e)));
    let by_declared = TEXT_TYPES.iter().find(|(m, _)| *m == declared);
    let text = match (by_ext, by_declared) {
        (Some(e), Some(d)) if e.0 != d.0 && d.0 != "text/plain" => {
            return Err(SniffError::Mismatch(format!(
                "declared as {declared}, but named .{}",
                ext.unwrap_or_default()
            )));
        }
        (Some(t), _) if is_generic(&declared) || by_declared.is_some() => Some(t.0),
        (None, Some(t)) if ext_category.is_none() => Some(t.0),
        _ => None,
    };
    let Some(mime) = text else {
        if BINARY_TYPES.iter().any(|(m, _)| *m == declared) || ext_category.is_some() {
            return Err(SniffError::Mismatch(format!(
                "declared as {}, but the content is not",
                if is_generic(&declared) {
                    format!(".{}", ext.unwrap_or_default())
                } else {
                    declared
                }
            )));
        }
        return Err(SniffError::Unsupported(
            "unrecognised content: images, videos, PDF and office documents are known by their bytes, \
             text documents (txt, csv, md, json) by their name or type"
                .into(),
        ));
    };
    if !utf8_prefix_valid(head, complete) {
        return Err(SniffError::Unsupported(
            "text documents must be valid UTF-8".into(),
        ));
    }
    Ok(Kind {
        mime,
        category: Category::Document,
        text: true,
    })
}

/// The type an upload announces before any byte is seen (presigned
/// uploads): a specific declared type intake accepts, not contradicted by
/// the extension. The bytes are checked against it when the upload completes.
pub fn announced(declared: &str, filename: &str) -> Result<Kind, SniffError> {
    let declared = normalize(declared);
    let ext = extension(filename);
    let ext_category = ext.as_deref().and_then(extension_category);
    let kind = if let Some(&(mime, category)) = BINARY_TYPES.iter().find(|(m, _)| *m == declared) {
        Kind {
            mime,
            category,
            text: false,
        }
    } else if let Some(&(mime, _)) = TEXT_TYPES.iter().find(|(m, _)| *m == declared) {
        Kind {
            mime,
            category: Category::Document,
            text: true,
        }
    } else if is_generic(&declared) {
        return Err(SniffError::Unsupported(
            "declare the file's content type: the upload is signed for it".into(),
        ));
    } else {
        return Err(SniffError::Unsupported(format!(
            "files of type {declared} are not accepted"
        )));
    };
    if let Some(ext_category) = ext_category.filter(|c| *c != kind.category) {
        return Err(SniffError::Mismatch(format!(
            "declared as {}, but named as {} (.{})",
            kind.mime,
            ext_category.as_str(),
            ext.unwrap_or_default()
        )));
    }
    Ok(kind)
}

/// Every type intake accepts, in canonical form (what the OpenAPI
/// document lists as the values of a declared `content_type`).
pub fn accepted_types() -> impl Iterator<Item = &'static str> {
    BINARY_TYPES
        .iter()
        .map(|(m, _)| *m)
        .chain(TEXT_TYPES.iter().map(|(m, _)| *m))
}

/// The canonical form of a MIME type intake accepts (as [`Kind::mime`]),
/// for a type read back from storage of state.
pub fn canonical(mime: &str) -> Option<&'static str> {
    accepted_types().find(|m| *m == mime)
}

/// The type a stored file is served as: its own when it is one intake
/// accepts (none of them is a page, a script or a stylesheet a browser
/// would run), else `application/octet-stream`, so that a type no upload
/// path decided (HTML, SVG, …) is never handed to a browser as itself.
pub fn served_type(stored: &str) -> &'static str {
    canonical(stored).unwrap_or("application/octet-stream")
}

/// The category an upload will have, as far as its declared type and
/// filename tell before any byte is seen (a resumable upload at creation):
/// `None` when they say nothing; an error when they name a type intake does
/// not accept or contradict each other. The bytes decide later ([`sniff`]).
pub fn expected_category(declared: &str, filename: &str) -> Result<Option<Category>, SniffError> {
    if is_generic(&normalize(declared)) {
        return Ok(extension(filename).as_deref().and_then(extension_category));
    }
    announced(declared, filename).map(|kind| Some(kind.category))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0";
    const PDF: &[u8] = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n";
    /// An ELF header (infer needs 52 bytes or more).
    const ELF: &[u8] = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0>\0\x01\0\0\0\
        \0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

    #[test]
    fn only_accepted_types_are_served_as_themselves() {
        for accepted in accepted_types() {
            assert_eq!(served_type(accepted), accepted);
        }
        for active in [
            "text/html",
            "image/svg+xml",
            "application/xhtml+xml",
            "text/javascript",
            "",
        ] {
            assert_eq!(served_type(active), "application/octet-stream", "{active}");
        }
    }

    #[test]
    fn magic_numbers_decide_the_category() {
        let k = sniff(PNG, true, "image/png", "a.png").unwrap();
        assert_eq!((k.mime, k.category), ("image/png", Category::Image));
        let k = sniff(PDF, true, "application/octet-stream", "report.pdf").unwrap();
        assert_eq!(k.category, Category::Document);
        assert_eq!(
            sniff(PNG, true, "", "no-extension").unwrap().mime,
            "image/png"
        );
        assert_eq!(
            sniff(PNG, true, "image/png; charset=binary", "a.PNG")
                .unwrap()
                .mime,
            "image/png"
        );
    }

    #[test]
    fn a_declared_type_that_disagrees_is_a_mismatch() {
        assert!(matches!(
            sniff(PDF, true, "image/png", "x.png"),
            Err(SniffError::Mismatch(_))
        ));
        assert!(matches!(
            sniff(PDF, true, "application/pdf", "x.png"),
            Err(SniffError::Mismatch(_))
        ));
        assert!(matches!(
            sniff(b"just text", true, "image/jpeg", "x.jpg"),
            Err(SniffError::Mismatch(_))
        ));
    }

    #[test]
    fn executables_and_unknown_bytes_are_unsupported() {
        assert!(matches!(
            sniff(ELF, true, "image/jpeg", "cat.jpg"),
            Err(SniffError::Unsupported(_))
        ));
        assert!(matches!(
            sniff(b"PK\x03\x04\x14\0\0\0", true, "", "a.zip"),
            Err(SniffError::Unsupported(_))
        ));
        assert!(matches!(
            sniff(&[0xff, 0xfe, 0x00, 0x13], true, "", "blob"),
            Err(SniffError::Unsupported(_))
        ));
    }

    #[test]
    fn text_documents_need_a_text_name_or_type_and_utf8() {
        assert_eq!(
            sniff(b"a,b\n1,2\n", true, "text/csv", "t.csv")
                .unwrap()
                .mime,
            "text/csv"
        );
        assert_eq!(
            sniff(b"# Title\n", true, "", "README.md").unwrap().mime,
            "text/markdown"
        );
        assert_eq!(
            sniff("héllo".as_bytes(), true, "text/plain", "notes")
                .unwrap()
                .mime,
            "text/plain"
        );
        assert_eq!(
            sniff(b"{\"a\":1}", true, "text/plain", "d.json")
                .unwrap()
                .mime,
            "application/json"
        );
        assert!(matches!(
            sniff(b"\xff\xfe bad", true, "text/plain", "t.txt"),
            Err(SniffError::Unsupported(_))
        ));
        assert!(matches!(
            sniff(b"hello", true, "", "noext"),
            Err(SniffError::Unsupported(_))
        ));
        // A cut multi-byte character at the end of the head is fine when more follows.
        assert!(sniff(&"é".as_bytes()[..1], false, "text/plain", "t.txt").is_ok());
        assert!(sniff(&"é".as_bytes()[..1], true, "text/plain", "t.txt").is_err());
    }

    #[test]
    fn announced_types_need_a_specific_accepted_type() {
        assert_eq!(
            announced("video/mp4", "clip.mp4").unwrap().category,
            Category::Video
        );
        assert_eq!(announced("text/csv", "t.csv").unwrap().mime, "text/csv");
        assert!(matches!(
            announced("application/octet-stream", "x.png"),
            Err(SniffError::Unsupported(_))
        ));
        assert!(matches!(
            announced("application/zip", "x.zip"),
            Err(SniffError::Unsupported(_))
        ));
        assert!(matches!(
            announced("image/png", "x.pdf"),
            Err(SniffError::Mismatch(_))
        ));
    }
}

/// Properties over generated inputs (proptest), bounded to a few thousand
/// cases each so that they run with every `cargo test`.
#[cfg(test)]
mod fuzz {
    use proptest::{collection::vec, prelude::*};

    use super::*;

    /// Leading bytes that send `infer` down each of its parsers, or none.
    fn magic() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(Vec::new()),
            Just(b"\x89PNG\r\n\x1a\n".to_vec()),
            Just(b"\xff\xd8\xff".to_vec()),
            Just(b"GIF89a".to_vec()),
            Just(b"RIFF\0\0\0\0WEBP".to_vec()),
            Just(b"%PDF-".to_vec()),
            Just(b"\0\0\0\x18ftypmp42".to_vec()),
            Just(b"\0\0\0\x18ftypheic".to_vec()),
            Just(b"PK\x03\x04".to_vec()),
            Just(b"PK\x03\x04\x14\0\x06\0\x08\0\0\0!\0[Content_Types].xml".to_vec()),
            Just(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1".to_vec()),
            Just(b"{\\rtf1".to_vec()),
            Just(b"\x7fELF".to_vec()),
            Just(b"II*\0".to_vec()),
            Just(b"\xef\xbb\xbf".to_vec()),
        ]
    }

    fn declared() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("application/octet-stream".to_owned()),
            Just("image/png".to_owned()),
            Just("image/jpg".to_owned()),
            Just("text/csv; charset=utf-8".to_owned()),
            Just("application/json".to_owned()),
            Just("video/mp4".to_owned()),
            "[a-zA-Z]{1,12}/[a-zA-Z0-9.+-]{1,24}(;[ -~]{0,20})?",
            any::<String>(),
        ]
    }

    fn filename() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-zA-Z0-9 _-]{0,12}\\.(png|PNG|jpg|pdf|csv|txt|md|json|mp4|m4v|docx|xlsx|exe|tar\\.gz)",
            "\\.[a-z]{1,5}",
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(4000)))]

        /// Any bytes, type and name: an answer, never a panic; an accepted
        /// type is a canonical one, and a text document's bytes are UTF-8.
        #[test]
        fn sniff_answers_every_input_with_a_known_type_or_a_refusal(
            magic in magic(),
            rest in vec(any::<u8>(), 0..1500),
            complete in any::<bool>(),
            declared in declared(),
            filename in filename(),
        ) {
            let mut head = magic;
            head.extend(rest);
            if let Ok(kind) = sniff(&head, complete, &declared, &filename) {
                prop_assert_eq!(canonical(kind.mime), Some(kind.mime));
                if kind.text {
                    prop_assert_eq!(kind.category, Category::Document);
                    prop_assert!(utf8_prefix_valid(&head, complete));
                }
            }
            if let Ok(kind) = announced(&declared, &filename) {
                prop_assert_eq!(canonical(kind.mime), Some(kind.mime));
            }
            let _ = expected_category(&declared, &filename);
        }
    }
}
