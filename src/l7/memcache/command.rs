//! memcached commands (text names and binary opcodes) and the command groups
//! a rule's `command` names, after Cilium's proxylib `MemcacheOpCodeMap`,
//! with the additions documented in docs/l7.md.

/// Declares `TextCmd` with its names and the list of every known command
/// from one table, so that no list can miss a variant.
macro_rules! text_commands {
    ($($cmd:ident => $name:literal,)*) => {
        /// A text-protocol command. Meta commands whose mode changes what they do
        /// (`ms` add/append/..., `ma` incr/decr) are split so groups can tell them apart.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum TextCmd {
            $($cmd,)*
            /// A line memcached does not know as a command (it answers `ERROR`):
            /// an unknown name, a blank line, a one-letter word.
            Unknown,
        }

        impl TextCmd {
            /// Every command memcached knows (all but `Unknown`).
            pub const KNOWN: &'static [TextCmd] = &[$(TextCmd::$cmd,)*];

            pub fn name(self) -> &'static str {
                match self {
                    $(TextCmd::$cmd => $name,)*
                    TextCmd::Unknown => "unknown",
                }
            }
        }
    };
}

text_commands! {
    Set => "set",
    Add => "add",
    Replace => "replace",
    Append => "append",
    Prepend => "prepend",
    Cas => "cas",
    Get => "get",
    Gets => "gets",
    Gat => "gat",
    Gats => "gats",
    Delete => "delete",
    Incr => "incr",
    Decr => "decr",
    Touch => "touch",
    Stats => "stats",
    FlushAll => "flush_all",
    Version => "version",
    Verbosity => "verbosity",
    Quit => "quit",
    Shutdown => "shutdown",
    Slabs => "slabs",
    Lru => "lru",
    LruCrawler => "lru_crawler",
    Watch => "watch",
    CacheMemlimit => "cache_memlimit",
    Misbehave => "misbehave",
    Mg => "mg",
    MsSet => "ms",
    MsAdd => "ms",
    MsReplace => "ms",
    MsAppend => "ms",
    MsPrepend => "ms",
    Md => "md",
    MaIncr => "ma",
    MaDecr => "ma",
    Mn => "mn",
    Me => "me",
    Extstore => "extstore",
    RefreshCerts => "refresh_certs",
    Debugtime => "debugtime",
}

// A command set holds the text commands as bits of one u64.
const _: () = assert!((TextCmd::Unknown as u8) < 64);

impl TextCmd {
    fn bit(self) -> u64 {
        1u64 << (self as u8)
    }
}

/// Binary opcodes that carry no reply on success ("quiet").
pub fn is_quiet(op: u8) -> bool {
    matches!(
        op,
        0x09 | 0x0d | 0x11..=0x1a | 0x1e | 0x24 | 0x32 | 0x34 | 0x36 | 0x38 | 0x3a | 0x3c
    )
}

