//! Kubernetes quantities (`250m`, `1.5Gi`), read the way the API server reads them.

/// The value of a Kubernetes quantity (`250m` → 0.25, `1Ki` → 1024), or `None` when `text` is
/// not one. Precise enough to compare quantities, which is all it is for.
pub fn quantity_value(text: &str) -> Option<f64> {
    let (number, suffix) = split_number(text)?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => {
            let exponent = suffix.strip_prefix(['e', 'E'])?;
            match split_number(exponent)? {
                (exponent, "") => 10f64.powf(exponent),
                _ => return None,
            }
        }
    };
    Some(number * multiplier)
}

/// Splits a leading signed decimal number (`-1.5`, `.5`, `2.`) from the rest of `text`.
fn split_number(text: &str) -> Option<(f64, &str)> {
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    let mut end = usize::from(text.starts_with(['+', '-']));
    let whole = digits(&text[end..]);
    end += whole;
    let mut fraction = 0;
    if text[end..].starts_with('.') {
        fraction = digits(&text[end + 1..]);
        end += 1 + fraction;
    }
    if whole + fraction == 0 {
        return None;
    }
    Some((text[..end].parse().ok()?, &text[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_have_values() {
        for (text, value) in [
            ("1", 1.0),
            ("250m", 0.25),
            ("0.5", 0.5),
            (".5", 0.5),
            ("2.", 2.0),
            ("+1k", 1000.0),
            ("-1", -1.0),
            ("1Ki", 1024.0),
            ("256Mi", 268_435_456.0),
            ("1E", 1e18),
            ("1e3", 1000.0),
            ("1.5E-3", 0.0015),
            ("100n", 1e-7),
        ] {
            let parsed = quantity_value(text).unwrap_or_else(|| panic!("{text}"));
            assert!(
                (parsed - value).abs() <= 1e-12 * value.abs(),
                "{text}: {parsed}"
            );
        }
        for bad in ["", "m", "1x", "1Mb", "1e", "1ki", "--1", "1 m", "e3", "."] {
            assert_eq!(quantity_value(bad), None, "{bad}");
        }
    }
}
