//! `enforcer check`: validate and summarise who may talk to whom.

use std::path::Path;

pub fn run(path: &Path) -> Result<(), String> {
    let _ = path;
    todo!("policy::check::run")
}
