//! Turning token bytes into streamed text: UTF-8 reassembly across tokens, and stop strings
//! that are held back until they are known not to match.

/// Reassembles UTF-8 characters split across tokens.
#[derive(Default)]
pub struct Utf8Stream {
    buf: Vec<u8>,
}

impl Utf8Stream {
    /// Adds bytes; returns the text that is complete so far (invalid bytes become U+FFFD).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.buf.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.buf) {
                Ok(s) => {
                    out.push_str(s);
                    self.buf.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(
                        std::str::from_utf8(&self.buf[..valid]).expect("validated prefix"),
                    );
                    match e.error_len() {
                        // An incomplete character at the end: wait for the next token.
                        None => {
                            self.buf.drain(..valid);
                            return out;
                        }
                        Some(n) => {
                            out.push('\u{FFFD}');
                            self.buf.drain(..valid + n);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left (an unfinished character) as replacement characters.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        s
    }
}

/// Holds back text that could be the start of a stop string.
pub struct StopFilter {
    stops: Vec<String>,
    pending: String,
}

impl StopFilter {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    /// Adds text; returns the text that is safe to show and whether a stop string was hit
    /// (the stop string and anything after it are dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(i) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..i].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Keep the longest suffix that is a proper prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .rev()
                    .filter(|&k| s.is_char_boundary(k))
                    .map(move |k| &s[..k])
            })
            .filter(|prefix| self.pending.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// Releases held-back text at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_tokens() {
        let mut u = Utf8Stream::default();
        let bytes = "é€😀".as_bytes();
        let mut out = String::new();
        for b in bytes {
            out.push_str(&u.push(std::slice::from_ref(b)));
        }
        assert_eq!(out, "é€😀");
        assert_eq!(u.push(&[0xff, b'a']), "\u{FFFD}a");
        assert_eq!(u.push(&[0xe2, 0x82]), "");
        assert_eq!(u.finish(), "\u{FFFD}");
    }

    #[test]
    fn stop_string_across_pieces_is_cut() {
        let mut f = StopFilter::new(vec!["<|end|>".into(), "User:".into()]);
        let mut shown = String::new();
        let mut hit = false;
        for piece in ["Hello", " wor", "ld<|e", "nd|> more"] {
            let (s, h) = f.push(piece);
            shown.push_str(&s);
            hit |= h;
            if h {
                break;
            }
        }
        assert!(hit);
        assert_eq!(shown, "Hello world");
    }

    #[test]
    fn near_miss_is_released() {
        let mut f = StopFilter::new(vec!["User:".into()]);
        let (a, _) = f.push("ask the Use");
        assert_eq!(a, "ask the ");
        let (b, hit) = f.push("r manual");
        assert!(!hit);
        assert_eq!(format!("{a}{b}{}", f.finish()), "ask the User manual");
    }
}
