//! Globs on `/`-separated names (principals and key names), validated once and matched without
//! backtracking blow-up.

use std::fmt;

// ---- globs -----------------------------------------------------------------------------------

/// Longest accepted pattern, in bytes.
const MAX_PATTERN: usize = 1024;

/// A validated glob on `/`-separated names (see the module docs for the semantics).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Glob {
    pattern: String,
    /// Derived from `pattern` by [`Glob::new`], so equality and hashing mean the same as on
    /// the pattern alone.
    shape: Shape,
    /// Length of the literal text before the first `*` (the whole pattern if none): every
    /// matching name starts with it, since `*` never spans a `/`. Derived like `shape`.
    literal: usize,
}

/// Which matcher [`Glob::is_match`] needs. A decision matches the principal and key globs of
/// most rules of the set, so the common shapes are matched in place, without allocating; each
/// gives the same answer as the general matcher (tested against it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Shape {
    /// No `*`: an exact name.
    Exact,
    /// The only `*` is a final `**` segment (`a/b/**`, `**`): the name starts with the
    /// literal part `a/b/`, which leaves it at least one more segment.
    Prefix,
    /// No `**` segment: the name has as many segments, matched pairwise.
    Segments,
    /// `**` is the last segment and the only `**`: the segments before it match the name's
    /// first segments pairwise, and the name has at least one more.
    TrailingAny,
    /// Any other `**`: the general matcher.
    General,
}

