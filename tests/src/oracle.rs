//! The masking tests' oracle: every form in which a protected value could be read back
//! from what a client received. Written here, sharing nothing with the agent's code, so a
//! bug in the agent's detectors cannot hide a leak from the tests.

/// The first form of `secret` found in `cell`: raw, reversed, spaced out or with its
/// separators dropped (also reversed), digits only, hex, base64.
pub fn leak_in(cell: &str, secret: &str) -> Option<&'static str> {
    let lower = cell.to_lowercase();
    let s = secret.to_lowercase();
    let rev: String = s.chars().rev().collect();
    let alnum = |t: &str| -> String { t.chars().filter(|c| c.is_alphanumeric()).collect() };
    let digits = |t: &str| -> String { t.chars().filter(|c| c.is_ascii_digit()).collect() };
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    let b64 = base64(secret.as_bytes());
    let (cell_alnum, s_alnum) = (alnum(&lower), alnum(&s));
    let s_alnum_rev: String = s_alnum.chars().rev().collect();
    let s_digits = digits(&s);
    let s_digits_rev: String = s_digits.chars().rev().collect();
    if lower.contains(&s) {
        Some("raw")
    } else if lower.contains(&rev) {
        Some("reversed")
    } else if cell_alnum.contains(&s_alnum) {
        Some("spaced out or separators dropped")
    } else if cell_alnum.contains(&s_alnum_rev) {
        Some("reversed, separators dropped")
    } else if s_digits.len() >= 7
        && (digits(cell).contains(&s_digits) || digits(cell).contains(&s_digits_rev))
    {
        Some("digits only")
    } else if lower.contains(&hex) {
        Some("hex")
    } else if cell.contains(b64.trim_end_matches('=')) {
        Some("base64")
    } else {
        None
    }
}

/// The first cell holding one of `secrets` in some form, and which form.
pub fn leak(cells: &[String], secrets: &[&str]) -> Option<(String, &'static str)> {
    cells.iter().find_map(|c| {
        secrets
            .iter()
            .find_map(|s| leak_in(c, s).map(|how| (c.clone(), how)))
    })
}

/// Standard base64 (RFC 4648).
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_form() {
        let s = "123-45-6789";
        assert_eq!(leak_in("x 123-45-6789", s), Some("raw"));
        assert_eq!(leak_in("9876-54-321", s), Some("reversed"));
        assert_eq!(
            leak_in("1 2 3 4 5 6 7 8 9", s),
            Some("spaced out or separators dropped")
        );
        assert_eq!(leak_in("313233", "123"), Some("hex"));
        assert_eq!(leak_in("MTIzLTQ1LTY3ODk=", s), Some("base64"));
        assert_eq!(leak_in("*******6789", s), None);
    }
}