/// Name of a binary opcode (for logs), or None when we do not know it.
pub fn opcode_name(op: u8) -> Option<&'static str> {
    Some(match op {
        0x00 => "get",
        0x01 => "set",
        0x02 => "add",
        0x03 => "replace",
        0x04 => "delete",
        0x05 => "increment",
        0x06 => "decrement",
        0x07 => "quit",
        0x08 => "flush",
        0x09 => "getq",
        0x0a => "noop",
        0x0b => "version",
        0x0c => "getk",
        0x0d => "getkq",
        0x0e => "append",
        0x0f => "prepend",
        0x10 => "stat",
        0x11 => "setq",
        0x12 => "addq",
        0x13 => "replaceq",
        0x14 => "deleteq",
        0x15 => "incrementq",
        0x16 => "decrementq",
        0x17 => "quitq",
        0x18 => "flushq",
        0x19 => "appendq",
        0x1a => "prependq",
        0x1b => "verbosity",
        0x1c => "touch",
        0x1d => "gat",
        0x1e => "gatq",
        0x20 => "sasl-list-mechs",
        0x21 => "sasl-auth",
        0x22 => "sasl-step",
        0x23 => "gatk",
        0x24 => "gatkq",
        0x30 => "rget",
        0x31 => "rset",
        0x32 => "rsetq",
        0x33 => "rappend",
        0x34 => "rappendq",
        0x35 => "rprepend",
        0x36 => "rprependq",
        0x37 => "rdelete",
        0x38 => "rdeleteq",
        0x39 => "rincr",
        0x3a => "rincrq",
        0x3b => "rdecr",
        0x3c => "rdecrq",
        0x3d => "set-vbucket",
        0x3e => "get-vbucket",
        0x3f => "del-vbucket",
        0x40 => "tap-connect",
        0x41 => "tap-mutation",
        0x42 => "tap-delete",
        0x43 => "tap-flush",
        0x44 => "tap-opaque",
        0x45 => "tap-vbucket-set",
        0x46 => "tap-checkpoint-start",
        0x47 => "tap-checkpoint-end",
        _ => return None,
    })
}

/// A request's command: text or binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Text(TextCmd),
    Binary(u8),
}

impl Command {
    pub fn name(self) -> &'static str {
        match self {
            Command::Text(c) => c.name(),
            Command::Binary(op) => opcode_name(op).unwrap_or("unknown"),
        }
    }
}

/// The commands one rule's `command` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CmdSet {
    text: u64,
    binary: [u64; 4],
}

impl CmdSet {
    fn of(text: &[TextCmd], ops: &[u8]) -> CmdSet {
        let mut s = CmdSet::default();
        for t in text {
            s.text |= t.bit();
        }
        for &op in ops {
            s.binary[usize::from(op >> 6)] |= 1u64 << (op & 63);
        }
        s
    }

    fn union(self, o: CmdSet) -> CmdSet {
        CmdSet {
            text: self.text | o.text,
            binary: std::array::from_fn(|k| self.binary[k] | o.binary[k]),
        }
    }

    pub fn contains(&self, c: Command) -> bool {
        match c {
            Command::Text(t) => self.text & t.bit() != 0,
            Command::Binary(op) => self.binary[usize::from(op >> 6)] & (1u64 << (op & 63)) != 0,
        }
    }

