//! The types intake accepts: each MIME type with its category, the aliases
//! clients send for them, and the extensions whose category is known.

use super::Category;

/// Types accepted by their magic numbers, with their category.
pub(super) const BINARY_TYPES: &[(&str, Category)] = &[
    ("image/jpeg", Category::Image),
    ("image/png", Category::Image),
    ("image/gif", Category::Image),
    ("image/webp", Category::Image),
    ("image/tiff", Category::Image),
    ("image/bmp", Category::Image),
    ("image/heif", Category::Image),
    ("image/avif", Category::Image),
    ("image/jxl", Category::Image),
    ("image/vnd.microsoft.icon", Category::Image),
    ("video/mp4", Category::Video),
    ("video/x-m4v", Category::Video),
    ("video/x-matroska", Category::Video),
    ("video/webm", Category::Video),
    ("video/quicktime", Category::Video),
    ("video/x-msvideo", Category::Video),
    ("video/x-ms-wmv", Category::Video),
    ("video/mpeg", Category::Video),
    ("video/x-flv", Category::Video),
    ("application/pdf", Category::Document),
    ("application/rtf", Category::Document),
    ("application/msword", Category::Document),
    (
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        Category::Document,
    ),
    ("application/vnd.ms-excel", Category::Document),
    (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        Category::Document,
    ),
    ("application/vnd.ms-powerpoint", Category::Document),
    (
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        Category::Document,
    ),
    (
        "application/vnd.oasis.opendocument.text",
        Category::Document,
    ),
    (
        "application/vnd.oasis.opendocument.spreadsheet",
        Category::Document,
    ),
    (
        "application/vnd.oasis.opendocument.presentation",
        Category::Document,
    ),
    ("application/epub+zip", Category::Document),
];

/// Text documents: no magic number, so they are known by extension or
/// declared type, and must be valid UTF-8 throughout.
pub(super) const TEXT_TYPES: &[(&str, &[&str])] = &[
    ("text/plain", &["txt", "text"]),
    ("text/csv", &["csv"]),
    ("text/markdown", &["md", "markdown"]),
    ("application/json", &["json"]),
];

/// Extensions whose category is known, to catch a file named for one kind
/// of content that holds another.
pub(super) const EXTENSIONS: &[(&str, Category)] = &[
    ("jpg", Category::Image),
    ("jpeg", Category::Image),
    ("jpe", Category::Image),
    ("png", Category::Image),
    ("gif", Category::Image),
    ("webp", Category::Image),
    ("tif", Category::Image),
    ("tiff", Category::Image),
    ("bmp", Category::Image),
    ("heic", Category::Image),
    ("heif", Category::Image),
    ("avif", Category::Image),
    ("jxl", Category::Image),
    ("ico", Category::Image),
    ("mp4", Category::Video),
    ("m4v", Category::Video),
    ("mkv", Category::Video),
    ("webm", Category::Video),
    ("mov", Category::Video),
    ("avi", Category::Video),
    ("wmv", Category::Video),
    ("mpg", Category::Video),
    ("mpeg", Category::Video),
    ("flv", Category::Video),
    ("pdf", Category::Document),
    ("rtf", Category::Document),
    ("doc", Category::Document),
    ("docx", Category::Document),
    ("xls", Category::Document),
    ("xlsx", Category::Document),
    ("ppt", Category::Document),
    ("pptx", Category::Document),
    ("odt", Category::Document),
    ("ods", Category::Document),
    ("odp", Category::Document),
    ("epub", Category::Document),
    ("txt", Category::Document),
    ("text", Category::Document),
    ("csv", Category::Document),
    ("md", Category::Document),
    ("markdown", Category::Document),
    ("json", Category::Document),
];

/// The canonical name of a declared type: parameters dropped, lower
/// case, common aliases mapped onto the accepted name.
pub(super) fn normalize(declared: &str) -> String {
    let base = declared
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match base.as_str() {
        "image/jpg" | "image/pjpeg" => "image/jpeg".into(),
        "image/x-icon" => "image/vnd.microsoft.icon".into(),
        "image/heic" => "image/heif".into(),
        "video/x-mp4" | "video/m4v" => "video/mp4".into(),
        "application/x-pdf" => "application/pdf".into(),
        "text/rtf" => "application/rtf".into(),
        "text/x-markdown" => "text/markdown".into(),
        "text/json" => "application/json".into(),
        _ => base,
    }
}

/// Types that say nothing about the content.
pub(super) fn is_generic(declared: &str) -> bool {
    declared.is_empty()
        || declared == "application/octet-stream"
        || declared == "binary/octet-stream"
}

/// MP4 and M4V are the same container; either name fits either.
pub(super) fn same_type(a: &str, b: &str) -> bool {
    a == b || (matches!(a, "video/mp4" | "video/x-m4v") && matches!(b, "video/mp4" | "video/x-m4v"))
}

/// The extension of a filename, in lower case (a leading dot names no
/// extension).
pub(super) fn extension(filename: &str) -> Option<String> {
    let (stem, ext) = filename.rsplit_once('.')?;
    (!stem.is_empty()).then(|| ext.to_ascii_lowercase())
}

/// The category an extension names, when it names one.
pub(super) fn extension_category(ext: &str) -> Option<Category> {
    EXTENSIONS.iter().find(|(e, _)| *e == ext).map(|(_, c)| *c)
}
