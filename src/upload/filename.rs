//! Client filenames made safe to show: metadata only, never a path.

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// A display name from a client's filename: the last path component, without
/// control characters or invisible format characters (Unicode category Cf:
/// bidi overrides such as U+202E, zero-width characters), at most 255
/// bytes; never used as a path.
pub fn sanitize_filename(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control() && c.general_category() != GeneralCategory::Format)
        .collect();
    let mut name = cleaned.trim().to_owned();
    if name.is_empty() || name == "." || name == ".." {
        return "file".to_owned();
    }
    if name.len() > 255 {
        let mut cut = 255;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::sanitize_filename;

    #[test]
    fn filenames_lose_paths_and_control_characters() {
        assert_eq!(sanitize_filename("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_filename("C:\\Users\\me\\photo.jpg"), "photo.jpg");
        assert_eq!(sanitize_filename("a\0b\r\n.txt"), "ab.txt");
        assert_eq!(sanitize_filename(".."), "file");
        assert_eq!(
            sanitize_filename("photo\u{202e}gnp.exe\u{200b}.png"),
            "photognp.exe.png"
        );
        assert_eq!(sanitize_filename("\u{feff}\u{2066}a\u{2069}.txt"), "a.txt");
        assert_eq!(sanitize_filename(""), "file");
        assert_eq!(sanitize_filename(&"é".repeat(200)).len(), 254);
    }
}
