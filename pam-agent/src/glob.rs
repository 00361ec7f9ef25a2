//! The crate's one `*` wildcard: a star stands for any run of characters (possibly empty,
//! dots and slashes included); everything else is literal and case-sensitive, like
//! PostgreSQL's catalog names and cgroup paths. Policy rules (tables, functions, cgroups,
//! executables) and masking selectors and column patterns all use it, so a pattern means
//! the same wherever an operator writes it. (Masking's `schema.table.column` patterns cut
//! at the dots first, so there a star stays inside its part.)

/// Whether `text` matches `pattern`.
///
/// The pattern is cut at its stars: the piece before the first star must start the text, the
/// piece after the last star must end it, and the pieces between must appear in order. Taking
/// the leftmost occurrence of each middle piece is always safe, so this never backtracks:
/// linear in the text for a fixed pattern, whatever a hostile table name looks like.
pub(crate) fn matches(pattern: &str, text: &str) -> bool {
    let (Some(first), Some(last)) = (pattern.find('*'), pattern.rfind('*')) else {
        return pattern == text;
    };
    let head = &pattern[..first];
    let tail = &pattern[last + 1..];
    if text.len() < head.len() + tail.len() || !text.starts_with(head) || !text.ends_with(tail) {
        return false;
    }
    let mut middle = &text[head.len()..text.len() - tail.len()];
    let inner = pattern.get(first + 1..last).unwrap_or("");
    for piece in inner.split('*').filter(|p| !p.is_empty()) {
        match middle.find(piece) {
            Some(at) => middle = &middle[at + piece.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::matches;
    use proptest::prelude::*;

    #[test]
    fn literal_patterns_match_only_themselves() {
        assert!(matches("email", "email"));
        assert!(!matches("email", "emails"));
        assert!(!matches("public.orders", "public.orders2"));
        assert!(
            !matches("Email", "email"),
            "case-sensitive, like catalog names"
        );
        assert!(matches("", ""));
        assert!(!matches("", "x"));
    }

    #[test]
    fn a_star_is_any_run_including_empty_dots_and_slashes() {
        assert!(matches("*", ""));
        assert!(matches("*", "anything.at/all"));
        assert!(matches("public.*", "public.orders"));
        assert!(matches("public.*", "public."));
        assert!(!matches("public.*", "secret.orders"));
        assert!(matches("*.orders", "sales.orders"));
        assert!(matches("*", "a.b.c"), "policy table globs cross dots");
        assert!(matches("cust*", "customers"));
        assert!(matches("*_ssn", "employee_ssn"));
        assert!(!matches("*_ssn", "ssn"));
        assert!(matches("/crew.slice/*", "/crew.slice/w1.service"));
        assert!(matches("/usr/bin/python3*", "/usr/bin/python3.11"));
    }

    #[test]
    fn pieces_between_stars_appear_in_order_without_overlap() {
        assert!(matches("a*b*c", "abc"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("a*b*c", "axxbyy"));
        assert!(!matches("a*b*c", "acb"));
        assert!(matches("ab*ab", "abab"));
        assert!(
            !matches("ab*ab", "aba"),
            "head and tail may not share characters"
        );
        assert!(matches("a**b", "ab"));
        assert!(matches("*aa*aa*", "aaaa"));
        assert!(!matches("*aa*aa*", "aaa"));
        assert!(matches("é*ü", "éxü"), "characters, not bytes");
    }

    /// The textbook definition, by recursion: the reference the fast matcher must agree with.
    fn reference(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => (0..=t.len()).any(|i| reference(rest, &t[i..])),
            Some((c, rest)) => t.first() == Some(c) && reference(rest, &t[1..]),
        }
    }

    proptest! {
        #[test]
        fn agrees_with_the_textbook_definition(p in "[ab.*]{0,8}", t in "[ab.]{0,10}") {
            prop_assert_eq!(matches(&p, &t), reference(p.as_bytes(), t.as_bytes()));
        }
    }
}
