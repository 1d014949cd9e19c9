//! How `check` writes L7 rules: one line per rule, as the document gave it.

pub(super) fn describe_http(h: &crate::l7::http::HttpRuleSpec) -> String {
    let mut p = Vec::new();
    if let Some(m) = &h.method {
        p.push(format!("method {m}"));
    }
    if let Some(x) = &h.path {
        p.push(format!("path {x}"));
    }
    if let Some(x) = &h.host {
        p.push(format!("host {x}"));
    }
    for x in &h.headers {
        p.push(format!("header \"{x}\""));
    }
    for m in &h.header_matches {
        let v = m
            .value
            .as_deref()
            .map(|v| format!(": {v}"))
            .unwrap_or_default();
        let mm = m
            .mismatch
            .as_deref()
            .map(|x| format!(" (mismatch {x})"))
            .unwrap_or_default();
        p.push(format!("headerMatch \"{}{v}\"{mm}", m.name));
    }
    if p.is_empty() {
        "any request".into()
    } else {
        p.join(", ")
    }
}

pub(super) fn describe_memcache(m: &crate::l7::memcache::MemcacheRuleSpec) -> String {
    let mut p = vec![format!("command {}", m.command.as_deref().unwrap_or("*"))];
    if let Some(k) = &m.key_exact {
        p.push(format!("key = {k:?}"));
    } else if let Some(k) = &m.key_prefix {
        p.push(format!("key prefix {k:?}"));
    } else if let Some(k) = &m.key_regex {
        p.push(format!("key ~ /{k}/"));
    }
    p.join(", ")
}
