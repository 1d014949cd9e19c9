//! The 2017 L7 expression language, e.g.
//! `Method("PUT") && Header("X-Has-Force", "true") && Path("/v1/exhaust-port")`.
//!
//! ```text
//! expr    = or
//! or      = and { "||" and }
//! and     = unary { "&&" unary }
//! unary   = "!" unary | "(" expr ")" | call
//! call    = name "(" string { "," string } ")"
//! name    = "Method" | "Path" | "Host" | "Header"
//! string  = '"' { char | '\"' | '\\' } '"'
//! ```
//!
//! An expression becomes HTTP rules in disjunctive normal form: one rule per
//! conjunction. A negation that survives De Morgan on a predicate cannot be
//! written as a rule and is an error.

use nom::branch::alt;
use nom::bytes::complete::{tag, take_while1};
use nom::character::complete::{char, multispace0, none_of};
use nom::combinator::{map, opt, recognize};
use nom::multi::{many0, separated_list1};
use nom::sequence::{delimited, preceded};
use nom::{IResult, Parser};

use crate::l7::http::HttpRuleSpec;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pred {
    Method(String),
    Path(String),
    Host(String),
    Header(String, Option<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// A predicate and the 1-based column where it starts.
    Pred(Pred, usize),
    Not(Box<Expr>, usize),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

/// An error with the 1-based column it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    pub column: usize,
    pub message: String,
}

/// A parser of one operand of a `chain`: the rest of the input and the node.
type Operand<'a, S> = fn(&S, &'a str) -> Result<(&'a str, Expr), ExprError>;

struct P<'a> {
    full: &'a str,
}

impl<'a> P<'a> {
    fn col(&self, rest: &str) -> usize {
        self.full.len() - rest.len() + 1
    }
}

fn ws<'a, O>(
    inner: impl Parser<&'a str, Output = O, Error = nom::error::Error<&'a str>>,
) -> impl Parser<&'a str, Output = O, Error = nom::error::Error<&'a str>> {
    delimited(multispace0, inner, multispace0)
}

fn string(i: &str) -> IResult<&str, String> {
    let (i, _) = char('"')(i)?;
    let (i, parts) = many0(alt((
        map(
            preceded(char('\\'), alt((char('"'), char('\\')))),
            |c: char| c,
        ),
        none_of("\"\\"),
    )))
    .parse(i)?;
    let (i, _) = char('"')(i)?;
    Ok((i, parts.into_iter().collect()))
}

fn name(i: &str) -> IResult<&str, &str> {
    recognize(take_while1(|c: char| c.is_ascii_alphanumeric() || c == '_')).parse(i)
}

impl<'a> P<'a> {
    fn or(&self, i: &'a str) -> Result<(&'a str, Expr), ExprError> {
        self.chain(i, "||", Self::and, Expr::Or)
    }

    fn and(&self, i: &'a str) -> Result<(&'a str, Expr), ExprError> {
        self.chain(i, "&&", Self::unary, Expr::And)
    }

    /// `operand { op operand }`, one node when there is a single operand.
    fn chain(
        &self,
        i: &'a str,
        op: &'static str,
        operand: Operand<'a, Self>,
        node: fn(Vec<Expr>) -> Expr,
    ) -> Result<(&'a str, Expr), ExprError> {
        let (mut i, first) = operand(self, i)?;
        let mut v = vec![first];
        while let Ok((rest, _)) = ws(tag::<&str, &str, nom::error::Error<&str>>(op)).parse(i) {
            let (rest, e) = operand(self, rest)?;
            v.push(e);
            i = rest;
        }
        Ok((i, if v.len() == 1 { v.remove(0) } else { node(v) }))
    }