    /// The group a rule's `command` names, or None for an unknown name.
    pub fn group(name: &str) -> Option<CmdSet> {
        use TextCmd::*;
        let storage = || {
            CmdSet::of(
                &[
                    Add, Set, Replace, Append, Prepend, Cas, Incr, Decr, MsSet, MsAdd, MsReplace,
                    MsAppend, MsPrepend, MaIncr, MaDecr,
                ],
                // Cilium's list plus binary append/prepend (0x0e, 0x0f).
                &[
                    0x01, 0x02, 0x03, 0x05, 0x06, 0x0e, 0x0f, 0x11, 0x12, 0x13, 0x15, 0x16, 0x19,
                    0x1a,
                ],
            )
        };
        Some(match name {
            "add" => CmdSet::of(&[Add, MsAdd], &[0x02, 0x12]),
            "set" => CmdSet::of(&[Set, MsSet], &[0x01, 0x11]),
            "replace" => CmdSet::of(&[Replace, MsReplace], &[0x03, 0x13]),
            "append" => CmdSet::of(&[Append, MsAppend], &[0x0e, 0x19]),
            "prepend" => CmdSet::of(&[Prepend, MsPrepend], &[0x0f, 0x1a]),
            "cas" => CmdSet::of(&[Cas], &[]),
            "incr" => CmdSet::of(&[Incr, MaIncr], &[0x05, 0x15]),
            "decr" => CmdSet::of(&[Decr, MaDecr], &[0x06, 0x16]),
            "storage" => storage(),
            "get" => CmdSet::of(&[Get, Gets, Mg], &[0x00, 0x09, 0x0c, 0x0d]),
            "delete" => CmdSet::of(&[Delete, Md], &[0x04, 0x14]),
            "touch" => CmdSet::of(&[Touch], &[0x1c]),
            "gat" => CmdSet::of(&[Gat, Gats], &[0x1d, 0x1e, 0x23, 0x24]),
            "writeGroup" => storage().union(CmdSet::of(&[Delete, Md, Touch], &[0x04, 0x14, 0x1c])),
            "slabs" => CmdSet::of(&[Slabs], &[]),
            "lru" => CmdSet::of(&[Lru], &[]),
            "lru_crawler" => CmdSet::of(&[LruCrawler], &[]),
            "watch" => CmdSet::of(&[Watch], &[]),
            "stats" => CmdSet::of(&[Stats, Me], &[0x10]),
            "flush_all" => CmdSet::of(&[FlushAll], &[0x08, 0x18]),
            "cache_memlimit" => CmdSet::of(&[CacheMemlimit], &[]),
            "version" => CmdSet::of(&[Version], &[0x0b]),
            "misbehave" => CmdSet::of(&[Misbehave], &[]),
            "quit" => CmdSet::of(&[Quit], &[0x07, 0x17]),
            "noop" => CmdSet::of(&[Mn], &[0x0a]),
            "verbosity" => CmdSet::of(&[Verbosity], &[0x1b]),
            "shutdown" => CmdSet::of(&[Shutdown], &[]),
            "extstore" => CmdSet::of(&[Extstore], &[]),
            "refresh_certs" => CmdSet::of(&[RefreshCerts], &[]),
            "debugtime" => CmdSet::of(&[Debugtime], &[]),
            "sasl-list-mechs" => CmdSet::of(&[], &[0x20]),
            "sasl-auth" => CmdSet::of(&[], &[0x21]),
            "sasl-step" => CmdSet::of(&[], &[0x22]),
            other => {
                // Cilium's one-opcode groups for range, vbucket and tap commands.
                let op = (0x30..=0x47u8).find(|&op| opcode_name(op) == Some(other))?;
                CmdSet::of(&[], &[op])
            }
        })
    }
}

/// Group names from narrowest to widest, as `group_of` tries them.
const GROUPS: &[&str] = &[
    "get",
    "set",
    "add",
    "replace",
    "append",
    "prepend",
    "cas",
    "incr",
    "decr",
    "delete",
    "touch",
    "gat",
    "stats",
    "flush_all",
    "version",
    "verbosity",
    "quit",
    "noop",
    "slabs",
    "lru",
    "lru_crawler",
    "watch",
    "cache_memlimit",
    "misbehave",
    "shutdown",
    "extstore",
    "refresh_certs",
    "debugtime",
    "sasl-list-mechs",
    "sasl-auth",
    "sasl-step",
    "storage",
    "writeGroup",
];

