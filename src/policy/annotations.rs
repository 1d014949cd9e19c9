//! The policy annotations the enforcer reads (`metadata.annotations`, the
//! `enforcer.io/` prefix is ours): audit mode and the deny reply. A
//! CiliumNetworkPolicy has no field for either, and annotations are where
//! Kubernetes lets a policy carry them. An unknown `enforcer.io/` name is an
//! error, so a typo never silently leaves the default in place.

use std::collections::BTreeMap;

use crate::config::{
    check_content_type, check_http_body, check_http_header, check_http_status,
    check_memcache_message, DenyReplyOverride,
};

use super::compile::CompileError;

/// A policy annotated with this (`"true"`) is in audit mode: an endpoint all
/// of whose policies carry it has what they would deny forwarded and logged
/// as `audit` instead (see `model::Model`).
pub const AUDIT_ANNOTATION: &str = "enforcer.io/audit";
/// Deny reply of the requests this policy's rules deny; each replaces the
/// global flag of the same name (`--http-deny-status`, ...).
pub const HTTP_DENY_STATUS: &str = "enforcer.io/http-deny-status";
pub const HTTP_DENY_BODY: &str = "enforcer.io/http-deny-body";
pub const HTTP_DENY_CONTENT_TYPE: &str = "enforcer.io/http-deny-content-type";
/// One `Name: value` per line.
pub const HTTP_DENY_HEADERS: &str = "enforcer.io/http-deny-headers";
pub const MEMCACHE_DENY_MESSAGE: &str = "enforcer.io/memcache-deny-message";

const KNOWN: &[&str] = &[
    AUDIT_ANNOTATION,
    HTTP_DENY_STATUS,
    HTTP_DENY_BODY,
    HTTP_DENY_CONTENT_TYPE,
    HTTP_DENY_HEADERS,
    MEMCACHE_DENY_MESSAGE,
];

/// What a policy's annotations say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Annotations {
    pub audit: bool,
    /// None when no deny-reply annotation is given.
    pub deny: Option<DenyReplyOverride>,
}

fn field(name: &str) -> String {
    format!("metadata.annotations.{name}")
}

/// Reads `metadata` (the document's, as YAML) for our annotations; errors
/// name the annotation's field.
pub fn read(
    metadata: &BTreeMap<String, serde_yaml::Value>,
) -> Result<Annotations, Vec<CompileError>> {
    let mut a = Annotations::default();
    let mut errors = Vec::new();
    let Some(ann) = metadata.get("annotations") else {
        return Ok(a);
    };
    let Some(map) = ann.as_mapping() else {
        if ann.is_null() {
            return Ok(a);
        }
        return Err(vec![CompileError {
            field: "metadata.annotations".into(),
            message: "must be a mapping of names to strings".into(),
        }]);
    };
    let mut deny = DenyReplyOverride::default();
    for (k, v) in map {
        let Some(name) = k.as_str() else { continue };
        if !name.starts_with("enforcer.io/") {
            continue; // Not ours to judge.
        }
        let mut fail = |message: String| {
            errors.push(CompileError {
                field: field(name),
                message,
            })
        };
        if !KNOWN.contains(&name) {
            fail(format!(
                "unknown enforcer annotation (known: {})",
                KNOWN.join(", ")
            ));
            continue;
        }
        // Annotations are strings; a bare number or boolean is read as one.
        let text = match v {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::Bool(b) => b.to_string(),
            _ => {
                fail("must be a string".into());
                continue;
            }
        };
        let r: Result<(), String> = match name {
            AUDIT_ANNOTATION => {
                a.audit = text == "true";
                Ok(())
            }
            HTTP_DENY_STATUS => check_http_status(&text).map(|s| deny.http_status = Some(s)),
            HTTP_DENY_BODY => check_http_body(&text).map(|s| deny.http_body = Some(s)),
            HTTP_DENY_CONTENT_TYPE => {
                check_content_type(&text).map(|s| deny.http_content_type = Some(s))
            }
            HTTP_DENY_HEADERS => text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(check_http_header)
                .collect::<Result<Vec<_>, _>>()
                .map(|h| deny.http_headers = Some(h)),
            MEMCACHE_DENY_MESSAGE => {
                check_memcache_message(&text).map(|s| deny.memcache_message = Some(s))
            }
            _ => Ok(()),
        };
        if let Err(m) = r {
            fail(m);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    a.deny = (!deny.is_empty()).then_some(deny);
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(yaml: &str) -> BTreeMap<String, serde_yaml::Value> {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn deny_reply_annotations_are_read_and_checked() {
        let a = read(&meta(
            "name: x\nannotations:\n  enforcer.io/http-deny-status: \"451\"\n  \
             enforcer.io/http-deny-body: gone fishing\n  \
             enforcer.io/http-deny-headers: |\n    X-A: 1\n    X-B: two words\n  \
             enforcer.io/memcache-deny-message: not yours\n  other.io/x: anything\n",
        ))
        .unwrap();
        let d = a.deny.unwrap();
        assert_eq!(d.http_status, Some(451));
        assert_eq!(d.http_body.as_deref(), Some("gone fishing"));
        assert_eq!(
            d.http_headers.unwrap(),
            [
                ("X-A".into(), "1".into()),
                ("X-B".into(), "two words".into())
            ]
        );
        assert_eq!(d.memcache_message.as_deref(), Some("not yours"));
        assert!(!a.audit && d.http_content_type.is_none());
        assert_eq!(read(&meta("name: x\n")).unwrap(), Annotations::default());
        assert!(
            read(&meta("annotations:\n  enforcer.io/audit: \"true\"\n"))
                .unwrap()
                .audit
        );

        let errs = read(&meta(
            "annotations:\n  enforcer.io/http-deny-status: \"204\"\n  \
             enforcer.io/http-deny-stauts: \"451\"\n  \
             enforcer.io/http-deny-headers: \"Content-Length: 1\"\n",
        ))
        .unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.annotations.enforcer.io/http-deny-status",
                "metadata.annotations.enforcer.io/http-deny-stauts",
                "metadata.annotations.enforcer.io/http-deny-headers",
            ]
        );
        assert!(errs[0].message.contains("no body"), "{}", errs[0].message);
    }
}
