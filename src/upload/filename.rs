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
        // The cut may fall after a space: trimmed again, as the whole name was.
        name.truncate(name.trim_end().len());
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

    /// Found by the property below: a cut after a space left it at the end.
    #[test]
    fn a_long_name_cut_after_a_space_loses_the_space() {
        let raw = format!("{} {}", "a".repeat(254), "b".repeat(10));
        assert_eq!(sanitize_filename(&raw), "a".repeat(254));
    }
}

/// Properties over generated names (proptest, bounded to run with every
/// `cargo test`).
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

    use super::sanitize_filename;

    fn raw() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            // Paths, dots and spaces, in either separator.
            "[a-z./\\\\ ]{0,40}",
            // Long names, which are cut, with spaces where the cut falls.
            "[a-zé ]{200,300}",
            "[\\PC\\p{Cf}\\p{Cc} ]{0,300}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(10_000)))]

        /// A cleaned name is a name and nothing else: never empty, a dot
        /// or two, a path, a control or format character, space at either
        /// end, or more than 255 bytes; and cleaning it again changes nothing.
        #[test]
        fn a_cleaned_name_is_safe_and_stays_as_it_is(raw in raw()) {
            let name = sanitize_filename(&raw);
            prop_assert!(!name.is_empty() && name.len() <= 255, "{name:?}");
            prop_assert!(name != "." && name != "..");
            prop_assert!(!name.contains('/') && !name.contains('\\'));
            prop_assert!(name
                .chars()
                .all(|c| !c.is_control() && c.general_category() != GeneralCategory::Format));
            prop_assert_eq!(name.trim(), name.as_str());
            prop_assert_eq!(sanitize_filename(&name), name.clone());
        }
    }
}
