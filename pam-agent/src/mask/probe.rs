//! Whether one value (not a result row: a bound parameter, say) holds what masking
//! would hide, so the journal can withhold it.

use std::sync::LazyLock;

use super::{
    detect::{DetectScratch, Detectors},
    engine::Masker,
};

/// The built-in detectors, for sessions whose masking scans no content.
static BUILT_IN: LazyLock<Option<Detectors>> = LazyLock::new(|| Detectors::new(&[]).ok());

/// The name of a detector that finds something in `value`: the session's active
/// detectors when its masking scans content, else every built-in one (`email`,
/// `payment_card`, `jwt`, ...).
pub fn sensitive_value(masker: Option<&Masker>, value: &[u8]) -> Option<String> {
    let mut scratch = DetectScratch::default();
    match masker {
        Some(m) if m.scans_content() => {
            let d = &m.compiled().detectors;
            d.find(value, m.detectors_on(), &mut scratch);
            scratch.found.first().map(|f| d.name(f.detector).to_owned())
        }
        _ => {
            let d = BUILT_IN.as_ref()?;
            let all = vec![true; d.len()];
            d.find(value, &all, &mut scratch);
            scratch.found.first().map(|f| d.name(f.detector).to_owned())
        }
    }
}