    fn unary(&self, i: &'a str) -> Result<(&'a str, Expr), ExprError> {
        let (i, _) = multispace0::<&str, nom::error::Error<&str>>(i).unwrap_or((i, ""));
        if let Some(rest) = i.strip_prefix('!') {
            let col = self.col(i);
            let (rest, e) = self.unary(rest)?;
            return Ok((rest, Expr::Not(Box::new(e), col)));
        }
        if let Some(rest) = i.strip_prefix('(') {
            let (rest, e) = self.or(rest)?;
            let (rest, _) =
                multispace0::<&str, nom::error::Error<&str>>(rest).unwrap_or((rest, ""));
            let Some(rest) = rest.strip_prefix(')') else {
                return Err(ExprError {
                    column: self.col(rest),
                    message: "expected `)`".into(),
                });
            };
            return Ok((rest, e));
        }
        self.call(i)
    }

    fn call(&self, i: &'a str) -> Result<(&'a str, Expr), ExprError> {
        let col = self.col(i);
        let Ok((rest, n)) = name(i) else {
            return Err(ExprError {
                column: col,
                message: "expected Method, Path, Host, Header, `!` or `(`".into(),
            });
        };
        let (rest, _) = multispace0::<&str, nom::error::Error<&str>>(rest).unwrap_or((rest, ""));
        let Some(rest) = rest.strip_prefix('(') else {
            return Err(ExprError {
                column: self.col(rest),
                message: format!("expected `(` after {n}"),
            });
        };
        let args: IResult<&str, Vec<String>> =
            separated_list1(ws(char(',')), ws(string)).parse(rest);
        let Ok((rest, args)) = args else {
            return Err(ExprError {
                column: self.col(rest),
                message: "expected a quoted string".into(),
            });
        };
        let (rest, _) = multispace0::<&str, nom::error::Error<&str>>(rest).unwrap_or((rest, ""));
        let close: IResult<&str, Option<char>> = opt(char(')')).parse(rest);
        let Ok((rest, Some(_))) = close else {
            return Err(ExprError {
                column: self.col(rest),
                message: "expected `)` or `,`".into(),
            });
        };
        let arity = |want: usize| {
            if args.len() == want {
                Ok(())
            } else {
                Err(ExprError {
                    column: col,
                    message: format!("{n} takes {want} argument(s), got {}", args.len()),
                })
            }
        };
        let p = match n {
            "Method" => {
                arity(1)?;
                Pred::Method(args[0].clone())
            }
            "Path" => {
                arity(1)?;
                Pred::Path(args[0].clone())
            }
            "Host" => {
                arity(1)?;
                Pred::Host(args[0].clone())
            }
            "Header" => match args.len() {
                1 => Pred::Header(args[0].clone(), None),
                2 => Pred::Header(args[0].clone(), Some(args[1].clone())),
                k => {
                    return Err(ExprError {
                        column: col,
                        message: format!("Header takes 1 or 2 arguments, got {k}"),
                    })
                }
            },
            other => {
                return Err(ExprError {
                    column: col,
                    message: format!("unknown function {other:?} (Method, Path, Host, Header)"),
                })
            }
        };
        Ok((rest, Expr::Pred(p, col)))
    }
}

pub fn parse(text: &str) -> Result<Expr, ExprError> {
    let p = P { full: text };
    let (rest, e) = p.or(text)?;
    let rest = rest.trim();
    if !rest.is_empty() {
        return Err(ExprError {
            column: p.col(rest),
            message: "unexpected text (expected `&&`, `||` or the end)".into(),
        });
    }
    Ok(e)
}

/// Disjunctive normal form: a list of conjunctions of predicates.
fn dnf(e: &Expr, negated: bool) -> Result<Vec<Vec<(Pred, usize)>>, ExprError> {
    match (e, negated) {
        (Expr::Pred(p, c), false) => Ok(vec![vec![(p.clone(), *c)]]),
        (Expr::Pred(_, c), true) => Err(ExprError {
            column: *c,
            message: "a negated predicate cannot be written as an allow rule".into(),
        }),
        (Expr::Not(inner, _), n) => dnf(inner, !n),
        (Expr::And(v), false) | (Expr::Or(v), true) => {
            let mut acc: Vec<Vec<(Pred, usize)>> = vec![vec![]];
            for x in v {
                let d = dnf(x, negated)?;
                let mut next = Vec::new();
                for a in &acc {
                    for b in &d {
                        next.push([a.clone(), b.clone()].concat());
                    }
                }
                if next.len() > 64 {
                    return Err(ExprError {
                        column: 1,
                        message: "expression too large (over 64 rules)".into(),
                    });
                }
                acc = next;
            }
            Ok(acc)
        }
        (Expr::Or(v), false) | (Expr::And(v), true) => {
            let mut out = Vec::new();
            for x in v {
                out.extend(dnf(x, negated)?);
            }
            Ok(out)
        }
    }
}

