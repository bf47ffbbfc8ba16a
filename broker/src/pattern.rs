//! Destination patterns in the ActiveMQ habit: `.`-separated segments, `*` matches exactly one
//! segment, `>` matches one or more trailing segments.
//!
//! Patterns are written against STOMP destination names (`/queue/orders.eu`) or the mq-client form
//! (`queue://orders.eu`); both normalise to the same kind + path, so `queue://orders.>` matches
//! `/queue/orders.eu.paris`. A pattern without a kind prefix matches queues and topics alike.

use std::fmt;
use std::str::FromStr;

/// What kind of destination a pattern applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Queue,
    Topic,
    Any,
}

/// A compiled destination pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    kind: Kind,
    segments: Vec<String>,
}

/// A pattern that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid destination pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn split_kind(s: &str) -> (Kind, &str) {
    if let Some(rest) = s
        .strip_prefix("/queue/")
        .or_else(|| s.strip_prefix("queue://"))
    {
        (Kind::Queue, rest)
    } else if let Some(rest) = s
        .strip_prefix("/topic/")
        .or_else(|| s.strip_prefix("topic://"))
    {
        (Kind::Topic, rest)
    } else {
        (Kind::Any, s)
    }
}

impl FromStr for Pattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| PatternError {
            pattern: s.to_string(),
            reason,
        };
        let (kind, path) = split_kind(s);
        if path.is_empty() {
            return Err(err("empty name"));
        }
        let segments: Vec<String> = path.split('.').map(str::to_string).collect();
        for (i, seg) in segments.iter().enumerate() {
            if seg.is_empty() {
                return Err(err("empty segment"));
            }
            if seg == ">" && i + 1 != segments.len() {
                return Err(err("'>' must be the last segment"));
            }
            if seg.len() > 1 && (seg.contains('*') || seg.contains('>')) {
                return Err(err("wildcards must be whole segments"));
            }
        }
        Ok(Pattern {
            source: s.to_string(),
            kind,
            segments,
        })
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Pattern {
    /// Whether `destination` (STOMP form, `/queue/x` or `/topic/x`) matches.
    pub fn matches(&self, destination: &str) -> bool {
        let (kind, path) = split_kind(destination);
        if self.kind != Kind::Any && self.kind != kind {
            return false;
        }
        let mut parts = path.split('.');
        for seg in &self.segments {
            match seg.as_str() {
                ">" => return parts.next().is_some(),
                "*" => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                lit => {
                    if parts.next() != Some(lit) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        s.parse().unwrap()
    }

    #[test]
    fn literal_and_wildcards() {
        assert!(p("/queue/orders").matches("/queue/orders"));
        assert!(!p("/queue/orders").matches("/topic/orders"));
        assert!(!p("/queue/orders").matches("/queue/orders.eu"));
        assert!(p("queue://orders.*").matches("/queue/orders.eu"));
        assert!(!p("queue://orders.*").matches("/queue/orders.eu.paris"));
        assert!(!p("queue://orders.*").matches("/queue/orders"));
        assert!(p("queue://orders.>").matches("/queue/orders.eu.paris"));
        assert!(!p("queue://orders.>").matches("/queue/orders"));
        assert!(p(">").matches("/topic/anything.at.all"));
        assert!(p("*.x").matches("/queue/a.x"));
    }

    #[test]
    fn bad_patterns_are_named() {
        for bad in ["", "/queue/", "a..b", "a.>.b", "a.b*"] {
            let e = bad.parse::<Pattern>().unwrap_err();
            assert_eq!(e.pattern, bad);
        }
    }
}
