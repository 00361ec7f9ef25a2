//! `*` wildcards (any run of characters, possibly empty); everything else is literal and
//! case-sensitive, like PostgreSQL's catalog names.

/// Whether `text` matches `pattern`.
///
/// The pattern is cut at its stars: the piece before the first star must start the text, the
/// piece after the last star must end it, and the pieces between must appear in order. Taking
/// the leftmost occurrence of each middle piece is always safe, so this never backtracks.
pub fn matches(pattern: &str, text: &str) -> bool {
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

    #[test]
    fn literal_and_wildcards() {
        assert!(matches("email", "email"));
        assert!(!matches("email", "emails"));
        assert!(matches("*", ""));
        assert!(matches("*", "anything"));
        assert!(matches("cust*", "customers"));
        assert!(matches("*_ssn", "employee_ssn"));
        assert!(!matches("*_ssn", "ssn"));
        assert!(matches("a*b*c", "a-b-c"));
        assert!(matches("a*b*c", "abc"));
        assert!(!matches("a*b*c", "acb"));
        assert!(matches("ab*ab", "abab"));
        assert!(!matches("ab*ab", "aba"));
        assert!(matches("/crew.slice/*", "/crew.slice/w1.service"));
        assert!(!matches("Email", "email"));
    }
}
