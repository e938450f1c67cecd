//! Text that came from users (an option's value, a path, an image name), made safe to show: what we
//! print or log is one line, and no character of it can start a line of its own or turn text around.
//! A control character, a line or paragraph separator or a bidirectional override is shown escaped
//! (`\n`, `\u{202e}`), so a value cannot forge a line in a job's output or in Slurm's logs.

/// `text` with every character that could break or disguise a line escaped.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let hiding = matches!(c, '\u{2028}' | '\u{2029}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || hiding {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `eprintln!("mpiexec_docker: error: …")` with the message made [`one_line`].
#[macro_export]
macro_rules! say_error {
    ($($t:tt)*) => {
        eprintln!("mpiexec_docker: error: {}", $crate::user_text::one_line(&format!($($t)*)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaks_and_overrides_are_shown_escaped() {
        assert_eq!(one_line("a\nb\r\tc\0"), "a\\nb\\r\\tc\\u{0}");
        assert_eq!(one_line("x\u{202e}y\u{2028}"), "x\\u{202e}y\\u{2028}");
        assert_eq!(one_line("/scratch:/data é"), "/scratch:/data é");
    }
}
