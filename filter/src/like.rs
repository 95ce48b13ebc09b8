//! `LIKE` patterns: compiled once into tokens, matched by characters with one backtrack point.

use crate::error::{Loc, WhereError, WhereErrorKind};

/// A compiled LIKE pattern element.
#[derive(Debug, Clone, PartialEq)]
pub enum LikeTok {
    Char(char),
    /// `_`: any one character.
    One,
    /// `%`: any run of characters.
    Any,
}

/// Compile a LIKE pattern with its escape character (`None`: no escape, as `ESCAPE ''`).
pub fn compile_like(pattern: &str, escape: Option<char>) -> Result<Vec<LikeTok>, WhereError> {
    let mut out = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if Some(c) == escape {
            match chars.next() {
                Some(e) => out.push(LikeTok::Char(e)),
                None => {
                    return Err(WhereError::new(
                        WhereErrorKind::InvalidValue,
                        Loc::NONE,
                        "LIKE pattern must not end with escape character",
                    ))
                }
            }
        } else if c == '%' {
            if out.last() != Some(&LikeTok::Any) {
                out.push(LikeTok::Any);
            }
        } else if c == '_' {
            out.push(LikeTok::One);
        } else {
            out.push(LikeTok::Char(c));
        }
    }
    Ok(out)
}

/// Does `text` match the compiled pattern? (Wildcard matching with one backtrack point.)
pub fn like_matches(text: &str, pattern: &[LikeTok]) -> bool {
    let t: Vec<char> = text.chars().collect();
    let (mut ti, mut pi) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match pattern.get(pi) {
            Some(LikeTok::Any) => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(LikeTok::One) => {
                ti += 1;
                pi += 1;
            }
            Some(LikeTok::Char(c)) if *c == t[ti] => {
                ti += 1;
                pi += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[pi..].iter().all(|p| *p == LikeTok::Any)
}