impl Glob {
    /// Parses a pattern. Refused: empty, longer than 1024 bytes, control characters, `**`
    /// that is not a whole segment.
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("empty pattern".into());
        }
        if pattern.len() > MAX_PATTERN {
            return Err(format!("pattern longer than {MAX_PATTERN} bytes"));
        }
        if pattern.chars().any(char::is_control) {
            return Err(format!("pattern {pattern:?} contains a control character"));
        }
        if pattern
            .split('/')
            .any(|seg| seg.contains("**") && seg != "**")
        {
            return Err(format!(
                "pattern {pattern:?}: `**` must be a whole segment (`a/**`, `**/b`), \
                 use `*` inside a segment"
            ));
        }
        let literal = pattern.find('*').unwrap_or(pattern.len());
        let any_segments = pattern.split('/').filter(|seg| *seg == "**").count();
        let trailing_any = pattern == "**" || pattern.ends_with("/**");
        let shape = if literal == pattern.len() {
            Shape::Exact
        } else if any_segments == 0 {
            Shape::Segments
        } else if any_segments == 1 && trailing_any && literal == pattern.len() - 2 {
            Shape::Prefix
        } else if any_segments == 1 && trailing_any {
            Shape::TrailingAny
        } else {
            Shape::General
        };
        Ok(Self {
            pattern: pattern.to_string(),
            shape,
            literal,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether `name` matches. Linear in the product of segment counts (no backtracking
    /// blow-up), so it is safe on names from the network.
    pub fn is_match(&self, name: &str) -> bool {
        // Most rules do not match most requests: reject on the literal part first.
        if !name.starts_with(&self.pattern[..self.literal]) {
            return false;
        }
        match self.shape {
            // Pairwise byte equality of equally many segments is string equality.
            Shape::Exact => self.pattern == name,
            // The literal part ends with the `/` before `**`: the rest is one or more segments.
            Shape::Prefix => true,
            Shape::Segments => {
                let mut names = name.split('/');
                self.pattern.split('/').all(|p| {
                    names
                        .next()
                        .is_some_and(|t| segment_match(p.as_bytes(), t.as_bytes()))
                }) && names.next().is_none()
            }
            Shape::TrailingAny => {
                // Invariant: this shape always ends with `/**` (a lone `**` is `Prefix`).
                let prefix = &self.pattern[..self.pattern.len() - 3];
                let mut names = name.split('/');
                prefix.split('/').all(|p| {
                    names
                        .next()
                        .is_some_and(|t| segment_match(p.as_bytes(), t.as_bytes()))
                }) && names.next().is_some()
            }
            Shape::General => self.is_match_general(name),
        }
    }

    /// The matcher for every shape: dynamic programming over pattern and name segments.
    fn is_match_general(&self, name: &str) -> bool {
        let p: Vec<&str> = self.pattern.split('/').collect();
        let t: Vec<&str> = name.split('/').collect();
        let n = t.len();
        // next[j]: does p[i+1..] match t[j..]? Computed from the end of the pattern.
        let mut next = vec![false; n + 1];
        next[n] = true;
        for i in (0..p.len()).rev() {
            let mut cur = vec![false; n + 1];
            if p[i] == "**" {
                let last = i + 1 == p.len();
                for j in (0..=n).rev() {
                    cur[j] = if last {
                        // A trailing `**` takes all the rest, at least one segment.
                        j < n
                    } else {
                        next[j] || (j < n && cur[j + 1])
                    };
                }
            } else {
                for j in 0..n {
                    cur[j] = next[j + 1] && segment_match(p[i].as_bytes(), t[j].as_bytes());
                }
            }
            next = cur;
        }
        next[0]
    }
}

/// `*` matches any run of bytes (the caller has already split on `/`); everything else is
/// literal. Classic greedy matching with one backtrack point: O(len(p) * len(t)) at worst.
fn segment_match(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({})", self.pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::*;

    #[test]
    fn glob_shapes_agree_with_the_general_matcher() {
        let patterns = [
            "a",
            "a/b",
            "*",
            "a/*",
            "*/b",
            "a*",
            "*a*",
            "a/*/c",
            "a/b*",
            "spiffe://prod/*",
            "spiffe://prod/a*/*",
            "**",
            "/**",
            "a/**",
            "a/*/**",
            "*/**",
            "a//**",
            "a/b/**",
            "spiffe://prod/**",
            "**/b",
            "a/**/b",
            "**/**",
            "a/**/**",
            "**/*/**",
            "é*/**",
        ];
        let names = [
            "",
            "/",
            "//",
            "a",
            "b",
            "ab",
            "ba",
            "a/",
            "/a",
            "a/b",
            "a//b",
            "a/b/",
            "a/b/c",
            "a/x/c",
            "a/x/y/b",
            "ab/c",
            "b/a",
            "a/bc",
            "a/b/c/d",
            "spiffe://prod/api",
            "spiffe://prod/api/x",
            "spiffe://prod",
            "spiffe://prod/",
            "spiffe://prod/ab/c",
            "é",
            "éa/b",
        ];
        let mut shapes = std::collections::BTreeSet::new();
        for p in patterns {
            let g = Glob::new(p).unwrap();
            shapes.insert(format!("{:?}", g.shape));
            for name in names {
                assert_eq!(
                    g.is_match(name),
                    g.is_match_general(name),
                    "pattern {p:?} ({:?}) on {name:?}",
                    g.shape
                );
            }
        }
        assert_eq!(shapes.len(), 5, "every shape is exercised: {shapes:?}");
    }

    #[test]
    fn glob_semantics() {
        let g = |p: &str| Glob::new(p).unwrap();
        assert!(g("payments/*").is_match("payments/a"));
        assert!(!g("payments/*").is_match("payments/a/b"));
        assert!(g("payments/**").is_match("payments/a/b"));
        assert!(g("payments/**").is_match("payments/a"));
        assert!(!g("payments/**").is_match("payments"));
        assert!(!g("payments/**").is_match("paymentsx/a"));
        assert!(g("a/**/b").is_match("a/b"));
        assert!(g("a/**/b").is_match("a/x/y/b"));
        assert!(!g("a/**/b").is_match("a/x/y/c"));
        assert!(g("**").is_match("a"));
        assert!(g("**").is_match("a/b/c"));
        assert!(g("app-*-key").is_match("app-1-key"));
        assert!(!g("app-*-key").is_match("app-1/x-key"));
        assert!(g("*").is_match("anything"));
        assert!(!g("*").is_match("any/thing"));
        assert!(g("exact/name").is_match("exact/name"));
        assert!(!g("exact/name").is_match("exact/name2"));
        assert!(g("spiffe://prod/*").is_match("spiffe://prod/api"));
        assert!(!g("spiffe://prod/*").is_match("spiffe://prod/api/x"));
        assert!(g("a*b*c").is_match("aXbYbZc"));
        assert!(Glob::new("a**").is_err());
        assert!(Glob::new("").is_err());
        // Many stars stay fast on long names.
        let long = "a/".repeat(120) + "b";
        assert!(!g("**/**/**/**/**/c").is_match(&long));
        assert!(!g("*a*a*a*a*a*a*a*c").is_match(&"a".repeat(200)));

        let s = set(&[("p.toml", BASIC)]).unwrap();
        let api = "spiffe://prod/payments/api";
        assert!(decide(&s, api, "encrypt", Some("shared/x/key")).is_allowed());
        assert!(!decide(&s, api, "encrypt", Some("shared/x/y/key")).is_allowed());
        assert!(
            !decide(
                &s,
                "spiffe://prod/payments/a/b",
                "encrypt",
                Some("payments/x")
            )
            .is_allowed()
        );
    }
}
