//! Where a field is: a YAML document's dotted field paths
//! (`spec.ingress[0].toPorts[0].ports[0].port`) mapped to line numbers, so
//! errors found after deserialising (bad regex, port out of range) still
//! name the line. serde_yaml keeps no positions; yaml-rust2's events do.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, idx: usize },
}

struct Builder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

impl Builder {
    /// The path of the node that starts now, or None when it is a mapping key.
    fn place(&mut self, scalar: Option<&str>, line: usize) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Some(join(path, &k)),
                None => {
                    let k = scalar.unwrap_or("?").to_string();
                    self.lines.entry(join(path, &k)).or_insert(line);
                    *key = Some(k);
                    None
                }
            },
            Some(Frame::Seq { path, idx }) => {
                let p = format!("{path}[{idx}]");
                *idx += 1;
                self.lines.entry(p.clone()).or_insert(line);
                Some(p)
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(v, ..) => {
                self.place(Some(&v), line);
            }
            Event::Alias(_) => {
                self.place(None, line);
            }
            Event::MappingStart(..) => {
                let path = self.place(None, line).unwrap_or_default();
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.place(None, line).unwrap_or_default();
                self.stack.push(Frame::Seq { path, idx: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

impl LineIndex {
    /// Index one YAML document. A document the parser rejects gets an empty
    /// index (serde_yaml reports that error with its own position).
    pub fn build(text: &str) -> LineIndex {
        let mut b = Builder {
            stack: Vec::new(),
            lines: HashMap::new(),
        };
        let mut p = Parser::new_from_str(text);
        if p.load(&mut b, false).is_err() {
            return LineIndex::default();
        }
        LineIndex { lines: b.lines }
    }

    /// Line of `path`, or of its nearest ancestor that has one.
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_lines() {
        let y = "kind: X\nspec:\n  ingress:\n  - toPorts:\n    - ports:\n      - port: '80'\n        protocol: TCP\n";
        let ix = LineIndex::build(y);
        assert_eq!(ix.line("kind"), Some(1));
        assert_eq!(ix.line("spec.ingress"), Some(3));
        assert_eq!(ix.line("spec.ingress[0].toPorts[0].ports[0].port"), Some(6));
        assert_eq!(
            ix.line("spec.ingress[0].toPorts[0].ports[0].protocol"),
            Some(7)
        );
        // unknown leaf: nearest ancestor
        assert_eq!(
            ix.line("spec.ingress[0].toPorts[0].ports[0].endPort"),
            Some(6)
        );
    }

    #[test]
    fn flow_style_and_garbage() {
        let ix = LineIndex::build("a: {b: [1, 2]}\nc:\n  d: x\n");
        assert_eq!(ix.line("a.b[1]"), Some(1));
        assert_eq!(ix.line("c.d"), Some(3));
        assert_eq!(LineIndex::build("a: [\n").line("a"), None);
    }
}
