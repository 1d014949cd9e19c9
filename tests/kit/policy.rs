//! Policies made in code, for tests and benches that need one the shipped
//! `policies/` do not have: one server open to its clients on a few ports.

use std::sync::Arc;

use enforcer::policy::Policy;

fn list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|a| format!("\"{a}\"")).collect();
    quoted.join(", ")
}

/// One server (labels `app: {app}`, at `server`) open to one client
/// endpoint (`app: client`, at `clients`: addresses or CIDRs) on `ports`
/// (number, protocol), with `rules` under the ports (YAML at their
/// indentation, such as `      rules:\n        http: ...`; empty for L4
/// only).
pub fn one_server_yaml(
    app: &str,
    server: &[&str],
    clients: &[&str],
    ports: &[(u16, &str)],
    rules: &str,
) -> String {
    let ports: String = ports
        .iter()
        .map(|(port, proto)| format!("      - port: \"{port}\"\n        protocol: {proto}\n"))
        .collect();
    format!(
        r#"
kind: Endpoints
endpoints:
- name: server
  labels: {{app: {app}}}
  addresses: [{server}]
- name: client
  labels: {{app: client}}
  addresses: [{clients}]
{head}    toPorts:
    - ports:
{ports}{rules}"#,
        server = list(server),
        clients = list(clients),
        head = from_clients(app, app),
    )
}

/// A policy document named `name` for the server `app: {app}` whose one
/// ingress rule admits `app: client`, up to the rule's own clauses.
fn from_clients(name: &str, app: &str) -> String {
    format!(
        r#"---
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "{name}"
spec:
  endpointSelector:
    matchLabels:
      app: {app}
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: client
"#
    )
}

/// A second document for `one_server_yaml`'s server: its clients may ping
/// it (IPv4 echo requests, in a rule of their own).
pub fn ping_yaml(app: &str) -> String {
    format!(
        r#"
{head}    icmps:
    - fields:
      - type: 8
        family: IPv4
"#,
        head = from_clients(&format!("{app}-ping"), app),
    )
}

/// Compile a policy made here; `name` is the file name its errors carry.
pub fn compile(name: &str, yaml: &str) -> Arc<Policy> {
    match Policy::from_str(name, yaml) {
        Ok(p) => Arc::new(p),
        Err(e) => panic!("{name}: {e:?}"),
    }
}