/// The HTTP rules an expression allows.
pub fn to_rules(text: &str) -> Result<Vec<HttpRuleSpec>, ExprError> {
    let e = parse(text)?;
    let mut rules = Vec::new();
    for conj in dnf(&e, false)? {
        let mut r = HttpRuleSpec::default();
        for (p, col) in conj {
            let clash = |what: &str| ExprError {
                column: col,
                message: format!("two different {what} in one conjunction"),
            };
            match p {
                Pred::Method(m) => match &r.method {
                    Some(x) if *x != m => return Err(clash("methods")),
                    _ => r.method = Some(m),
                },
                Pred::Path(m) => match &r.path {
                    Some(x) if *x != m => return Err(clash("paths")),
                    _ => r.path = Some(m),
                },
                Pred::Host(m) => match &r.host {
                    Some(x) if *x != m => return Err(clash("hosts")),
                    _ => r.host = Some(m),
                },
                Pred::Header(n, v) => {
                    let h = match v {
                        Some(v) => format!("{n}: {v}"),
                        None => n,
                    };
                    if !r.headers.contains(&h) {
                        r.headers.push(h);
                    }
                }
            }
        }
        rules.push(r);
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_expressions() {
        let r = to_rules(r#"Method("GET") && Path("/v1/")"#).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].method.as_deref(), r[0].path.as_deref()),
            (Some("GET"), Some("/v1/"))
        );
        let r = to_rules(
            r#"Method("PUT") && Header("X-Has-Force", "true") && Path("/v1/exhaust-port")"#,
        )
        .unwrap();
        assert_eq!(r[0].headers, ["X-Has-Force: true"]);
    }

    #[test]
    fn or_and_parentheses_distribute() {
        let r = to_rules(r#"(Method("GET") || Method("HEAD")) && Path("/a")"#).unwrap();
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|x| x.path.as_deref() == Some("/a")));
        let r = to_rules(r#"!(!Method("GET") || !Host("x\"y"))"#).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].host.as_deref(), Some("x\"y"));
        let r = to_rules(r#"Header("X-Token")"#).unwrap();
        assert_eq!(r[0].headers, ["X-Token"]);
    }

    #[test]
    fn errors_point_at_the_column() {
        let e = to_rules(r#"Method("GET") && Path("/v1/""#).unwrap_err();
        assert_eq!(e.column, 29, "{e:?}");
        let e = to_rules(r#"Method("GET") &&"#).unwrap_err();
        assert_eq!(e.column, 17, "{e:?}");
        let e = to_rules(r#"Verb("GET")"#).unwrap_err();
        assert_eq!(e.column, 1);
        assert!(e.message.contains("unknown function"));
        let e = to_rules(r#"Method("GET") && !Path("/x")"#).unwrap_err();
        assert_eq!(e.column, 19, "{e:?}");
        let e = to_rules(r#"Method("GET") && Method("PUT")"#).unwrap_err();
        assert_eq!(e.column, 18);
        let e = to_rules(r#"Method(GET)"#).unwrap_err();
        assert_eq!(e.column, 8);
        let e = to_rules(r#"Method("GET") Path("/")"#).unwrap_err();
        assert_eq!(e.column, 15);
        let e = to_rules(r#"Method("A", "B")"#).unwrap_err();
        assert!(e.message.contains("1 argument"));
    }
}
