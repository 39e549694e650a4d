//! Ollama model names: `[host/][namespace/]model[:tag]`, parsed and validated as Ollama does.
//!
//! Validation is what keeps a name inside the store: every part must start with a letter,
//! digit or underscore and contain only `[A-Za-z0-9_.-]` (plus `:` in the host, for ports;
//! no `.` in the namespace), so `..`, `/` and absolute paths can never appear in a part.

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};

pub const DEFAULT_HOST: &str = "registry.ollama.ai";
pub const DEFAULT_NAMESPACE: &str = "library";
pub const DEFAULT_TAG: &str = "latest";

/// A fully qualified Ollama model name (all four parts filled in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelName {
    pub host: String,
    pub namespace: String,
    pub model: String,
    pub tag: String,
}

#[derive(Clone, Copy, PartialEq)]
enum Part {
    Host,
    Namespace,
    Model,
    Tag,
}

impl Part {
    fn label(self) -> &'static str {
        match self {
            Part::Host => "host",
            Part::Namespace => "namespace",
            Part::Model => "model",
            Part::Tag => "tag",
        }
    }
}

/// Splits `s` at the last `sep`; `None` when `sep` is absent.
fn cut_last(s: &str, sep: char) -> Option<(&str, &str)> {
    s.rfind(sep).map(|i| (&s[..i], &s[i + 1..]))
}

fn check_part(name: &str, kind: Part, s: &str) -> Result<()> {
    let invalid = |reason: String| Error::InvalidName {
        name: name.to_string(),
        reason,
    };
    let max = if kind == Part::Host { 350 } else { 80 };
    if s.is_empty() {
        return Err(invalid(format!("the {} part is empty", kind.label())));
    }
    if s.len() > max {
        return Err(invalid(format!(
            "the {} part is longer than {max} characters",
            kind.label()
        )));
    }
    for (i, c) in s.chars().enumerate() {
        let ok = c.is_ascii_alphanumeric()
            || c == '_'
            || (i > 0 && c == '-')
            || (i > 0 && c == '.' && kind != Part::Namespace)
            || (i > 0 && c == ':' && kind == Part::Host);
        if !ok {
            return Err(invalid(format!(
                "character {c:?} is not allowed {} the {} part {s:?}",
                if i == 0 { "at the start of" } else { "in" },
                kind.label()
            )));
        }
    }
    Ok(())
}

impl ModelName {
    /// Parses a name the way Ollama does and fills in the defaults.
    pub fn parse(name: &str) -> Result<Self> {
        if name.contains("..") {
            return Err(Error::InvalidName {
                name: name.to_string(),
                reason: "\"..\" is not allowed in a model name (it would leave the model store)"
                    .into(),
            });
        }
        let mut rest = name.trim();
        for scheme in ["https://", "http://"] {
            if let Some(r) = rest.strip_prefix(scheme) {
                rest = r;
            }
        }
        let mut tag = None;
        // '/' cannot occur in a tag, so a ':' after the last '/' starts the tag
        // (a ':' before it belongs to a host:port).
        if rest
            .rfind(':')
            .map(|c| Some(c) > rest.rfind('/'))
            .unwrap_or(false)
        {
            let (r, t) = cut_last(rest, ':').expect("':' was found");
            rest = r;
            tag = Some(t);
        }
        let (model, namespace, host) = match cut_last(rest, '/') {
            None => (rest, None, None),
            Some((r, m)) => match cut_last(r, '/') {
                None => (m, Some(r), None),
                Some((h, ns)) => (m, Some(ns), Some(h)),
            },
        };
        let n = ModelName {
            host: host.unwrap_or(DEFAULT_HOST).to_string(),
            namespace: namespace.unwrap_or(DEFAULT_NAMESPACE).to_string(),
            model: model.to_string(),
            tag: tag.unwrap_or(DEFAULT_TAG).to_string(),
        };
        check_part(name, Part::Host, &n.host)?;
        check_part(name, Part::Namespace, &n.namespace)?;
        check_part(name, Part::Model, &n.model)?;
        check_part(name, Part::Tag, &n.tag)?;
        Ok(n)
    }

    /// The manifest's path relative to `<root>/manifests`.
    pub fn manifest_rel_path(&self) -> PathBuf {
        [&self.host, &self.namespace, &self.model, &self.tag]
            .iter()
            .collect()
    }

    /// The shortest form Ollama would print (`llama3.2:1b`, `user/model:latest`).
    pub fn short(&self) -> String {
        let mut s = String::new();
        if self.host != DEFAULT_HOST {
            s.push_str(&self.host);
            s.push('/');
        }
        if self.host != DEFAULT_HOST || self.namespace != DEFAULT_NAMESPACE {
            s.push_str(&self.namespace);
            s.push('/');
        }
        s.push_str(&self.model);
        s.push(':');
        s.push_str(&self.tag);
        s
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}:{}",
            self.host, self.namespace, self.model, self.tag
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ModelName {
        ModelName::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn defaults_fill_missing_parts() {
        assert_eq!(
            p("llama3.2").to_string(),
            "registry.ollama.ai/library/llama3.2:latest"
        );
        assert_eq!(
            p("llama3.2:1b").to_string(),
            "registry.ollama.ai/library/llama3.2:1b"
        );
        assert_eq!(
            p("user/model").to_string(),
            "registry.ollama.ai/user/model:latest"
        );
        assert_eq!(
            p("hf.co/org/repo:Q4_K_M").to_string(),
            "hf.co/org/repo:Q4_K_M"
        );
    }

    #[test]
    fn host_with_port_is_not_a_tag() {
        let n = p("localhost:5000/ns/m");
        assert_eq!(
            (n.host.as_str(), n.tag.as_str()),
            ("localhost:5000", "latest")
        );
        let n = p("localhost:5000/ns/m:v1");
        assert_eq!((n.host.as_str(), n.tag.as_str()), ("localhost:5000", "v1"));
        assert_eq!(p("https://example.com/ns/m:t").host, "example.com");
    }

    #[test]
    fn manifest_path_has_four_components() {
        let path = p("llama3.2:1b").manifest_rel_path();
        assert_eq!(
            path,
            PathBuf::from("registry.ollama.ai/library/llama3.2/1b")
        );
    }

    #[test]
    fn short_form_drops_defaults() {
        assert_eq!(
            p("registry.ollama.ai/library/llama3.2:1b").short(),
            "llama3.2:1b"
        );
        assert_eq!(p("user/m").short(), "user/m:latest");
        assert_eq!(p("hf.co/a/b:c").short(), "hf.co/a/b:c");
    }

    #[test]
    fn names_that_leave_the_store_are_rejected() {
        for bad in [
            "../x",
            "..",
            "a/../b",
            "../../etc/passwd",
            "/etc/passwd",
            "m:../x",
            "ns/.hidden",
            "a/b/c/d",
            "m:",
            ":tag",
            "",
            "m:t/x",
            "a..b/m",
            "my model",
            "m\\x",
            ".",
            "-m",
        ] {
            let r = ModelName::parse(bad);
            assert!(
                matches!(r, Err(Error::InvalidName { .. })),
                "{bad:?} should be invalid, got {r:?}"
            );
        }
    }

    #[test]
    fn overlong_parts_are_rejected() {
        assert!(ModelName::parse(&"a".repeat(81)).is_err());
        assert!(ModelName::parse(&"a".repeat(80)).is_ok());
    }
}