/// The narrowest group a rule's `command` can name that allows every
/// command logged as `name` (a log names `ms` for all of its modes, so
/// `ms` needs `storage`). None for a name no group covers.
pub fn group_of(name: &str) -> Option<String> {
    let mut cmds: Vec<Command> = TextCmd::KNOWN
        .iter()
        .filter(|c| c.name() == name)
        .map(|&c| Command::Text(c))
        .collect();
    cmds.extend(
        (0..=u8::MAX)
            .filter(|&op| opcode_name(op) == Some(name))
            .map(Command::Binary),
    );
    if cmds.is_empty() {
        return None;
    }
    let covers = |g: &str| CmdSet::group(g).is_some_and(|s| cmds.iter().all(|&c| s.contains(c)));
    if let Some(g) = GROUPS.iter().find(|g| covers(g)) {
        return Some(g.to_string());
    }
    // Cilium's one-opcode groups (range, vbucket, tap) are named by opcode.
    covers(name).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(n: &str) -> CmdSet {
        CmdSet::group(n).unwrap()
    }

    #[test]
    fn cilium_groups() {
        let get = g("get");
        for c in [
            Command::Text(TextCmd::Get),
            Command::Text(TextCmd::Gets),
            Command::Text(TextCmd::Mg),
        ] {
            assert!(get.contains(c), "{c:?}");
        }
        for op in [0x00, 0x09, 0x0c, 0x0d] {
            assert!(get.contains(Command::Binary(op)));
        }
        assert!(!get.contains(Command::Text(TextCmd::Gat)));
        assert!(!get.contains(Command::Binary(0x1d)));
        let set = g("set");
        assert!(set.contains(Command::Binary(0x01)) && set.contains(Command::Binary(0x11)));
        assert!(!set.contains(Command::Binary(0x02)));
        assert!(!set.contains(Command::Text(TextCmd::Add)));
        // Binary append/prepend are in storage and writeGroup (Cilium omits them).
        for n in ["storage", "writeGroup"] {
            assert!(
                g(n).contains(Command::Binary(0x0e)) && g(n).contains(Command::Binary(0x0f)),
                "{n}"
            );
            assert!(g(n).contains(Command::Text(TextCmd::Cas)));
            assert!(g(n).contains(Command::Text(TextCmd::MaDecr)));
        }
        assert!(!g("storage").contains(Command::Text(TextCmd::Delete)));
        assert!(g("writeGroup").contains(Command::Text(TextCmd::Delete)));
        assert!(g("writeGroup").contains(Command::Binary(0x1c)));
        assert!(!g("writeGroup").contains(Command::Text(TextCmd::Get)));
        assert!(
            g("noop").contains(Command::Binary(0x0a))
                && g("noop").contains(Command::Text(TextCmd::Mn))
        );
        assert!(g("quit").contains(Command::Binary(0x17)));
        assert!(g("rdecrq").contains(Command::Binary(0x3c)));
        assert!(g("tap-checkpoint-end").contains(Command::Binary(0x47)));
        assert!(CmdSet::group("gets").is_none());
        assert!(CmdSet::group("GET").is_none());
        assert!(CmdSet::group("bogus").is_none());
    }

    #[test]
    fn known_lists_every_command_but_unknown_once() {
        for (k, &c) in TextCmd::KNOWN.iter().enumerate() {
            assert_eq!(c as usize, k, "{c:?}");
        }
        assert_eq!(TextCmd::KNOWN.len(), TextCmd::Unknown as usize);
        assert_eq!(group_of("unknown"), None);
    }

    #[test]
    fn quiet_opcodes() {
        for op in [
            0x09, 0x0d, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1e, 0x24,
        ] {
            assert!(is_quiet(op), "{op:#x}");
        }
        for op in [0x00, 0x01, 0x07, 0x0a, 0x0c, 0x10, 0x1b, 0x1c, 0x1d, 0x23] {
            assert!(!is_quiet(op), "{op:#x}");
        }
    }

    #[test]
    fn group_of_a_logged_name() {
        for (name, group) in [
            ("get", "get"),
            ("gets", "get"),
            ("getkq", "get"),
            ("mg", "get"),
            ("set", "set"),
            ("setq", "set"),
            ("ms", "storage"),
            ("ma", "storage"),
            ("increment", "incr"),
            ("md", "delete"),
            ("flush", "flush_all"),
            ("me", "stats"),
            ("quit", "quit"),
            ("noop", "noop"),
        ] {
            let g = group_of(name);
            assert_eq!(g.as_deref(), Some(group), "{name}");
            // The group it names really allows every command of that name.
            let set = CmdSet::group(group).unwrap();
            for &c in TextCmd::KNOWN.iter().filter(|c| c.name() == name) {
                assert!(set.contains(Command::Text(c)), "{name}");
            }
        }
        assert_eq!(group_of("unknown"), None);
        assert_eq!(group_of("frobnicate"), None);
    }
}
