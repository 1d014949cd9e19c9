#![no_main]
//! Policy loading: YAML (CiliumNetworkPolicy, Endpoints) and the 2017 JSON
//! format, one or several files at once, never panic; errors name one of the
//! files; a policy that loads answers queries and runs a conversation.

use enforcer_fuzz::policy_input::check;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check(data);
});
